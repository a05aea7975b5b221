"""pxe.build's wheelhouse: xenlab and every dependency for the installed host's Python.

Fast: the app tarball (tasks.py and images/, not the default site) is reproducible; the index page
pip reads. Slow: the wheelhouse built from this checkout (PyPI reachable from here), served by
pxe.serve in a server namespace, installs xenlab into a Python 3.8 venv in the cached bionic
chroot, which runs in a client namespace with no route to any package index; `invoke --list` and
the image module (which reads images/elements at import) work there. Python 3.8 comes from the
release's own archive first, as the late setup installs it.
"""

import io
import subprocess
import tarfile
import time

import pytest

from pipeline.runner import Runner
from pxe import wheelhouse
from tests import chroots, test_pxe_boot, test_pxe_preseed
from tests.conftest import sh
from tests.test_pxe_boot import SERVER, serving, site_env
from tests.test_pxe_preseed import PYTHON_PACKAGES

# The cached bionic chroot the late-setup test runs in (tests/chroots.py builds it once), and
# test_pxe_boot's server and client namespaces on a veth.
bionic_target = test_pxe_preseed.bionic_target
segment = test_pxe_boot.segment


def test_the_app_tarball_is_reproducible_and_holds_what_no_wheel_does():
    first = wheelhouse._app_tarball(wheelhouse.REPO)
    assert first == wheelhouse._app_tarball(wheelhouse.REPO)
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = tar.getnames()
        assert {m.uid for m in tar.getmembers()} == {0}
    assert "tasks.py" in names
    assert any(n.startswith("images/elements/xenlab-pv-boot/") for n in names)
    # the host's invoke.yaml is its own site file (linked by the late setup), not the default site
    assert "invoke.yaml" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_index_page_and_sums():
    files = {"a-1.0-py3-none-any.whl": b"a", "xenlab-app.tar.gz": b"b"}
    page = wheelhouse.index_page(list(files)).decode()
    assert '<a href="a-1.0-py3-none-any.whl">' in page
    sums = wheelhouse.sums(files).decode().splitlines()
    assert len(sums) == 2 and sums[0].endswith("  a-1.0-py3-none-any.whl")


def test_dry_run_says_what_it_would_build(tmp_path):
    runner = Runner(dry_run=True)
    assert wheelhouse.build(runner, tmp_path / "tree", "ubuntu-18.04", print) == []
    assert "Python 3.8" in runner.changes[0] and not (tmp_path / "tree").exists()


def fake_wheel(folder, name, version, requires=()):
    import zipfile

    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(str(path), "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_the_targets_markers_decide_what_is_missing(tmp_path):
    """pip download evaluates markers with the Python it runs on (3.11 here); the wheelhouse
    closes the set with the target's: bionic's Python 3.8 needs what only < 3.9 asks for."""
    fake_wheel(
        tmp_path, "a", "1.0",
        ['b>=1; python_version < "3.9"', 'c; python_version >= "3.9"', "d; extra == 'test'", "e"],
    )  # fmt: skip
    fake_wheel(tmp_path, "e", "2.0")
    target = wheelhouse.target_for("ubuntu-18.04")
    assert wheelhouse.missing_requirements(tmp_path, target) == ["b>=1"]
    assert wheelhouse.missing_requirements(tmp_path, wheelhouse.target_for("debian-12")) == ["c"]
    fake_wheel(tmp_path, "b", "0.5")
    from pipeline.errors import Failed

    with pytest.raises(Failed, match="b 0.5"):
        wheelhouse.missing_requirements(tmp_path, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheelhouse for ubuntu-18.04 in a boot tree, built once for this module."""
    tree = tmp_path_factory.mktemp("wheels") / "tree"
    started = time.monotonic()
    changed = wheelhouse.build(Runner(), tree, "ubuntu-18.04", print)
    seconds = time.monotonic() - started
    assert wheelhouse.APP in changed and wheelhouse.SUMS in changed
    again = wheelhouse.build(Runner(), tree, "ubuntu-18.04", print)
    assert again == []  # the same bytes: a second pxe.build changes nothing
    size = sum(p.stat().st_size for p in (tree / wheelhouse.DIR).iterdir())
    print(f"\nwheelhouse: {size / 1e6:.1f} MB, {len(changed)} files, built in {seconds:.0f} s")
    return tree


INSTALL = """set -eu
wheels=http://{server}:8080/wheelhouse
cd /tmp
if python3.8 -c 'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/", timeout=5)'; then
    echo "the package index is reachable: this test proves nothing" >&2; exit 1
fi
python3.8 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \\
    "$wheels/{pip}" /tmp/{pip}
python3.8 -m venv --without-pip /opt/wh/.venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
from="--no-index --find-links $wheels/ --trusted-host {server}"
/opt/wh/.venv/bin/python /tmp/{pip}/pip install -q $from pip
/opt/wh/.venv/bin/python -m pip install -q $from {xenlab}
python3.8 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \\
    "$wheels/xenlab-app.tar.gz" /tmp/app.tar.gz
tar -C /opt/wh -xzf /tmp/app.tar.gz
cd /opt/wh
.venv/bin/invoke --list
.venv/bin/python -c 'import sys; from pipeline.guest import image; print("elements", image.ELEMENTS_DIR); print(sys.version_info[:2])'
.venv/bin/python -c 'import pipeline.host.provision, pxe.serve, pxe.wheelhouse, pxe.images, pxe.progress, tasks'
.venv/bin/python -m pip list --format=freeze
"""


@pytest.mark.slow
def test_the_wheelhouse_installs_xenlab_in_bionic_without_an_index(
    bionic_target, segment, built, tmp_path
):
    srv, cl = segment
    sh("ip", "-n", cl, "addr", "add", "10.77.0.50/24", "dev", "eth0")
    (pip_wheel,) = sorted((built / wheelhouse.DIR).glob("pip-*.whl"))
    script = INSTALL.format(
        server=SERVER, pip=pip_wheel.name, xenlab=wheelhouse.xenlab_requirement(built)
    )
    for d in ("upper", "work", "merged"):
        (tmp_path / d).mkdir()

    def argv(command: str):
        return chroots.chroot_argv(
            tmp_path / "merged", ["sh", "-c", command],
            env={"DEBIAN_FRONTEND": "noninteractive", "PYTHONDONTWRITEBYTECODE": "1"},
            overlay=(bionic_target, tmp_path / "upper", tmp_path / "work"),
        )  # fmt: skip

    # Python 3.8 from the release's own archive (bionic-updates), as the host's install gets it
    apt = "apt-get install -y -q --no-install-recommends " + " ".join(PYTHON_PACKAGES)
    proc = subprocess.run(argv(apt), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = site_env(tmp_path, INVOKE_PXE_TFTP_ROOT=str(built))
    with serving(srv, ["--interface", "pxe0"], env, tmp_path / "serve.log") as server:
        started = time.monotonic()
        proc = sh("ip", "netns", "exec", cl, *argv(script), check=False)
        seconds = time.monotonic() - started
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "HTTP wheelhouse/" in server.text()
    out = proc.stdout
    assert "host.provision" in out and "pxe.serve" in out  # invoke --list
    assert "elements /opt/wh/images/elements" in out
    assert "(3, 8)" in out
    assert "xenlab==0.1.0" in out and "pydantic_core==" in out.replace("-", "_")
    print(f"\nxenlab from the wheelhouse into bionic's Python 3.8: {seconds:.0f} s")
