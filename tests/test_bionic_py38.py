"""xenlab runs on the Xen host's own Python: Ubuntu 18.04 (bionic) with python3.8 from bionic-updates.

A bionic chroot is debootstrapped once per machine (cached), then a second cached layer is a copy of
it in which the project's own `./setup` ran (keyed by `setup` and `pyproject.toml`, so a change to
either rebuilds the venv). Each run mounts an overlay on that layer, copies the current project tree
over its /opt/xenlab (keeping the layer's .venv) and runs invoke in it, against a network namespace
made out here and checked from out here with `ip -j`.

Cache: $XENLAB_CACHE or /var/cache/xenlab (chroots/ and keyrings/). The Ubuntu archive defaults
to Ubuntu's public one; $XENLAB_UBUNTU_ARCHIVE points elsewhere (a local mirror).
"""

import functools
import hashlib
import http.server
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from ruamel.yaml import YAML

from pipeline import apt_sources, ubuntu_keyring
from pipeline.errors import Failed
from tests import chroots
from tests.conftest import CACHE, REPO, ip_json, sh

slow = pytest.mark.slow

RELEASE = "bionic"
COMPONENTS = ["main", "universe"]
ARCHIVE = os.environ.get("XENLAB_UBUNTU_ARCHIVE", apt_sources.UBUNTU_ARCHIVE).rstrip("/")
CHROOTS = CACHE / "chroots"
APP = "/opt/xenlab"  # the project inside the chroot; its .venv comes from the cached layer
OUT = "/mnt/xenlab-test"  # a directory of the test's, bind-mounted into the chroot
CA_IN_CHROOT = "/etc/xenlab-test-ca.crt"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Not copied into the chroot: the outer venv, caches and build output.
SKIP_PARTS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".mypy_cache",
}
SUBNET = "192.0.2.0/28"
BRIDGE_ADDRESS = "192.0.2.1"


def _archive_reachable() -> bool:
    try:
        with urllib.request.urlopen(f"{ARCHIVE}/dists/{RELEASE}/Release", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _preconditions() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mount and network namespaces)")
    for tool in ("debootstrap", "dpkg-deb", "unshare", "chroot", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./setup --test installs debootstrap)")
    if not _archive_reachable():
        pytest.skip(f"the Ubuntu archive is unreachable: {ARCHIVE}/dists/{RELEASE}/Release")


def chroot_env() -> Dict[str, str]:
    """A clean environment for the chroot: nothing of the outer pip config leaks in but the index."""
    env = {
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "200",
    }
    if HOST_CA.is_file():  # HTTPS may go through a proxy with its own CA
        env.update(
            PIP_CERT=CA_IN_CHROOT, REQUESTS_CA_BUNDLE=CA_IN_CHROOT, SSL_CERT_FILE=CA_IN_CHROOT
        )
    if os.environ.get("PIP_INDEX_URL"):
        env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
    return env


def project_files() -> List[Path]:
    """The project as git sees it (tracked, plus untracked and not ignored), without venvs and caches."""
    proc = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
    )
    if proc.returncode == 0:
        names = [Path(n) for n in proc.stdout.decode().split("\0") if n]
    else:  # not a git checkout
        names = [p.relative_to(REPO) for p in REPO.rglob("*") if not p.is_dir()]
    return sorted(
        n
        for n in names
        if not any(part in SKIP_PARTS or part.endswith(".egg-info") for part in n.parts)
        and (REPO / n).is_file()
    )


def copy_project(dest: Path, overrides: Optional[Dict[str, bytes]] = None) -> None:
    """The project tree into `dest`, modes kept; `overrides` replaces some files' contents."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(REPO / rel), str(target))
    for rel, data in (overrides or {}).items():
        (dest / rel).write_bytes(data)


def put_host_files(root: Path) -> None:
    """The host's resolver and CA bundle, which apt and pip in the chroot need, as plain files."""
    for src, dst in (("/etc/resolv.conf", "etc/resolv.conf"), (str(HOST_CA), CA_IN_CHROOT)):
        target = root / dst.lstrip("/")
        if target.is_symlink() or target.exists():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_file():
            shutil.copyfile(src, str(target))


def build_setup_layer(base: Path, setup: bytes, pyproject: bytes, layer: Path) -> None:
    """`layer/root`: a copy of `base` in which the project's ./setup ran; /opt/xenlab keeps only .venv."""
    root = layer / "root"
    sh("cp", "-a", "--reflink=auto", str(base), str(root))
    (root / "etc/apt/sources.list").write_text(
        "".join(
            f"deb {ARCHIVE} {suite} {' '.join(COMPONENTS)}\n"
            for suite in (RELEASE, f"{RELEASE}-updates")
        )
    )
    # No service may start inside the chroot.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    put_host_files(root)
    app = root / APP.lstrip("/")
    copy_project(app, {"setup": setup, "pyproject.toml": pyproject})
    chroots.run_in_chroot(
        root, ["sh", "-c", f"cd {APP} && ./setup"], env=chroot_env(), timeout=1800
    )
    for entry in app.iterdir():
        if entry.name == ".venv":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(str(entry))
        else:
            entry.unlink()
    assert (app / ".venv/bin/invoke").exists(), "./setup left no .venv/bin/invoke"


def setup_layer() -> Path:
    """The cached bionic root with xenlab's ./setup done: built when setup or pyproject.toml changed."""
    keyring = ubuntu_keyring.archive_keyring(CACHE / "keyrings", ARCHIVE)
    base = chroots.cached_root(
        RELEASE, ARCHIVE, CHROOTS, variant="minbase", components=COMPONENTS, keyring=keyring
    )
    setup = (REPO / "setup").read_bytes()
    pyproject = (REPO / "pyproject.toml").read_bytes()
    key = chroots.cache_key(
        "xenlab-setup-1",
        base.parent.name,
        ARCHIVE,
        hashlib.sha256(setup).hexdigest(),
        hashlib.sha256(pyproject).hexdigest(),
    )
    layer = chroots.cached_dir(
        CHROOTS / f"{RELEASE}-xenlab-setup-{key}",
        lambda tmp: build_setup_layer(base, setup, pyproject, tmp),
    )
    # Each change to setup or pyproject.toml makes a new layer of ~0.5 GB: keep only the newest.
    for old in CHROOTS.glob(f"{RELEASE}-xenlab-setup-*"):
        if old != layer and old.is_dir():
            shutil.rmtree(str(old), ignore_errors=True)
    return layer / "root"


class Bionic:
    """One run's chroot: an overlay on the cached layer, with this tree at /opt/xenlab."""

    def __init__(self, layer: Path, work: Path):
        self.layer = layer
        self.upper = work / "upper"
        self.workdir = work / "work"
        self.merged = work / "merged"
        self.out = work / "out"  # seen inside as OUT
        for d in (self.upper, self.workdir, self.merged, self.out):
            d.mkdir()
        put_host_files(self.upper)
        app = self.upper / APP.lstrip("/")
        app.mkdir(parents=True)
        shutil.copystat(str(layer / APP.lstrip("/")), str(app))
        copy_project(app)

    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        return chroots.run_in_chroot(
            self.merged,
            list(argv),
            env=chroot_env(),
            overlay=(self.layer, self.upper, self.workdir),
            binds=[(self.out, OUT)],
            check=check,
            timeout=600,
        )

    def invoke(self, *args: str) -> subprocess.CompletedProcess:
        """`invoke ARGS` from the project folder, with the layer's venv."""
        line = " ".join(shlex.quote(a) for a in args)
        return self.run("sh", "-c", f"cd {APP} && exec .venv/bin/invoke {line}")


@pytest.fixture(scope="module")
def bionic() -> Iterator[Bionic]:
    _preconditions()
    layer = setup_layer()
    work = Path(tempfile.mkdtemp(prefix="xenlab-bionic-"))
    try:
        yield Bionic(layer, work)
    finally:
        shutil.rmtree(str(work), ignore_errors=True)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@slow
def test_the_venv_is_python_38(bionic):
    out = _ok(
        bionic.run(f"{APP}/.venv/bin/python", "-c", "import sys; print(sys.version_info[:2])")
    )
    assert out.strip() == "(3, 8)"
    release = _ok(bionic.run("sh", "-c", ". /etc/os-release && echo $VERSION_ID"))
    assert release.strip() == "18.04"


# Imports every module of the project (and tasks.py) the way Python 3.8 evaluates it, annotations too.
IMPORT_ALL = """
import importlib, pkgutil
names = ["tasks"]
for pkg in ("pipeline", "netlink"):
    names += [pkg] + [f"{pkg}.{m.name}" for m in pkgutil.iter_modules([pkg])]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


@slow
def test_every_module_imports_on_python_38(bionic):
    out = _ok(
        bionic.run("sh", "-c", f"cd {APP} && exec .venv/bin/python -c {shlex.quote(IMPORT_ALL)}")
    )
    assert int(out.strip()) > 3


@slow
def test_invoke_lists_the_tasks(bionic):
    out = _ok(bionic.invoke("--list"))
    assert "host.network" in out


def _site(bionic: Bionic) -> Tuple[str, str]:
    """A site file setting host.subnet, and an empty --root directory; both as seen in the chroot."""
    yaml = YAML()
    with open(str(bionic.out / "site.yaml"), "w") as fh:
        yaml.dump({"host": {"subnet": SUBNET}}, fh)
    (bionic.out / "root").mkdir(exist_ok=True)
    return f"{OUT}/site.yaml", f"{OUT}/root"


@slow
def test_host_network_in_a_namespace(bionic, netns):
    ns = netns("bionic")
    site, root = _site(bionic)
    args = ("-f", site, "host.network", "--netns", ns, "--root", root)

    _ok(bionic.invoke(*args))

    (link,) = ip_json(ns, "addr", "show", "xenbr0")
    assert "UP" in link["flags"], link
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [
        (BRIDGE_ADDRESS, 28)
    ]
    assert (
        sh("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    )
    netplan = bionic.out / "root/etc/netplan/01-netcfg.yaml"
    assert netplan.is_file(), sorted(str(p) for p in (bionic.out / "root").rglob("*"))
    doc = YAML(typ="safe").load(netplan.read_text())
    assert doc["network"]["bridges"]["xenbr0"]["addresses"] == [f"{BRIDGE_ADDRESS}/28"]
    assert (bionic.out / "root/etc/sysctl.d/60-xenlab-forwarding.conf").is_file()
    before = netplan.read_bytes()

    again = _ok(bionic.invoke(*args))
    assert "no changes" in again
    assert netplan.read_bytes() == before
    (link,) = ip_json(ns, "addr", "show", "xenbr0")
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == [BRIDGE_ADDRESS]

    # The file is one the host's own netplan (bionic's netplan.io) accepts.
    _ok(bionic.run("netplan", "generate", "--root-dir", root))
    network = (bionic.out / "root/run/systemd/network/10-netplan-xenbr0.network").read_text()
    assert f"Address={BRIDGE_ADDRESS}/28" in network


@slow
def test_chroot_leaves_no_mounts(bionic):
    """Every chroot command ran in its own mount namespace: nothing of it is mounted out here."""
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(bionic.merged) not in mounts
    assert str(bionic.layer) not in mounts


# Quick checks of the caching helpers the chroot above relies on (no network needed).


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory that is removed afterwards (pytest's tmp_path is kept)."""
    path = Path(tempfile.mkdtemp(prefix="xenlab-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(str(path), ignore_errors=True)


def test_a_failed_build_leaves_nothing_in_the_cache(scratch):
    def build(tmp: Path) -> None:
        (tmp / "root").mkdir()
        (tmp / "root" / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        chroots.cached_dir(scratch / "entry", build)
    assert [p.name for p in scratch.iterdir() if not p.name.endswith(".lock")] == []

    calls = []
    first = chroots.cached_dir(scratch / "entry", lambda tmp: calls.append(tmp))
    again = chroots.cached_dir(scratch / "entry", lambda tmp: calls.append(tmp))
    assert first == again == scratch / "entry" and first.is_dir() and len(calls) == 1


@pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap needs root")
def test_a_failed_debootstrap_leaves_no_half_tree(scratch):
    with pytest.raises(Failed, match="debootstrap bionic"):
        chroots.cached_root("bionic", "http://127.0.0.1:9/ubuntu", scratch)
    assert [p.name for p in scratch.iterdir() if not p.name.endswith(".lock")] == []


@pytest.fixture
def archive(scratch) -> Iterator[Tuple[str, Path]]:
    """A local HTTP 'archive' serving whatever the test puts at the keyring's pool path; its URL."""
    served = scratch / "archive"
    (served / ubuntu_keyring.DEB_PATH).parent.mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def test_a_keyring_with_the_wrong_hash_is_refused(scratch, archive):
    url, served = archive
    (served / ubuntu_keyring.DEB_PATH).write_bytes(b"not the ubuntu-keyring package")
    cache = scratch / "cache"
    with pytest.raises(ubuntu_keyring.KeyringError) as err:
        ubuntu_keyring.archive_keyring(cache, url)
    got = hashlib.sha256(b"not the ubuntu-keyring package").hexdigest()
    message = str(err.value)
    assert ubuntu_keyring.deb_url(url) in message
    assert got in message and ubuntu_keyring.DEB_SHA256 in message
    assert list(cache.iterdir()) == []
