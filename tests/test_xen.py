"""`invoke host.xen`: Xen installed into a debootstrapped Debian 12 root (--root) and made GRUB's default.

The base root (minbase + grub-pc + a kernel) is debootstrapped once per machine and cached under
$XENLAB_CACHE/chroots (pipeline.debootstrap); each run copies it to a plain directory on a disk
filesystem (update-grub's grub-probe cannot resolve an overlay or tmpfs), where host.xen installs
the hypervisor for real with apt from the machine's Debian mirror and runs update-grub.
"""

import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from pipeline import apt_sources
from pipeline.host import xen
from tests import chroots
from tests.conftest import CACHE, invoke, sh

slow = pytest.mark.slow
DATA = Path(__file__).parent / "data" / "xl"
RELEASE = "bookworm"
PACKAGE = "xen-hypervisor-4.17-amd64"
INCLUDE = ["grub-pc", "linux-image-amd64"]
XEN_TITLE = "Debian GNU/Linux, with Xen hypervisor"


# --- pure parts ------------------------------------------------------------------------------------
XL_CONF = """## Global XL config file ##

# Control whether dom0 is ballooned down when xen doesn't have enough
# free memory to create a domain.  "auto" means only balloon if dom0
# starts with all the host's memory.
#autoballoon="auto"

# full path of the lockfile used by xl during domain creation
#lockfile="/var/lock/xl"
"""


def test_xl_conf_gets_one_key_and_keeps_the_rest():
    out = xen.set_xl_key(XL_CONF, "autoballoon", '"off"')
    assert out == XL_CONF.replace('#autoballoon="auto"', 'autoballoon="off"')
    assert xen.set_xl_key(out, "autoballoon", '"off"') == out
    active = XL_CONF + 'autoballoon="on"\n'
    again = xen.set_xl_key(active, "autoballoon", '"off"')
    assert again.count('autoballoon="off"') == 1 and '#autoballoon="auto"' in again
    assert xen.set_xl_key("", "autoballoon", '"off"') == 'autoballoon="off"\n'
    assert xen.set_xl_key("x=1", "autoballoon", '"off"') == 'x=1\nautoballoon="off"\n'


def test_recorded_grub_cfg_of_a_xen_host():
    default, entries = xen.parse_grub_cfg((DATA / "grub-xen.cfg").read_text())
    assert default == "Ubuntu GNU/Linux, with Xen hypervisor"
    assert entries == ["Ubuntu GNU/Linux, with Xen hypervisor"]


def source_grub_defaults(*files: str, distributor: str = "Debian", cmdline: str = "") -> dict:
    """What grub-mkconfig sees after sourcing /etc/default/grub-like `files` in order (sh)."""
    script = (
        "gettext() { printf '%s' \"$1\"; }\n"  # grub-mkconfig_lib's fallback
        f"GRUB_DEFAULT=0\nGRUB_DISTRIBUTOR={distributor!r}\n"
        f"GRUB_CMDLINE_XEN_DEFAULT={cmdline!r}\n"
        + "".join(f". {f}\n" for f in files)
        + 'printf "%s\\n%s\\n" "$GRUB_DEFAULT" "$GRUB_CMDLINE_XEN_DEFAULT"\n'
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    default, cmdline_out = out.split("\n")[:2]
    return {"default": default, "cmdline": cmdline_out}


def test_the_grub_snippet_makes_the_xen_entry_the_default(tmp_path):
    snippet = tmp_path / "xenlab.cfg"
    snippet.write_text(xen.grub_snippet(4096 << 20))
    # A xen.cfg that turned the override off must not win: xenlab's file is read after it.
    packaged = tmp_path / "xen.cfg"
    packaged.write_text('XEN_OVERRIDE_GRUB_DEFAULT=0\nGRUB_CMDLINE_XEN_DEFAULT="com1=115200"\n')
    assert sorted(["xenlab.cfg", "xen.cfg"]) == ["xen.cfg", "xenlab.cfg"]

    seen = source_grub_defaults(str(packaged), str(snippet), distributor="Ubuntu")
    assert seen["default"] == "Ubuntu GNU/Linux, with Xen hypervisor"
    assert seen["cmdline"] == "com1=115200 dom0_mem=4096M,max:4096M"
    seen = source_grub_defaults(str(snippet), distributor="Debian")
    assert seen == {"default": XEN_TITLE, "cmdline": "dom0_mem=4096M,max:4096M"}


@pytest.fixture
def fake_root(tmp_path):
    """A root with just enough to plan on: os-release, apt-get and update-grub present."""

    def make(codename: str = RELEASE) -> Path:
        root = tmp_path / f"root-{codename}"
        (root / "etc").mkdir(parents=True)
        (root / "etc/os-release").write_text(f'ID=debian\nVERSION_CODENAME="{codename}"\n')
        for tool in ("usr/bin/apt-get", "usr/sbin/update-grub"):
            (root / tool).parent.mkdir(parents=True, exist_ok=True)
            (root / tool).write_text("#!/bin/sh\nexit 99\n")
        (root / "var/lib/dpkg").mkdir(parents=True)
        (root / "var/lib/dpkg/status").write_text("")
        return root

    return make


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_dry_run_prints_the_plan_and_changes_nothing(fake_root):
    root = fake_root()
    before = tree(root)
    proc = invoke("host.xen", "--root", str(root), "--dry-run", "--dom0-mem", "2048")
    assert proc.returncode == 0, proc.stderr
    assert f"would install {PACKAGE}" in proc.stdout
    assert "dom0_mem=2048M,max:2048M" in proc.stdout
    assert 'autoballoon="off"' in proc.stdout
    assert "would run update-grub" in proc.stdout
    assert tree(root) == before


def test_bionic_gets_xen_49_and_package_overrides(fake_root):
    proc = invoke("host.xen", "--root", str(fake_root("bionic")), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would install xen-hypervisor-4.9-amd64" in proc.stdout
    proc = invoke(
        "host.xen", "--root", str(fake_root()), "--dry-run", "--package", "xen-system-amd64"
    )
    assert "would install xen-system-amd64" in proc.stdout


def test_bad_input_fails_before_anything(fake_root, tmp_path):
    proc = invoke("host.xen", "--root", str(fake_root("sid-unknown")), "--dry-run")
    assert proc.returncode == 2
    assert "host.xen.package" in proc.stderr and "sid-unknown" in proc.stderr
    proc = invoke("host.xen", "--root", str(fake_root()), "--dom0-mem", "100K", "--dry-run")
    assert proc.returncode == 2
    assert "host.xen.dom0_mem" in proc.stderr
    bare = fake_root("trixie-x")
    (bare / "usr/sbin/update-grub").unlink()
    before = tree(bare)
    proc = invoke("host.xen", "--root", str(bare), "--package", "xen-system-amd64")
    assert proc.returncode == 2
    assert "update-grub" in proc.stderr
    assert tree(bare) == before


def test_a_failing_update_grub_rolls_back_the_files(fake_root):
    """The package is there already; update-grub cannot run in this bare tree: files are restored."""
    root = fake_root()
    (root / "var/lib/dpkg/status").write_text(
        f"Package: {PACKAGE}\nStatus: install ok installed\nVersion: 4.17\nArchitecture: amd64\n"
        "Maintainer: x <x@example.org>\nDescription: x\n"
    )
    (root / "etc/xen").mkdir()
    (root / "etc/xen/xl.conf").write_text(XL_CONF)
    before = tree(root)

    proc = invoke("host.xen", "--root", str(root))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "update-grub" in proc.stderr
    assert "rolled back" in proc.stdout
    assert tree(root) == before
    assert not (root / "etc/default").exists()


# --- the real install into a Debian 12 root --------------------------------------------------------
def _mirror() -> str:
    try:
        main, _ = apt_sources.debian_mirrors()
    except Exception as exc:  # no Debian sources on this machine
        pytest.skip(f"no Debian mirror in the apt sources: {exc}")
    try:
        with urllib.request.urlopen(f"{main}/dists/{RELEASE}/Release", timeout=10):
            pass
    except OSError as exc:
        pytest.skip(f"the Debian mirror is unreachable: {exc}")
    return main


@pytest.fixture(scope="module")
def base_root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mount namespaces)")
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    return chroots.cached_root(RELEASE, _mirror(), CACHE / "chroots", include=INCLUDE)


@pytest.fixture
def target(base_root) -> Iterator[Path]:
    """A plain copy of the base root, on the cache's (disk) filesystem; removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="xenlab-xen-", dir=str(CACHE)))
    try:
        root = work / "root"
        sh("cp", "-a", "--reflink=auto", str(base_root), str(root))
        yield root
    finally:
        shutil.rmtree(str(work), ignore_errors=True)


def dpkg_status(root: Path, package: str) -> str:
    return sh(
        "dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Status}", package,
        check=False,
    ).stdout  # fmt: skip


@slow
def test_host_xen_installs_into_a_debian_12_root(target):
    assert dpkg_status(target, PACKAGE) != "install ok installed"
    assert not (target / "etc/xen/xl.conf").exists()

    proc = invoke("host.xen", "--root", str(target), "--dom0-mem", "4096M")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert dpkg_status(target, PACKAGE) == "install ok installed"
    assert list((target / "boot").glob("xen-4.17-amd64*"))
    # What update-grub reads: the package's xen.cfg, then xenlab's file, which sorts after it.
    grub_d = sorted(p.name for p in (target / "etc/default/grub.d").glob("*.cfg"))
    assert grub_d.index("xen.cfg") < grub_d.index("xenlab.cfg")
    assert (target / "etc/default/grub.d/xenlab.cfg").read_text() == xen.grub_snippet(4096 << 20)
    # xl.conf: the package's file with one key changed.
    xl_conf = (target / "etc/xen/xl.conf").read_text().splitlines()
    assert 'autoballoon="off"' in xl_conf
    assert len([line for line in xl_conf if "autoballoon" in line]) == 1
    assert any(line.startswith("#") and "balloon" in line for line in xl_conf)  # comments kept
    debs = sorted((target / "var/cache/apt/archives").glob("xen-utils-common_*.deb"))
    if debs:  # the package's own xl.conf, with only that one key changed
        original = subprocess.run(
            f"dpkg-deb --fsys-tarfile {debs[-1]} | tar -xO ./etc/xen/xl.conf",
            shell=True, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert "\n".join(xl_conf) + "\n" == xen.set_xl_key(original, "autoballoon", '"off"')
    # The guests' loader, and the xendomains policy: the package's own file, two keys changed.
    assert dpkg_status(target, "grub-xen-host") == "install ok installed"
    assert (target / "usr/lib/grub-xen/grub-x86_64-xen.bin").is_file()
    xendomains = (target / "etc/default/xendomains").read_text()
    assert xen.read_xendomains(xendomains).on_shutdown == "shutdown"
    if debs:
        packaged = subprocess.run(
            f"dpkg-deb --fsys-tarfile {debs[-1]} | tar -xO ./etc/default/xendomains",
            shell=True, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert xen.read_xendomains(packaged).on_shutdown == "save"
        assert xendomains == xen.set_xendomains(packaged, "shutdown")
    # What update-grub made of it.
    cfg = (target / "boot/grub/grub.cfg").read_text()
    default, entries = xen.parse_grub_cfg(cfg)
    assert default == XEN_TITLE
    assert XEN_TITLE in entries
    entry = cfg.split(f"menuentry '{XEN_TITLE}'", 1)[1].split("\n}", 1)[0]
    assert re.search(
        r"multiboot2?\s+\S*/boot/xen-4\.17-amd64\.gz .*dom0_mem=4096M,max:4096M", entry
    )
    # Nothing stays mounted, no policy-rc.d is left behind.
    assert str(target) not in Path("/proc/self/mountinfo").read_text()
    assert not (target / "usr/sbin/policy-rc.d").exists()

    before = {p: (target / p).read_bytes() for p in ("boot/grub/grub.cfg", "etc/xen/xl.conf")}
    again = invoke("host.xen", "--root", str(target), "--dom0-mem", "4096M")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout
    assert {p: (target / p).read_bytes() for p in before} == before
    # A new dom0_mem is one file and one update-grub away.
    third = invoke("host.xen", "--root", str(target), "--dom0-mem", "2G")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "dom0_mem=2048M,max:2048M" in (target / "boot/grub/grub.cfg").read_text()
    assert str(target) not in Path("/proc/self/mountinfo").read_text()


# --- the guests' loader and the xendomains policy ---------------------------------------------------
def packaged_xendomains() -> str:
    """/etc/default/xendomains as Debian 12's xen-utils-common ships it (tests/data/xl)."""
    return (DATA / "xendomains-debian12.txt").read_text()


def sourced(text: str, tmp_path: Path) -> dict:
    """The three keys as the init script's shell sees them after sourcing the file."""
    path = tmp_path / "xendomains"
    path.write_text(text)
    script = (
        f'. {path}; printf "%s|%s|%s" "$XENDOMAINS_SAVE" "$XENDOMAINS_RESTORE" "$XENDOMAINS_AUTO"'
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(zip(("save", "restore", "auto"), out.split("|")))


def test_the_packaged_default_saves_guests_and_the_policy_changes_two_keys(tmp_path):
    packaged = packaged_xendomains()
    assert xen.read_xendomains(packaged).on_shutdown == "save"  # what the issue is about
    assert sourced(packaged, tmp_path) == {
        "save": "/var/lib/xen/save", "restore": "true", "auto": "/etc/xen/auto",
    }  # fmt: skip
    shutdown = xen.set_xendomains(packaged, "shutdown")
    assert xen.set_xendomains(shutdown, "shutdown") == shutdown  # idempotent
    changed = [line for line in shutdown.splitlines() if line not in packaged.splitlines()]
    assert changed == ['XENDOMAINS_SAVE=""', 'XENDOMAINS_RESTORE=""']
    assert len(shutdown.splitlines()) == len(packaged.splitlines())  # every comment kept
    # Empty, not "false": Debian's script restores whenever RESTORE is non-empty ([ -n ]).
    assert sourced(shutdown, tmp_path) == {"save": "", "restore": "", "auto": "/etc/xen/auto"}
    policy = xen.read_xendomains(shutdown)
    assert (policy.on_shutdown, policy.restore, policy.auto_dir) == (
        "shutdown",
        False,
        "/etc/xen/auto",
    )
    assert policy.describe() == (
        "running guests are shut down cleanly at host shutdown; /etc/xen/auto starts its guests"
        " at boot"
    )
    save = xen.set_xendomains(shutdown, "save")
    assert save == packaged  # back to the package's own values, line for line
    assert (
        xen.read_xendomains(save)
        .describe()
        .startswith(
            "running guests are saved to /var/lib/xen/save at host shutdown, restored at boot"
        )
    )
    fresh = xen.set_xendomains("", "shutdown")  # no file: ours alone
    assert sourced(fresh, tmp_path) == {"save": "", "restore": "", "auto": "/etc/xen/auto"}
    # "false" reads as no restore here, as upstream's script does (Debian's would restore).
    assert not xen.read_xendomains(packaged.replace("RESTORE=true", "RESTORE=false")).restore


def test_dry_run_plans_the_loader_and_the_policy(fake_root):
    root = fake_root()
    before = tree(root)
    proc = invoke("host.xen", "--root", str(root), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"would install {PACKAGE}, grub-xen-host (apt-get in {root})" in proc.stdout
    assert "set the xendomains policy (shutdown)" in proc.stdout
    assert tree(root) == before


def installed(root: Path, *packages: str) -> None:
    (root / "var/lib/dpkg/status").write_text(
        "".join(
            f"Package: {p}\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n"
            "Maintainer: x <x@example.org>\nDescription: x\n\n"
            for p in packages
        )
    )


def test_the_policy_is_written_from_the_site_and_rolled_back_on_failure(fake_root, tmp_path):
    """Xen is installed, the loader not: the policy file is written, update-grub fails in this
    bare tree, and xendomains is restored as it was (the loader comes last, after update-grub)."""
    root = fake_root()
    installed(root, PACKAGE)
    (root / "etc/default").mkdir()
    (root / "etc/default/xendomains").write_text(packaged_xendomains())
    site = tmp_path / "site.yaml"
    site.write_text("host:\n  subnet: 192.0.2.0/28\n  xen:\n    on_shutdown: shutdown\n")
    before = tree(root)
    dry = invoke("-f", str(site), "host.xen", "--root", str(root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (
        '+XENDOMAINS_SAVE=""' in dry.stdout and "-XENDOMAINS_SAVE=/var/lib/xen/save" in dry.stdout
    )
    assert "would install grub-xen-host" in dry.stdout
    proc = invoke("-f", str(site), "host.xen", "--root", str(root))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "update-grub" in proc.stderr
    assert f"rolled back: wrote {root}/etc/default/xendomains" in proc.stdout
    assert tree(root) == before
    bad = tmp_path / "bad.yaml"
    bad.write_text("host:\n  subnet: 192.0.2.0/28\n  xen:\n    on_shutdown: hibernate\n")
    proc = invoke("-f", str(bad), "host.xen", "--root", str(root), "--dry-run")
    assert proc.returncode == 2 and "host.xen.on_shutdown = 'hibernate'" in proc.stderr
