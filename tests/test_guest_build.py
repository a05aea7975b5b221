"""guest.build on real parts: sparse files or LVs on a loop device, real mkfs, real ISO, real cfg.

The fast tests hand guest.build a small root tree of their own instead of the golden image (the
image's build costs minutes and is tests/test_image.py's); the slow one goes through `invoke` with
the real debian-12 golden image.
"""

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from cloudinit import host_keys, seed
from cloudinit.errors import SeedError
from pipeline import lvm, mac
from pipeline.config import Site
from pipeline.errors import BadInput, Failed
from pipeline.guest import build as guest
from pipeline.guest import xen_cfg
from pipeline.guest.checks import HostFacts
from pipeline.guest.image import GoldenImage
from pipeline.runner import Runner
from tests.conftest import invoke, sh
from tests.test_image import unmet_prerequisite

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcIRqNcmYzCKyRlQhYiqbUzXqiYF3Y7mAGwB54Tt3Ko test@xenlab"
FACTS = HostFacts(memory=8 << 30, cpus=4, source="test")


# --- the MAC ---------------------------------------------------------------------------------------
def test_mac_is_in_xens_oui_stable_and_distinct():
    one = mac.derive("guest-01")
    assert one.startswith("00:16:3e:") and len(one.split(":")) == 6
    assert one == mac.derive("guest-01")
    assert int(one.split(":")[3], 16) < 0x80  # fourth octet below 0x80, as mac.derive keeps it
    names = [f"guest-{i:02d}" for i in range(200)]
    assert len({mac.derive(n) for n in names}) == len(names)
    assert mac.collisions(names) == {}


# --- xl.cfg ------------------------------------------------------------------------------------------
def xl_cfg(**overrides):
    values = dict(
        name="guest-01",
        memory_mib=1024,
        vcpus=2,
        disks=(
            xen_cfg.Disk("/dev/VolumeGroupXen/guest-01-disk", "xvda2"),
            xen_cfg.Disk("/dev/VolumeGroupXen/guest-01-swap", "xvda1"),
            xen_cfg.Disk("/var/lib/xenlab/guests/guest-01/seed.iso", "xvdc", False, True),
        ),
        ip=ipaddress.IPv4Address("192.0.2.2"),
        mac="00:16:3e:3f:a7:7c",
        bridge="xenbr0",
    )
    values.update(overrides)
    return xen_cfg.XlConfig(**values)


def test_xl_cfg_renders_the_lab_guest():
    text = xen_cfg.render(xl_cfg())
    lines = [line.strip() for line in text.splitlines()]
    assert 'name = "guest-01"' in lines
    assert "memory = 1024" in lines and "vcpus = 2" in lines
    # pvgrub2 by default: GRUB's Xen image boots inside the guest, no bootloader line
    assert 'kernel = "/usr/lib/grub-xen/grub-x86_64-xen.bin"' in lines
    assert not any(line.startswith("bootloader") for line in lines)
    disks = [line for line in lines if line.startswith("'format=raw")]
    assert disks == [
        "'format=raw, vdev=xvda2, access=rw, target=/dev/VolumeGroupXen/guest-01-disk',",
        "'format=raw, vdev=xvda1, access=rw, target=/dev/VolumeGroupXen/guest-01-swap',",
        "'format=raw, vdev=xvdc, access=ro, devtype=cdrom, "
        "target=/var/lib/xenlab/guests/guest-01/seed.iso',",
    ]
    assert "vif = ['ip=192.0.2.2,mac=00:16:3e:3f:a7:7c,bridge=xenbr0']" in lines
    assert 'on_poweroff = "destroy"' in lines and 'on_crash = "restart"' in lines
    assert xen_cfg.vif_addresses(text) == (["192.0.2.2"], ["00:16:3e:3f:a7:7c"])


MISREAD = [
    ({"name": 'evil"name'}, """name 'evil"name' is not a domain name xl accepts"""),
    ({"bridge": "xenbr0'\nextra=1"}, """bridge "xenbr0'\\nextra=1" is not an interface name"""),
    (
        {"mac": "00:16:3E:3F:A7:7C,bridge=x"},
        "mac '00:16:3E:3F:A7:7C,bridge=x' is not a lower-case MAC address",
    ),
    (
        {"disks": (xen_cfg.Disk("/srv/a b.img", "xvda2"),)},
        "disk target '/srv/a b.img' is not a plain absolute path",
    ),
    (
        {"disks": (xen_cfg.Disk("/srv/a,b.img", "xvda2"),)},
        "disk target '/srv/a,b.img' is not a plain absolute path",
    ),
    (
        {"disks": (xen_cfg.Disk("/srv/a.img", "hda'"),)},
        """disk vdev "hda'" is not a Xen virtual device name""",
    ),
    (
        {"on_crash": "explode"},
        "on_crash 'explode' is not one of destroy, restart, preserve, rename-restart, "
        "coredump-destroy, coredump-restart",
    ),
    ({"vcpus": 0}, "vcpus 0 must be at least 1"),
]


@pytest.mark.parametrize("overrides,message", MISREAD, ids=[m[1].split()[0] for m in MISREAD])
def test_xl_cfg_refuses_values_xl_would_misread(overrides, message):
    """Each bad value is refused by name, and only it: the message is exactly the one problem."""
    with pytest.raises(ValueError) as err:
        xen_cfg.render(xl_cfg(**overrides))
    assert str(err.value) == message


# --- a small root tree standing in for the golden image -------------------------------------------
@pytest.fixture
def golden(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "boot").mkdir()
    (tree / "etc/fstab").write_text(
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=xenswap none swap sw 0 0\n"
    )
    (tree / "etc/os-release").write_text('PRETTY_NAME="test tree"\n')
    (tree / "boot/vmlinuz-test").write_bytes(os.urandom(1 << 20))
    return GoldenImage(
        profile="debian-12", key="test", tree=tree, reused=True,
        kernel="boot/vmlinuz-test", initrd="boot/initrd-test", distribution="test tree",
    )  # fmt: skip


def site_for(storage: dict, **guest) -> Site:
    spec = {
        "memory": "512M",
        "vcpus": 1,
        "disk": "2G",
        "swap": "256M",
        "profile": "debian-12",
        "ip": "192.0.2.2",
        "ssh_authorized_keys": [KEY],
        "ssh_allow_from": ["192.0.2.0/28"],
        "dns": ["192.0.2.1"],
    }
    spec.update(guest)
    return Site.model_validate(
        {
            "host": {"subnet": "192.0.2.0/28", "storage": storage},
            "images": {"mirror": "http://mirror.example/debian"},
            "guests": {"guest-01": spec, "guest-02": {**spec, "ip": "192.0.2.3"}},
        }
    )


def everything_under(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def blkid(path: str) -> dict:
    out = sh("blkid", "-o", "export", path).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def fingerprint_of(public_key: str) -> str:
    """`ssh-keygen -l` of one public key line, as the guest's sshd will show it."""
    proc = subprocess.run(
        ["ssh-keygen", "-l", "-f", "/dev/stdin"],
        input=public_key + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def check_guest_files(root: Path, built, volumes_expected):
    cfg = (root / "etc/xen/guest-01.cfg").read_text()
    assert built.cfg == str(root / "etc/xen/guest-01.cfg")
    assert f"target={built.seed}'" in cfg  # the cfg names the seed where it is
    for volume in volumes_expected:
        assert f"target={volume}'" in cfg
    assert f"mac={mac.derive('guest-01')}" in cfg and "ip=192.0.2.2" in cfg
    link = root / "etc/xen/auto/guest-01.cfg"
    assert link.is_symlink() and link.resolve() == (root / "etc/xen/guest-01.cfg").resolve()

    secret_file = Path(built.password_file)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 24
    seed_bytes = Path(built.seed).read_bytes()
    assert stat.S_IMODE(Path(built.seed).stat().st_mode) == 0o600
    assert secret.encode() not in seed_bytes  # only its hash is in the seed
    label, files = seed.read(seed_bytes)
    assert label == "cidata" and set(files) == {"meta-data", "user-data", "network-config"}
    yaml = YAML(typ="safe")
    user_data = yaml.load(files["user-data"])
    assert files["user-data"].startswith("#cloud-config\n")
    assert user_data["users"][0]["ssh_authorized_keys"] == [KEY]
    assert user_data["users"][1]["hashed_passwd"].startswith("$6$")
    assert yaml.load(files["meta-data"])["local-hostname"] == "guest-01"
    eth0 = yaml.load(files["network-config"])["ethernets"]["eth0"]
    assert eth0["addresses"] == ["192.0.2.2/28"] and eth0["gateway4"] == "192.0.2.1"
    # One host key of each type xenlab makes, in the seed, and the summary's fingerprints are
    # those of the public keys the seed gives the guest (ssh-keygen -l on each).
    key_types = [kind for kind, _ in host_keys.TYPES]
    assert len(key_types) == 2
    assert sorted(user_data["ssh_keys"]) == sorted(
        f"{kind}_{part}" for kind in key_types for part in ("private", "public")
    )
    publics = [user_data["ssh_keys"][f"{kind}_public"] for kind in key_types]
    assert len(built.fingerprints) == len(key_types)
    assert list(built.fingerprints) == [fingerprint_of(public) for public in publics]
    assert Path(built.known_hosts).read_text() == "".join(
        f"guest-01,192.0.2.2 {public}\n" for public in publics
    )


def check_filesystems(disk: str, swap: str):
    assert blkid(disk)["LABEL"] == "cloudimg-rootfs" and blkid(disk)["TYPE"] == "ext4"
    assert blkid(swap)["LABEL"] == "xenswap" and blkid(swap)["TYPE"] == "swap"
    fstab = sh("debugfs", "-R", "cat /etc/fstab", disk).stdout
    assert "LABEL=cloudimg-rootfs" in fstab
    # The test tree has no /proc or /sys; a root without them does not boot, so they are added.
    listing = sh("debugfs", "-R", "ls -l /", disk).stdout
    for mount_point, mode in (("proc", "40555"), ("sys", "40555"), ("tmp", "41777")):
        assert any(line.split()[1:2] == [mode] and line.split()[-1] == mount_point
                   for line in listing.splitlines()), listing  # fmt: skip
    blocks = sh("dumpe2fs", "-h", disk).stdout
    count = int(next(ln for ln in blocks.splitlines() if ln.startswith("Block count:")).split()[-1])
    size = int(next(ln for ln in blocks.splitlines() if ln.startswith("Block size:")).split()[-1])
    assert count * size == 2 << 30  # the whole volume, not the tree's size


# --- dir storage ---------------------------------------------------------------------------------------
def test_dir_storage_builds_sparse_volumes_cfg_link_and_seed(tmp_path, golden):
    root = tmp_path / "root"
    root.mkdir()
    storage = tmp_path / "xen"
    site = site_for({"kind": "dir", "dir": str(storage)})
    built = guest.build(
        site, "guest-01", Runner(root=root), start=True, image=lambda p: golden, facts=FACTS
    )
    disk, swap = storage / "guest-01/disk.img", storage / "guest-01/swap.img"
    assert built.volumes == (str(disk), str(swap))
    assert disk.stat().st_size == 2 << 30 and swap.stat().st_size == 256 << 20
    # Sparse: only the tree and the filesystem's metadata are written, not 2 GiB.
    assert disk.stat().st_blocks * 512 < 200 << 20
    assert stat.S_IMODE(disk.stat().st_mode) == 0o600
    check_filesystems(str(disk), str(swap))
    check_guest_files(root, built, [disk, swap])
    assert built.started == "no Xen here: not started"


def test_existing_guest_is_refused_and_untouched_unless_force(tmp_path, golden):
    root = tmp_path / "root"
    root.mkdir()
    site = site_for({"kind": "dir", "dir": str(tmp_path / "xen")})
    first = guest.build(
        site, "guest-01", Runner(root=root), start=False, image=lambda p: golden, facts=FACTS
    )
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "xen").rglob("*")}
    seed_before = Path(first.seed).read_bytes()
    with pytest.raises(BadInput) as err:
        guest.build(
            site, "guest-01", Runner(root=root), start=False, image=lambda p: golden, facts=FACTS
        )
    assert "exists already" in str(err.value)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "xen").rglob("*")} == before
    again = guest.build(
        site,
        "guest-01",
        Runner(root=root),
        force=True,
        start=False,
        image=lambda p: golden,
        facts=FACTS,
    )
    assert Path(again.seed).read_bytes() != seed_before  # new keys, new password
    check_guest_files(root, again, [Path(v) for v in again.volumes])


def test_dry_run_changes_nothing(tmp_path, golden):
    root = tmp_path / "root"
    root.mkdir()
    site = site_for({"kind": "dir", "dir": str(tmp_path / "xen")})
    said = []
    runner = Runner(root=root, dry_run=True, say=said.append)
    guest.build(site, "guest-01", runner, image=lambda p: golden, facts=FACTS, say=said.append)
    assert everything_under(root) == [] and not (tmp_path / "xen").exists()
    plan = "\n".join(said)
    assert "would create sparse file" in plan and "would write" in plan and "guest-01.cfg" in plan


def raising(error: Exception):
    def broken(*_args):
        raise error

    return broken


HALF_WAY = [
    (xen_cfg, "render", Failed("injected after the volumes, the filesystem and the seed")),
    # cloudinit/ raises its own error; guest.build makes it a failed run with the same words.
    (
        host_keys,
        "generate",
        SeedError("ssh-keygen is missing (Debian/Ubuntu package openssh-client)"),
    ),
]


@pytest.mark.parametrize("module,name,error", HALF_WAY, ids=["the cfg", "a seed tool"])
def test_a_failure_after_the_volumes_removes_everything_this_run_made(
    tmp_path, golden, monkeypatch, module, name, error
):
    root = tmp_path / "root"
    root.mkdir()
    site = site_for({"kind": "dir", "dir": str(tmp_path / "xen")})
    monkeypatch.setattr(module, name, raising(error))
    with pytest.raises(Failed) as err:
        guest.build(site, "guest-01", Runner(root=root), image=lambda p: golden, facts=FACTS)
    assert str(err.value) == str(error)
    assert everything_under(root) == []
    assert not (tmp_path / "xen").exists()


def test_the_summary_is_what_guest_build_prints():
    built = guest.Built(
        name="guest-01", distribution="Debian 12 (bookworm)", mac="00:16:3e:3f:a7:7c",
        ip="192.0.2.2", gateway="192.0.2.1",
        volumes=("/dev/VolumeGroupXen/guest-01-disk", "/dev/VolumeGroupXen/guest-01-swap"),
        cfg="/etc/xen/guest-01.cfg", link="/etc/xen/auto/guest-01.cfg",
        seed="/var/lib/xenlab/guests/guest-01/seed.iso",
        password_file="/var/lib/xenlab/guests/guest-01/root-password",
        known_hosts="/var/lib/xenlab/guests/guest-01/known_hosts",
        fingerprints=("256 SHA256:abc root@guest-01 (ED25519)",
                      "3072 SHA256:def root@guest-01 (RSA)"),
        started="started",
    )  # fmt: skip
    assert built.summary() == [
        "Hostname       :  guest-01",
        "Distribution   :  Debian 12 (bookworm)",
        "MAC Address    :  00:16:3e:3f:a7:7c",
        "IP Address(es) :  192.0.2.2 (gateway 192.0.2.1)",
        "SSH Fingerprint:  256 SHA256:abc root@guest-01 (ED25519)",
        "SSH Fingerprint:  3072 SHA256:def root@guest-01 (RSA)",
        "Known hosts    :  /var/lib/xenlab/guests/guest-01/known_hosts",
        "Root Password  :  in /var/lib/xenlab/guests/guest-01/root-password (mode 600)",
        "Config         :  /etc/xen/guest-01.cfg (autostart: /etc/xen/auto/guest-01.cfg)",
        "Volumes        :  /dev/VolumeGroupXen/guest-01-disk, /dev/VolumeGroupXen/guest-01-swap",
        "State          :  started",
    ]


def test_without_autostart_the_summary_names_no_link():
    built = guest.Built(
        name="g", distribution="d", mac="m", ip="i", gateway="g", volumes=("a", "b"), cfg="c",
        link=None, seed="s", password_file="p", known_hosts="k", fingerprints=(), started="x",
    )  # fmt: skip
    assert "Config         :  c" in built.summary()


# --- LVM: a VG on a loop device; the fixture maps the LVs as dm-linear would ----------------------
@pytest.fixture
def volume_group(loop_disk):
    device = loop_disk("8G")
    name = f"xlguest{os.getpid()}"
    sh("pvcreate", "-q", "-y", device)
    sh("vgcreate", "-q", name, device)
    yield name


def lv_names(vg: str) -> set:
    out = sh("lvs", "--reportformat", "json", "-o", "lv_name", vg).stdout
    return {row["lv_name"] for row in json.loads(out)["report"][0]["lv"]}


def test_lvm_storage_with_root_and_no_start(tmp_path, golden, volume_group, lv_mapper):
    root = tmp_path / "root"
    root.mkdir()
    site = site_for({"kind": "lvm", "volume_group": volume_group})
    built = guest.build(
        site, "guest-01", Runner(root=root), start=False, activate=lv_mapper,
        image=lambda p: golden, facts=FACTS,
    )  # fmt: skip
    assert lv_names(volume_group) == {"guest-01-disk", "guest-01-swap"}
    disk, swap = f"/dev/{volume_group}/guest-01-disk", f"/dev/{volume_group}/guest-01-swap"
    assert built.volumes == (disk, swap)
    check_filesystems(disk, swap)
    check_guest_files(root, built, [disk, swap])
    assert built.started == "not started (--no-start)"


def test_lvm_failure_after_the_volumes_removes_the_lvs(tmp_path, golden, volume_group, lv_mapper):
    root = tmp_path / "root"
    root.mkdir()
    site = site_for({"kind": "lvm", "volume_group": volume_group})

    def broken(image):
        raise Failed("injected while writing the seed")

    import cloudinit.seed

    original = cloudinit.seed.build
    cloudinit.seed.build = broken
    try:
        with pytest.raises(Failed, match="injected"):
            guest.build(
                site, "guest-01", Runner(root=root), activate=lv_mapper,
                image=lambda p: golden, facts=FACTS,
            )  # fmt: skip
    finally:
        cloudinit.seed.build = original
    assert lv_names(volume_group) == set()
    assert everything_under(root) == []


def test_lvm_without_device_mapper_fails_and_leaves_no_lv(tmp_path, golden, volume_group):
    """Here the kernel has no device-mapper: the real activation says so, and the LV goes again."""
    if lvm.device_mapper():
        pytest.skip("this kernel has device-mapper")
    root = tmp_path / "root"
    root.mkdir()
    site = site_for({"kind": "lvm", "volume_group": volume_group})
    with pytest.raises(Failed, match="device-mapper"):
        guest.build(site, "guest-01", Runner(root=root), image=lambda p: golden, facts=FACTS)
    assert lv_names(volume_group) == set()
    assert everything_under(root) == []


def test_vg_without_room_is_bad_input(tmp_path, golden, volume_group):
    site = site_for({"kind": "lvm", "volume_group": volume_group}, disk="100G")
    with pytest.raises(BadInput, match="do not fit"):
        guest.build(site, "guest-01", Runner(root=tmp_path), image=lambda p: golden, facts=FACTS)
    assert lv_names(volume_group) == set()


# --- bad input through invoke: exit 2, every problem named, nothing left behind -------------------
def write_site(tmp_path: Path, storage: dict, guests: dict) -> Path:
    path = tmp_path / "site.yaml"
    data = {"host": {"subnet": "192.0.2.0/28", "storage": storage}, "guests": guests}
    yaml = YAML()
    with open(str(path), "w") as fh:
        yaml.dump(data, fh)
    return path


def spec(**overrides):
    base = {"memory": "512M", "vcpus": 1, "disk": "2G", "swap": "256M", "profile": "debian-12",
            "ip": "192.0.2.5", "ssh_authorized_keys": [KEY]}  # fmt: skip
    base.update(overrides)
    return base


BAD = [
    ("t-guest", {"t-guest": spec(ip="192.0.2.0")}, "is the network address"),
    ("t-guest", {"t-guest": spec(ip="192.0.2.15")}, "is the broadcast address"),
    ("t-guest", {"t-guest": spec(ip="192.0.2.1")}, "is the bridge's address"),
    ("t-guest", {"t-guest": spec(ip="198.51.100.7")}, "is outside 192.0.2.0/28"),
    ("t-guest", {"t-guest": spec(ip="192.0.2.2")}, "is guests.guest-01's already"),
    ("t-guest", {"t-guest": spec(ip=None)}, "is required"),
    ("t-guest", {"t-guest": spec(memory="1T")}, "MiB is more than the host has"),
    ("t-guest", {"t-guest": spec(vcpus=512)}, "is more than the host's"),
    ("bad_name", {"bad_name": spec()}, "is not a host name"),
    ("nobody", {"t-guest": spec()}, "is not in the site config"),
    ("t-guest", {"t-guest": spec(ssh_allow_from=["192.0.2.5/28"])}, "is not an IPv4 network"),
]


@pytest.mark.parametrize("name,guests,reason", BAD, ids=[b[2] for b in BAD])
def test_bad_input_exits_2_and_leaves_nothing(tmp_path, name, guests, reason):
    root = tmp_path / "root"
    root.mkdir()
    storage = tmp_path / "xen"
    site = write_site(tmp_path, {"kind": "dir", "dir": str(storage)}, guests)
    proc = invoke("-f", str(site), "guest.build", "--name", name, "--root", str(root), "--no-start")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert reason in proc.stderr
    assert everything_under(root) == [] and not storage.exists()


def test_all_problems_are_reported_at_once(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    site = write_site(
        tmp_path, {"kind": "dir", "dir": str(tmp_path / "xen")},
        {"t-guest": spec(gateway="192.0.2.15", memory="1T", vcpus=512)},
    )  # fmt: skip
    proc = invoke("-f", str(site), "guest.build", "--name", "t-guest", "--root", str(root))
    assert proc.returncode == 2
    for reason in ("broadcast address", "more than the host has", "more than the host's"):
        assert reason in proc.stderr


def test_flags_override_the_config_and_are_named(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    site = write_site(tmp_path, {"kind": "dir", "dir": str(tmp_path / "xen")}, {"t-guest": spec()})
    proc = invoke(
        "-f", str(site), "guest.build", "--name", "t-guest", "--root", str(root), "--memory", "lots"
    )
    assert proc.returncode == 2
    assert "guests.t-guest.memory (--memory) = 'lots'" in proc.stderr


def test_existing_cfg_exits_2_and_is_untouched(tmp_path):
    root = tmp_path / "root"
    cfg = root / "etc/xen/t-guest.cfg"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('name = "t-guest"\n')
    site = write_site(tmp_path, {"kind": "dir", "dir": str(tmp_path / "xen")}, {"t-guest": spec()})
    proc = invoke("-f", str(site), "guest.build", "--name", "t-guest", "--root", str(root))
    assert proc.returncode == 2 and "exists already" in proc.stderr
    assert cfg.read_text() == 'name = "t-guest"\n'
    assert everything_under(root) == ["etc", "etc/xen", "etc/xen/t-guest.cfg"]


def test_an_ip_or_mac_in_a_hand_made_cfg_is_taken(tmp_path):
    root = tmp_path / "root"
    other = root / "etc/xen/old.cfg"
    other.parent.mkdir(parents=True)
    other.write_text(f"vif = ['ip=192.0.2.5,mac={mac.derive('t-guest')},bridge=xenbr0']\n")
    site = write_site(tmp_path, {"kind": "dir", "dir": str(tmp_path / "xen")}, {"t-guest": spec()})
    proc = invoke("-f", str(site), "guest.build", "--name", "t-guest", "--root", str(root))
    assert proc.returncode == 2
    assert "is old.cfg's already" in proc.stderr and "which old.cfg uses" in proc.stderr


# --- the real thing: invoke with the debian-12 golden image ----------------------------------------
@pytest.mark.slow
def test_invoke_builds_a_guest_from_the_golden_image(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    storage = tmp_path / "xen"
    site = write_site(tmp_path, {"kind": "dir", "dir": str(storage)}, {"t-guest": spec(disk="4G")})
    reason = unmet_prerequisite("debian-12")  # the image guest.build builds when it is not cached
    if reason:
        pytest.skip(reason)
    proc = invoke(
        "-f", str(site), "guest.build", "--name", "t-guest", "--root", str(root), "--no-start"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Hostname       :  t-guest" in out
    assert f"MAC Address    :  {mac.derive('t-guest')}" in out
    assert "IP Address(es) :  192.0.2.5" in out
    assert out.count("SSH Fingerprint:  ") == len(host_keys.TYPES)
    password_file = root / "var/lib/xenlab/guests/t-guest/root-password"
    assert f"Root Password  :  in {password_file} (mode 600)" in out
    assert password_file.read_text().strip() not in out + proc.stderr
    disk = storage / "t-guest/disk.img"
    assert blkid(str(disk))["TYPE"] == "ext4" and disk.stat().st_size == 4 << 30
    assert (root / "etc/xen/auto/t-guest.cfg").is_symlink()
    # The tree's kernel and grub config are there for pygrub.
    grub = sh("debugfs", "-R", "cat /boot/grub/grub.cfg", str(disk)).stdout
    assert "menuentry" in grub
    assert "root filesystem written in" in out
    # Again, replacing it, quietly: no progress lines, the summary still there.
    quiet = invoke("-f", str(site), "guest.build", "--name", "t-guest", "--root", str(root),
                   "--no-start", "--force", "-q")  # fmt: skip
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "root filesystem written" not in quiet.stdout
    assert "Hostname       :  t-guest" in quiet.stdout


def test_ubuntu_profile_gets_a_filesystem_its_kernel_mounts_and_hosts_allow(tmp_path, golden):
    """Ubuntu 18.04's kernel (4.15) cannot mount ext4 with orphan_file or metadata_csum_seed, which
    newer e2fsprogs turn on by default; its sshd honours hosts.allow."""
    root = tmp_path / "root"
    root.mkdir()
    site = site_for({"kind": "dir", "dir": str(tmp_path / "xen")}, profile="ubuntu-18.04")
    built = guest.build(site, "guest-01", Runner(root=root), image=lambda p: golden, facts=FACTS)
    features = next(
        line for line in sh("dumpe2fs", "-h", built.volumes[0]).stdout.splitlines()
        if line.startswith("Filesystem features:")
    )  # fmt: skip
    assert "orphan_file" not in features and "metadata_csum_seed" not in features
    assert "extent" in features
    user_data = YAML(typ="safe").load(seed.read(Path(built.seed).read_bytes())[1]["user-data"])
    paths = {f["path"]: f["content"] for f in user_data["write_files"]}
    assert paths["/etc/hosts.allow"].endswith("sshd: 192.0.2.0/255.255.255.240\n")
    assert paths["/etc/hosts.deny"].endswith("sshd: ALL\n")


# --- boot modes: the cfg against xl.cfg(5) and xl-disk-configuration(5) ---------------------------
# xl reads a cfg with libxlu's flex grammar (tools/libs/util/libxlu_cfg_l.l): settings
# `NAME = VALUE` ending at a newline or ';', VALUE a number, a string in '...' or "..." (no
# newline), or a list [VALUE, ...] (a trailing comma allowed), '#' to the end of the line.
# A real `xl -N create` needs a hypervisor (it opens one before it parses anything); the
# rehearsal runs it in its dom0.
_TOKEN = re.compile(
    r"""(?P<ws>[ \t]+)|(?P<comment>\#[^\n]*)|(?P<nl>\n|;)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"""
    r"""|(?P<num>[0-9]+(\.[0-9]+)?)|(?P<str>"[^"\n]*"|'[^'\n]*')|(?P<punct>[\[\],=])"""
)


def parse_xl_cfg(text: str) -> dict:
    """{name: value} as libxlu reads `text`; AssertionError on anything its grammar rejects."""
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        assert match, f"xl's lexer stops at {text[at : at + 30]!r}"
        at = match.end()
        kind = match.lastgroup
        if kind in ("ws", "comment"):
            continue
        if kind == "nl":
            if tokens and tokens[-1] != ("nl", "\n"):
                tokens.append(("nl", "\n"))
            continue
        tokens.append((kind, match.group()))
    settings, i = {}, 0

    def value(i):
        assert i < len(tokens) and tokens[i][0] != "nl", "a setting without a value"
        kind, word = tokens[i]
        if kind == "num":
            return (float(word) if "." in word else int(word)), i + 1
        if kind == "str":
            return word[1:-1], i + 1
        assert word == "[", f"a value cannot start with {word!r}"
        items, i = [], i + 1
        while True:
            while i < len(tokens) and tokens[i][0] == "nl":  # lists span lines
                i += 1
            assert i < len(tokens), "a list without its ]"
            if tokens[i][1] == "]":
                return items, i + 1
            item, i = value(i)
            items.append(item)
            while i < len(tokens) and tokens[i][0] == "nl":
                i += 1
            assert i < len(tokens) and tokens[i][1] in (",", "]"), "a list item without , or ]"
            if tokens[i][1] == ",":
                i += 1

    while i < len(tokens):
        if tokens[i][0] == "nl":
            i += 1
            continue
        assert tokens[i][0] == "id" and tokens[i + 1 : i + 2] == [("punct", "=")], tokens[i:]
        name = tokens[i][1]
        assert name not in settings, f"{name} set twice"
        settings[name], i = value(i + 2)
        assert i == len(tokens) or tokens[i][0] == "nl", f"{name}: junk after the value"
    return settings


# xl-disk-configuration(5): comma-separated parameters; target= last (it may hold commas).
DISK_KEYS = {"format", "vdev", "access", "devtype", "backend", "backendtype", "script", "target"}
DISK_VALUES = {
    "format": {"raw", "qcow", "qcow2", "vhd", "qed"},
    "access": {"ro", "r", "rw", "w"},
    "devtype": {"cdrom"},
}


def check_disk_spec(spec: str) -> dict:
    params = [p.strip() for p in spec.split(",")]
    pairs = dict(p.split("=", 1) for p in params)
    assert list(pairs)[-1] == "target", f"target= must be last: {spec}"
    assert set(pairs) <= DISK_KEYS, spec
    for key, allowed in DISK_VALUES.items():
        assert key not in pairs or pairs[key] in allowed, (key, pairs[key])
    assert re.fullmatch(r"xvd[a-z]+[0-9]*", pairs["vdev"]), pairs["vdev"]
    assert pairs["target"].startswith("/")
    return pairs


def check_vif_spec(spec: str) -> dict:
    """xl-network-configuration(5): key=value pairs, comma-separated."""
    pairs = dict(p.split("=", 1) for p in spec.split(","))
    assert set(pairs) <= {"mac", "ip", "bridge", "script", "model", "vifname", "type", "rate"}
    assert re.fullmatch(r"00:16:3e(:[0-9a-f]{2}){3}", pairs["mac"])
    ipaddress.IPv4Address(pairs["ip"])
    return pairs


BOOTS = {
    "pvgrub": {"kernel": "/usr/lib/grub-xen/grub-x86_64-xen.bin"},
    "pygrub": {"bootloader": "pygrub"},
    "pvh": {"type": "pvh", "kernel": "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"},
}


@pytest.mark.parametrize("boot", list(BOOTS))
def test_the_cfg_of_each_boot_mode_reads_as_xl_reads_it(boot):
    settings = parse_xl_cfg(xen_cfg.render(xl_cfg(boot=boot)))
    boot_keys = {k: v for k, v in settings.items() if k in ("kernel", "bootloader", "type")}
    assert boot_keys == BOOTS[boot]
    assert (settings["name"], settings["memory"], settings["vcpus"]) == ("guest-01", 1024, 2)
    disks = [check_disk_spec(spec) for spec in settings["disk"]]
    assert [(d["vdev"], d["access"], d.get("devtype")) for d in disks] == [
        ("xvda2", "rw", None), ("xvda1", "rw", None), ("xvdc", "ro", "cdrom"),
    ]  # fmt: skip
    assert disks[0]["target"] == "/dev/VolumeGroupXen/guest-01-disk"
    (vif,) = [check_vif_spec(spec) for spec in settings["vif"]]
    assert vif == {"mac": "00:16:3e:3f:a7:7c", "ip": "192.0.2.2", "bridge": "xenbr0"}
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        assert settings[key] in xen_cfg.ACTIONS
    assert xen_cfg.cfg_boot(xen_cfg.render(xl_cfg(boot=boot))) == boot
    assert xen_cfg.parse_disks(xen_cfg.render(xl_cfg(boot=boot)))[2]["devtype"] == "cdrom"


def test_the_grammar_check_rejects_what_xl_would():
    for bad in (
        'name = "a\nb"',
        "memory = ",
        "disk = ['x' 'y']",
        "name = 'a' 'b'",
        'x = "1"\nx = 2',
    ):
        with pytest.raises(AssertionError):
            parse_xl_cfg(bad)
    with pytest.raises(AssertionError):
        check_disk_spec("target=/srv/a.img, vdev=xvda2")  # target not last
    assert xen_cfg.parse_disks("disk = ['/srv/a.img,raw,xvda2,rw']") == [
        {"target": "/srv/a.img", "format": "raw", "vdev": "xvda2", "access": "rw"}
    ]
    with pytest.raises(ValueError, match="boot 'grub' is not one of pvgrub, pygrub, pvh"):
        xen_cfg.render(xl_cfg(boot="grub"))


def test_the_loader_must_be_on_the_host(tmp_path):
    with pytest.raises(BadInput) as err:
        guest.check_loader("guest-01", "pvgrub", host=tmp_path)
    assert "guests.guest-01.boot = 'pvgrub'" in str(err.value)
    assert "/usr/lib/grub-xen/grub-x86_64-xen.bin" in str(err.value)
    assert "grub-xen-host" in str(err.value)
    guest.check_loader("guest-01", "pygrub", host=tmp_path)  # xl's own helper: nothing to check
    loader = tmp_path / "usr/lib/grub-xen/grub-x86_64-xen.bin"
    loader.parent.mkdir(parents=True)
    loader.write_bytes(b"\x7fELF")
    guest.check_loader("guest-01", "pvgrub", host=tmp_path)


def test_pvh_needs_xen_4_10():
    from pipeline.guest import checks

    (old,) = checks.boot_problems("g", "pvh", ((4, 9), "xl info"))
    assert old.field == "guests.g.boot" and old.value == "pvh"
    assert "needs Xen 4.10 or newer; this host has Xen 4.9 (xl info)" in old.reason
    assert checks.boot_problems("g", "pvh", ((4, 17), "the installed xen-hypervisor package")) == []
    (unknown,) = checks.boot_problems("g", "pvh", (None, "no xl info answer"))
    assert "version is unknown (no xl info answer)" in unknown.reason
    assert checks.boot_problems("g", "pvgrub", (None, "x")) == []


def test_invoke_refuses_pvh_on_xen_4_9_and_where_the_version_is_unknown(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    site = write_site(
        tmp_path, {"kind": "dir", "dir": str(tmp_path / "xen")}, {"t-guest": spec(boot="pvh")}
    )
    args = ("-f", str(site), "guest.build", "--name", "t-guest", "--root", str(root), "--no-start")
    proc = invoke(*args)  # no Xen and no hypervisor package on this machine
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "guests.t-guest.boot = 'pvh': needs Xen 4.10 or newer" in proc.stderr
    # A stand-in xl answering `xl info` as the lab's Xen 4.9.2 (tests/data/xl/fake-xl)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xl").symlink_to(Path(__file__).parent / "data/xl/fake-xl")
    state = tmp_path / "xl.json"
    state.write_text(json.dumps({"domains": [], "linger": {}, "next_id": 1}))
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "XL_FAKE_STATE": str(state)}
    proc = invoke(*args, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "this host has Xen 4.9 (xl info), which has no PVH guests" in proc.stderr
    assert everything_under(root) == [] and not (tmp_path / "xen").exists()


def _hook_body() -> str:
    """The kernel hook xenlab-pv-boot installs in the image (the grub.cfg writer), as a script."""
    element = Path(__file__).parent.parent / "images/elements/xenlab-pv-boot"
    text = (element / "install.d/60-xenlab-pygrub-hook").read_text()
    return text.split("<<'HOOK'\n", 1)[1].split("\nHOOK\n", 1)[0]


def test_the_images_grub_cfg_serves_pvgrub2_and_pygrub(tmp_path):
    """The image's grub.cfg, as its kernel hook writes it, passes the real grub-script-check and
    names files relative to the filesystem it is on: pvgrub2's built-in config finds
    /boot/grub/grub.cfg on xvda2 and runs it there (configfile), pygrub reads the same entries."""
    if shutil.which("grub-script-check") is None:
        pytest.skip("grub-script-check is not installed (grub-common)")
    boot = tmp_path / "boot"
    boot.mkdir()
    for version in ("6.1.0-57-amd64", "6.1.0-9-amd64"):
        (boot / f"vmlinuz-{version}").write_text("k")
        (boot / f"initrd.img-{version}").write_text("i")
    script = 'XENLAB_KERNEL_CMDLINE="root=/dev/xvda2 ro console=hvc0"\n' + _hook_body()
    subprocess.run(["sh", "-c", script.replace("/boot", str(boot))], check=True)
    cfg = (boot / "grub/grub.cfg").read_text().replace(str(boot), "/boot")
    found = [cfg]
    golden = sorted(Path("/var/cache/xenlab/images").glob("*/root/boot/grub/grub.cfg"))
    found += [path.read_text() for path in golden]  # the cached golden images, where built
    for text in found:
        checked = subprocess.run(["grub-script-check"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        entries = re.findall(r"^\s*linux (\S+) (.*)$", text, re.M)
        assert entries and all(path.startswith("/boot/vmlinuz-") for path, _ in entries)
        assert all("root=/dev/xvda2" in args and "console=hvc0" in args for _, args in entries)
        assert not re.search(r"\((hd|xen)[^)]*\)", text)  # no device of the build machine
        assert "set root" not in text and "search" not in text
    # newest kernel first: what both loaders boot by default
    assert re.findall(r"menuentry 'Linux (\S+)'", cfg) == ["6.1.0-57-amd64", "6.1.0-9-amd64"]
