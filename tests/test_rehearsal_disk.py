"""lab.rehearse's host disk (pipeline/lab/rehearsal/disk.py), built for real from the rehearsal's
own site: the label partman would leave, GRUB in the MBR booting the plain kernel on the serial
console, the Xen debs in apt's cache; and the install's late setup run in a copy, in a network
namespace, freeing the placeholder. Read back without mounting anything (sfdisk, debugfs).

Both rehearsal profiles (ubuntu-18.04, debian-12). The disks are cached under
$XENLAB_CACHE/rehearsal (the rehearsal's cache_dir); the first run builds each (about 1.5 minutes
with the debootstrap tree cached), later runs reuse them.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from ruamel.yaml import YAML

from pipeline.config import load_site
from pipeline.errors import Failed
from pipeline.lab.rehearsal import disk
from pxe import partition_plan, preseed
from tests.conftest import CACHE, sh

pytestmark = pytest.mark.slow
SITE_FILE = Path(disk.__file__).parent / "site.yaml"
MARK = "/root/xenlab-test-mark"


KERNELS = {"ubuntu-18.04": "4.15.0-", "debian-12": "6.1.0-"}  # the release's kernel series


def rehearsal_site(profile: str):
    data = YAML(typ="safe").load(SITE_FILE.read_text())
    data["rehearse"]["cache_dir"] = str(CACHE / "rehearsal")
    data["install"]["profile"] = profile
    return load_site(data)


def loop_devices() -> str:
    return sh("losetup", "-a").stdout


@pytest.fixture(scope="module", params=sorted(KERNELS))
def site(request):
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount namespaces, chroot)")
    for tool in ("debootstrap", "sfdisk", "debugfs", "unshare", "losetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    return rehearsal_site(request.param)


@pytest.fixture(scope="module")
def base(site) -> disk.BaseDisk:
    before = loop_devices()
    built = disk.base_disk(site)
    assert loop_devices() == before, "the build left loop devices behind"
    return built


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="xenlab-disk-test-", dir=str(CACHE)))
    try:
        yield path
    finally:
        shutil.rmtree(str(path), ignore_errors=True)


def table(image: Path) -> dict:
    import json

    return json.loads(sh("sfdisk", "--json", str(image)).stdout)["partitiontable"]


def read(base: disk.BaseDisk, path: str, image: Path = None) -> str:
    return disk.debugfs(image or base.path, base.partition("/"), f"cat {path}")


def exists(image: Path, base: disk.BaseDisk, path: str) -> bool:
    # debugfs says "File not found" on stderr, and nothing on stdout
    return bool(disk.debugfs(image, base.partition("/"), f"stat {path}").strip())


def test_a_second_call_reuses_the_cached_disk(site, base):
    started = time.monotonic()
    again = disk.base_disk(site)
    assert again == base
    assert time.monotonic() - started < 10
    assert base.path.stat().st_size == site.install.disk_size
    # sparse: only what the filesystems hold takes room
    assert base.path.stat().st_blocks * 512 < 3 * 1024**3


def test_the_label_is_the_partition_plan_on_msdos(site, base):
    plan = partition_plan.plan(site.install)
    t = table(base.path)
    assert t["label"] == "dos" and t["unit"] == "sectors"
    parts = t["partitions"]
    wanted = [p for p in plan.partitions if not p.gpt_only]  # BIOS: no ESP on an msdos label
    assert len(parts) == len(wanted) + 1
    start = partition_plan.LABEL
    for got, part in zip(parts, wanted):
        assert got["start"] * 512 == start and start % partition_plan.ALIGN == 0
        size = got["size"] * 512
        assert part.mb * partition_plan.MB < size <= part.at_most
        assert got["type"] == {"/": "83", "swap": "82"}[part.role]
        assert bool(got.get("bootable")) == (part.role == "/")
        start += size
    placeholder = parts[-1]
    assert placeholder["type"] == "83" and placeholder["start"] * 512 == start
    assert (placeholder["start"] + placeholder["size"]) * 512 <= site.install.disk_size
    assert placeholder["size"] * 512 >= plan.keep_free
    assert [(p.start // 512, p.size // 512) for p in base.partitions] == [
        (p["start"], p["size"]) for p in parts
    ]


def test_grub_boot_code_is_in_the_mbr(base):
    with open(str(base.path), "rb") as fh:
        mbr = fh.read(512)
        core = fh.read(64 * 1024)
    assert mbr[510:] == b"\x55\xaa"
    assert b"GRUB" in mbr[:440]  # boot.img's messages ("GRUB ", "Geom", "Hard Disk")
    assert core.strip(b"\0"), "no core.img after the MBR"


def _default_entry(cfg: str) -> str:
    assert re.search(r'^\s*set default="0"$', cfg, re.MULTILINE), "GRUB's default is not entry 0"
    start = cfg.index("\nmenuentry ")
    return cfg[start : cfg.index("\n}", start)]


def test_grub_cfg_boots_the_plain_kernel_on_the_serial_console(base):
    assert base.kernel.startswith(KERNELS[base.profile])
    cfg = read(base, "/boot/grub/grub.cfg")
    entry = _default_entry(cfg)
    assert "Xen" not in entry.splitlines()[1]
    linux = next(line.split() for line in entry.splitlines() if line.strip().startswith("linux"))
    assert linux[1] == f"/boot/vmlinuz-{base.kernel}"
    assert f"root=UUID={base.root_uuid}" in linux
    assert linux[-2:] == ["console=tty0", "console=ttyS0,115200n8"]
    assert f"initrd\t/boot/initrd.img-{base.kernel}" in entry
    assert "terminal_output serial console" in cfg and "serial --unit=0 --speed=115200" in cfg
    assert "set timeout=3" in cfg
    # read before xen.cfg (the package's) and xenlab.cfg (host.xen's): they build on it
    assert (
        sorted([Path(disk.GRUB_CONSOLE_FILE).name, "xen.cfg", "xenlab.cfg"])[0]
        == Path(disk.GRUB_CONSOLE_FILE).name
    )


def test_the_installed_system(site, base):
    install = site.install
    fstab = read(base, "/etc/fstab")
    assert f"UUID={base.root_uuid} /               ext4" in fstab
    assert f"UUID={base.swap_uuid} none            swap" in fstab
    assert read(base, "/etc/hostname") == f"{install.hostname}\n"
    passwd = read(base, "/etc/passwd")
    assert re.search(
        rf"^{install.user}:x:1000:1000:[^:]*:/home/{install.user}:/bin/bash$", passwd, re.M
    )
    assert re.search(rf"^sudo:x:27:{install.user}$", read(base, "/etc/group"), re.M)
    assert re.search(rf"^{install.user}:!:", read(base, "/etc/shadow"), re.M)
    assert base.host_keys and all(k.startswith(("ssh-", "ecdsa-")) for k in base.host_keys)
    assert read(base, "/etc/ssh/ssh_host_ed25519_key.pub").strip() in base.host_keys
    # no build-time leftovers
    for gone in ("/usr/sbin/policy-rc.d", disk.DEBCONF):
        assert not exists(base.path, base, gone)
    assert "stub-resolv.conf" in disk.debugfs(
        base.path, base.partition("/"), "stat /etc/resolv.conf"
    )


def test_the_xen_packages_wait_in_apts_cache(base):
    hypervisor, loader = disk.profile_for(base.profile).xen_packages()
    listing = disk.debugfs(base.path, base.partition("/"), f"ls -p {disk.ARCHIVES}")
    names = set(re.findall(r"/([^/]+\.deb)/", listing))
    assert names == set(base.xen_debs)
    assert any(n.startswith(f"{hypervisor}_") for n in names)
    assert any(n.startswith(f"{loader}_") for n in names)
    assert base.xen_debs_bytes > 1024**2


def test_install_runs_the_late_setup_in_the_namespace(site, base, netns, scratch):
    ns = netns("disk")
    sh("ip", "-n", ns, "link", "add", "xltest0", "type", "veth", "peer", "name", "xltest1")
    # The real late setup without its zero-touch part (the rehearsal runs that), then a mark
    # that shows the script ran in `ns`.
    script = preseed.setup_script(site.install) + f"ip -o link show xltest0 >{MARK}\n"
    netplan = "network:\n  version: 2\n"
    before = loop_devices()
    got = disk.install(base, scratch / "host.img", script, ns, netplan)
    assert loop_devices() == before
    assert str(scratch) not in Path("/proc/mounts").read_text()
    assert "xenlab: host setup done" in got.output
    assert got.host_keys == base.host_keys and got.seconds > 0
    # the placeholder is gone: the rest of the disk is unpartitioned
    parts = table(got.path)["partitions"]
    assert len(parts) == 2
    end = (parts[-1]["start"] + parts[-1]["size"]) * 512
    assert site.install.disk_size - end >= site.install.keep_free
    assert "xltest0" in read(base, MARK, got.path)
    assert read(base, disk.NETPLAN_FILE, got.path) == netplan
    assert "PasswordAuthentication no" in read(base, "/etc/ssh/sshd_config", got.path)
    for gone in (disk.SETUP_IN_TARGET, "/usr/sbin/policy-rc.d"):
        assert not exists(got.path, base, gone)
    # the base is untouched
    assert len(table(base.path)["partitions"]) == 3


def test_a_failing_setup_raises_with_its_tail_and_releases_everything(base, netns, scratch):
    if base.profile != "ubuntu-18.04":
        pytest.skip("the same code path for every profile")
    ns = netns("disk")
    before = loop_devices()
    with pytest.raises(Failed, match="(?s)late setup exited 3.*boom-marker"):
        disk.install(base, scratch / "host.img", "echo boom-marker\nexit 3\n", ns, "")
    assert loop_devices() == before
    assert str(scratch) not in Path("/proc/mounts").read_text()
    assert subprocess.run(["pgrep", "-f", "xenlab-setup"], capture_output=True).returncode == 1
