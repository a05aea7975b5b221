"""lab.rehearse's host disk: an installed Ubuntu 18.04 disk image, laid out as the preseed lays out
the real one, booted later by the VM's BIOS through its own GRUB; and the install's late setup.

`base_disk` builds (once per set of inputs, cached) what the installer leaves before its
late_command: an msdos label with / (ext4, bootable), swap and the placeholder partition that
takes the rest (pxe/partition_plan.py), the OS with the packages the preseed installs, the admin
user as user-setup makes it, GRUB in the MBR booting the plain kernel on a serial console, and
the Xen packages host.xen will install already in apt's cache (the VM reaches no mirror).
`install` copies it and runs the preseed's late setup in the copy, as late_command's
`in-target sh /tmp/xenlab-setup.sh` does, with its network in the rehearsal's namespace.

This machine's kernel parses no partition tables and runs no udev (see
../shared/recipes/bionic-xen49-in-qemu.md): every partition is a loop device of its own over
its offset, and every command that touches the disk runs in a private mount and PID namespace
whose /dev is a small tmpfs holding only the disk's nodes, named as in the VM (/dev/vda,
/dev/vda1, ...). So nothing can write to this machine's own disks by mistake (grub-pc's
scripts probe devices), GRUB sees neutral names and /dev/disk/by-uuid, and every mount is gone
with the namespace, also when a command fails.
"""

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from pipeline import debootstrap, ubuntu_keyring, units
from pipeline.chroot import cache_key, chroot_command
from pipeline.config import HostConfig, InstallConfig
from pipeline.errors import Failed
from pipeline.guest import xen_cfg
from pipeline.host import xen
from pipeline.runner import checked, run_checked
from pxe import partition_plan, preseed, profiles, wheelhouse

# Bump when the build below changes what a disk holds: every cached disk is then rebuilt.
RECIPE = "rehearsal-disk-2"
IMAGE = "disk.img"
META = "disk.json"
# Where the preseed's late_command puts the setup script before `in-target sh` runs it.
SETUP_IN_TARGET = "/tmp/xenlab-setup.sh"
# The file d-i's netcfg writes on Ubuntu, and the one host.network owns afterwards.
NETPLAN_FILE = HostConfig.model_fields["netplan_file"].default
GRUB_CONSOLE_FILE = "/etc/default/grub.d/10-xenlab-console.cfg"  # sorts before xen.cfg, xenlab.cfg
ARCHIVES = "/var/cache/apt/archives"
GRUB_ROOT_NODE = "/dev/xenlab-root"  # / while GRUB is installed (see _make_image)
RESOLV_LINK = "../run/systemd/resolve/stub-resolv.conf"  # an installed bionic's resolv.conf
DEBCONF = "/tmp/xenlab-debconf"  # debconf answers for the build, removed after use
TAIL = 40  # lines of a failed command's output shown
TYPES = {"/": "83", "swap": "82"}
PLACEHOLDER = "placeholder"


def _silent(_: str) -> None:
    pass


# --- profiles -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskProfile:
    """What a rehearsal host disk of one install profile (pxe/profiles.py's names) is made of."""

    name: str
    suite: str  # what debootstrap installs
    components: Tuple[str, ...]
    # the installed system's sources.list, as the installer leaves it: suites on the mirror, and
    # the security suite on the security mirror (Debian's), else on the mirror too (Ubuntu's)
    apt_suites: Tuple[str, ...]
    security_suite: str
    # The kernel: meta packages, then packages named after the release they installed
    # ({release} = uname -r), e.g. the modules that carry xen-blkback.
    kernel: Tuple[str, ...]
    kernel_extra: Tuple[str, ...]
    packages: Tuple[str, ...]  # what every disk of the profile has, besides the install's own
    # (cache dir, mirror, say) -> the archive keyring debootstrap checks with; None: the host's
    keyring: Optional[Callable[..., Path]] = None

    def mirror(self, install: InstallConfig) -> str:
        """The installer's mirror (install.mirror or the profile's default): the disk's too."""
        return profiles.get(self.name).mirror(install)

    def sources_list(self, install: InstallConfig) -> str:
        mirror = self.mirror(install)
        security = profiles.get(self.name).security_mirror(install) or mirror
        components = " ".join(self.components)
        lines = [f"deb {mirror} {suite} {components}\n" for suite in self.apt_suites]
        return "".join(lines) + f"deb {security} {self.security_suite} {components}\n"

    def xen_packages(self) -> Tuple[str, ...]:
        """What host.xen will `apt-get install` on the host: downloaded into apt's cache."""
        return (xen.PACKAGES[self.suite], xen_cfg.LOADER_PACKAGE)

    def all_packages(self, install: InstallConfig) -> List[str]:
        """The disk's packages: the profile's, the late setup's Python (so it skips apt) and the
        preseed's pkgsel/include; each once, in order."""
        wanted = list(self.kernel) + list(self.packages)
        wanted += wheelhouse.target_for(self.name).apt_packages
        wanted += preseed.packages(install)
        return list(dict.fromkeys(wanted))


# What a disk of every profile has: boot (GRUB on the MBR, its menu titled by lsb_release), the
# uplink (netplan), sshd and sudo for the admin.
BASE_PACKAGES = (
    "systemd-sysv", "udev", "kmod", "initramfs-tools", "e2fsprogs", "dbus", "tzdata", "iproute2",
    "iputils-ping", "procps", "grub-pc", "lsb-release", "netplan.io", "openssh-server", "sudo",
)  # fmt: skip

PROFILES: Dict[str, DiskProfile] = {
    "ubuntu-18.04": DiskProfile(
        name="ubuntu-18.04",
        suite="bionic",
        components=("main", "universe"),
        apt_suites=("bionic", "bionic-updates"),
        security_suite="bionic-security",
        # linux-image-virtual lacks xen-blkback (dom0 serves guest disks with it); the release's
        # linux-modules-extra has it, without linux-image-generic's firmware.
        kernel=("linux-image-virtual",),
        kernel_extra=("linux-modules-extra-{release}",),
        packages=BASE_PACKAGES,
        keyring=ubuntu_keyring.archive_keyring,
    ),
    # Debian 12 with Xen 4.17: Debian's kernel has xen-blkback; netplan (with networkd) takes the
    # uplink's configuration as on Ubuntu, systemd-resolved gives the same resolv.conf.
    "debian-12": DiskProfile(
        name="debian-12",
        suite="bookworm",
        components=("main",),
        apt_suites=("bookworm", "bookworm-updates"),
        security_suite="bookworm-security",
        kernel=("linux-image-amd64",),
        kernel_extra=(),
        # sfdisk (the late setup) is in fdisk on Debian 12, an important-priority package d-i installs
        packages=BASE_PACKAGES + ("systemd-resolved", "fdisk"),
    ),
}


def profile_for(name: str) -> DiskProfile:
    if name not in PROFILES:
        raise Failed(f"lab.rehearse has no host disk for profile {name!r} (has {sorted(PROFILES)})")
    return PROFILES[name]


# --- the layout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskPartition:
    number: int  # 1 = /dev/vda1
    role: str  # "/", "swap", "placeholder"
    start: int  # bytes from the disk's start
    size: int  # bytes
    type: str  # the msdos type id, e.g. "83"
    bootable: bool = False


def _align_up(value: int, step: int) -> int:
    return -(-value // step) * step


def layout(install: InstallConfig) -> Tuple[DiskPartition, ...]:
    """The partitions partman makes from the plan on an msdos label (BIOS: the plan's ESP is for
    GPT labels only): each of the size asked, MiB-aligned, then the placeholder to the end."""
    plan = partition_plan.plan(install)
    parts: List[DiskPartition] = []
    start = partition_plan.LABEL
    for part in plan.partitions:
        if part.gpt_only:
            continue
        # partman's N MB is N*10^6+1 bytes; aligned, that stays within the plan's at_most
        size = _align_up(part.mb * partition_plan.MB + 1, partition_plan.ALIGN)
        parts.append(
            DiskPartition(
                len(parts) + 1, part.role, start, size, TYPES[part.role], part.role == "/"
            )
        )
        start += size
    end = install.disk_size // partition_plan.ALIGN * partition_plan.ALIGN
    parts.append(DiskPartition(len(parts) + 1, PLACEHOLDER, start, end - start, "83"))
    return tuple(parts)


def sfdisk_script(parts: Sequence[DiskPartition]) -> str:
    lines = ["label: dos", "unit: sectors", ""]
    for p in parts:
        line = f"start={p.start // 512}, size={p.size // 512}, type={p.type}"
        lines.append(line + (", bootable" if p.bootable else ""))
    return "\n".join(lines) + "\n"


def node(disk: str, number: int) -> str:
    """The partition's device name: /dev/vda1, /dev/nvme0n1p1."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


# --- what base_disk and install return ----------------------------------------------------------
@dataclass(frozen=True)
class BaseDisk:
    profile: str
    path: Path  # the raw, sparse image
    disk: str  # the disk's name in the VM (install.disk), e.g. /dev/vda
    size: int
    partitions: Tuple[DiskPartition, ...]
    root_uuid: str
    swap_uuid: str
    kernel: str  # the release the first boot runs, e.g. 4.15.0-213-generic
    host_keys: Tuple[str, ...]  # dom0's ssh host public keys, "ssh-ed25519 AAAA... root@xenhost"
    xen_debs: Tuple[str, ...]  # in apt's cache, for host.xen
    xen_debs_bytes: int
    build_seconds: float  # how long the build took (when it was cached: that first build's)

    def partition(self, role: str) -> DiskPartition:
        return next(p for p in self.partitions if p.role == role)


@dataclass(frozen=True)
class Installed:
    path: Path
    host_keys: Tuple[str, ...]
    output: str  # the setup script's stdout and stderr
    seconds: float


def _save(meta: Path, disk: BaseDisk) -> None:
    data = asdict(disk)
    data["path"] = disk.path.name  # relative: the entry is renamed into place after the build
    meta.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _load(entry: Path) -> BaseDisk:
    data = json.loads((entry / META).read_text())
    data["path"] = entry / data["path"]
    data["partitions"] = tuple(DiskPartition(**p) for p in data["partitions"])
    for key in ("host_keys", "xen_debs"):
        data[key] = tuple(data[key])
    return BaseDisk(**data)


# --- loop devices and the private namespace ------------------------------------------------------
def _attach(image: Path, start: int = 0, size: Optional[int] = None) -> str:
    argv = ["losetup", "--find", "--show"]
    if size is not None:
        argv += ["--offset", str(start), "--sizelimit", str(size)]
    return run_checked(argv + [str(image)]).stdout.strip()


@contextmanager
def loops(image: Path, parts: Sequence[DiskPartition]) -> Iterator[Tuple[str, List[str]]]:
    """(whole-disk loop, one loop per partition in `parts`' order); all detached at the end."""
    attached: List[str] = []
    try:
        attached.append(_attach(image))
        for p in parts:
            attached.append(_attach(image, p.start, p.size))
        yield attached[0], attached[1:]
    finally:
        for dev in reversed(attached):
            subprocess.run(["losetup", "--detach", dev], capture_output=True)


def _dev_numbers(dev: str) -> Tuple[int, int]:
    rdev = os.stat(dev).st_rdev
    return os.major(rdev), os.minor(rdev)


# The character devices a chroot's programs expect; nothing else of this machine's /dev.
_CHAR_NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
               "urandom": (1, 9), "tty": (5, 0)}  # fmt: skip


def _private_dev(blocks: Mapping[str, str], uuids: Mapping[str, str]) -> List[str]:
    """Shell steps that put a tmpfs over /dev (the namespace's own) holding the character devices,
    the block nodes {name in the VM: loop device} and /dev/disk/by-uuid/{uuid: name}."""
    q = shlex.quote
    steps = ["mount -t tmpfs -o mode=0755,size=1m xenlab-dev /dev"]
    for name, (major, minor) in _CHAR_NODES.items():
        steps.append(f"mknod -m 666 /dev/{name} c {major} {minor}")
    steps += [
        "mkdir -p /dev/pts /dev/shm /dev/disk/by-uuid",
        "mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts",
        "ln -s pts/ptmx /dev/ptmx",
        "ln -s /proc/self/fd /dev/fd",
    ]
    for i, std in enumerate(("stdin", "stdout", "stderr")):
        steps.append(f"ln -s /proc/self/fd/{i} /dev/{std}")
    for name, loop in blocks.items():
        major, minor = _dev_numbers(loop)
        steps.append(f"mknod -m 660 {q(name)} b {major} {minor}")
    for value, name in uuids.items():
        steps.append(f"ln -s {q(name)} {q('/dev/disk/by-uuid/' + value)}")
    return steps


def namespaced(
    root: Path,
    commands: Sequence[Sequence[str]],
    blocks: Mapping[str, str] = {},
    uuids: Mapping[str, str] = {},
    mount: Optional[str] = None,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
    netns: Optional[str] = None,
    env: Mapping[str, str] = {},
) -> List[str]:
    """The command line that runs each of `commands` chrooted into `root`, in a private mount and
    PID namespace with the private /dev of `blocks` and `uuids` (see _private_dev), /proc and a
    sysfs of the chroot's network namespace. `mount`: the node (a key of `blocks`) mounted on
    `root` first. `before`/`after`: shell steps around the commands (outside the chroot).
    `netns`: the network namespace the whole runs in (`ip netns exec`)."""
    q = shlex.quote
    r = str(root)
    steps = ["set -e"] + _private_dev(blocks, uuids)
    if mount:
        steps.append(f"mount {q(mount)} {q(r)}")
    steps += list(before)
    steps += [
        f"mount --rbind /dev {q(r + '/dev')}",
        f"mount -t proc proc {q(r + '/proc')}",
        f"mount -t sysfs sysfs {q(r + '/sys')}",
    ]
    steps += [chroot_command(root, argv, env) for argv in commands]
    steps += list(after)
    # Unmounted here so the data is on the image when this returns (the namespace would only
    # drop the mounts); a failure above leaves that to the namespace's end.
    steps.append(
        f"umount -R {q(r)}"
        if mount
        else f"umount -R {q(r + '/dev')} {q(r + '/proc')} {q(r + '/sys')}"
    )
    line = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            "sh", "-c", "\n".join(steps)]  # fmt: skip
    return (["ip", "netns", "exec", netns] if netns else []) + line


def _run(argv: Sequence[str], what: str, timeout: Optional[float] = None) -> str:
    """Run `argv` (stdout and stderr together); its output, or Failed with its tail."""
    proc = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )  # fmt: skip
    tail = "\n".join(proc.stdout.strip().splitlines()[-TAIL:])
    checked(subprocess.CompletedProcess(argv, proc.returncode, tail), what)
    return proc.stdout


def _apt_env() -> Dict[str, str]:
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    env.update({k: os.environ[k] for k in xen.PASS_ENV if k in os.environ})
    return env


# --- building the base disk ---------------------------------------------------------------------
def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    dest.chmod(mode)


def _replace_link(root: Path, path: str, target: str) -> None:
    dest = root / path.lstrip("/")
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(target)


def _fstab(disk: str, parts: Sequence[DiskPartition], root_uuid: str, swap_uuid: str) -> str:
    """/etc/fstab as d-i writes it: UUIDs, with the device each was on during the install."""
    by_role = {p.role: p for p in parts}
    return (
        "# /etc/fstab: static file system information.\n"
        "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
        f"# / was on {node(disk, by_role['/'].number)} during installation\n"
        f"UUID={root_uuid} /               ext4    errors=remount-ro 0       1\n"
        f"# swap was on {node(disk, by_role['swap'].number)} during installation\n"
        f"UUID={swap_uuid} none            swap    sw              0       0\n"
    )


def _hosts(install: InstallConfig) -> str:
    fqdn = f"{install.hostname}.{install.domain}" if install.domain else install.hostname
    return (
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{fqdn}\t{install.hostname}\n\n"
        "# The following lines are desirable for IPv6 capable hosts\n"
        "::1     localhost ip6-localhost ip6-loopback\n"
        "ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
    )


def grub_console() -> str:
    """The GRUB drop-in an installer given console=ttyS0,115200n8 amounts to: GRUB and Linux on the
    serial port, a visible menu; under Xen (once host.xen installed it), Xen on com1 and dom0 on
    hvc0. host.xen's xenlab.cfg, read after this, appends dom0_mem to GRUB_CMDLINE_XEN_DEFAULT."""
    return (
        "# xenlab lab.rehearse: the serial console (what console=ttyS0,115200n8 gives an install)\n"
        'GRUB_TERMINAL="serial console"\n'
        'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
        "GRUB_TIMEOUT_STYLE=menu\n"
        "GRUB_TIMEOUT=3\n"
        "unset GRUB_HIDDEN_TIMEOUT GRUB_HIDDEN_TIMEOUT_QUIET\n"
        "# after an unclean stop Ubuntu's GRUB would wait 30 s at the menu (recordfail)\n"
        "GRUB_RECORDFAIL_TIMEOUT=3\n"
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"\n'
        'GRUB_CMDLINE_XEN_DEFAULT="console=com1 com1=115200,8n1"\n'
        # dom0 (Linux under Xen): on Xen's console only; com1 is Xen's. _REPLACE, not
        # _REPLACE_DEFAULT: the console= above are in GRUB_CMDLINE_LINUX, which only _REPLACE
        # takes out of the Xen entries.
        'GRUB_CMDLINE_LINUX_XEN_REPLACE="console=hvc0 earlyprintk=xen"\n'
    )


def _use_host_resolver(tree: Path) -> None:
    """apt reaches the mirror with this machine's resolver while building (_finish links
    resolv.conf back). Again after each install: systemd-resolved's links it to its stub,
    which no daemon answers in the chroot."""
    resolv = tree / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", str(resolv))


def _configure(tree: Path, install: InstallConfig, profile: DiskProfile,
               parts: Sequence[DiskPartition], uuids: Tuple[str, str]) -> None:  # fmt: skip
    """The files the installer writes before and around its package installs."""
    root_uuid, swap_uuid = uuids
    _write(tree, "/etc/apt/sources.list", profile.sources_list(install))
    _write(
        tree,
        xen.POLICY_RC,
        "#!/bin/sh\n# xenlab: no daemon starts while building\nexit 101\n",
        0o755,
    )
    _use_host_resolver(tree)
    _write(tree, "/etc/fstab", _fstab(install.disk, parts, root_uuid, swap_uuid))
    # d-i's resume setting: without one, the initramfs looks for a resume device of its own
    _write(tree, "/etc/initramfs-tools/conf.d/resume", f"RESUME=UUID={swap_uuid}\n")
    _write(tree, "/etc/hostname", install.hostname + "\n")
    _write(tree, "/etc/hosts", _hosts(install))
    _write(tree, "/etc/timezone", install.timezone + "\n")
    _replace_link(tree, "/etc/localtime", f"/usr/share/zoneinfo/{install.timezone}")
    _write(tree, "/etc/default/locale", "LANG=C.UTF-8\n")
    _write(tree, GRUB_CONSOLE_FILE, grub_console())
    # grub-pc's scripts must not pick an install device (the namespace has no disk anyway);
    # grub-install runs on the disk's own node below.
    _write(
        tree,
        DEBCONF,
        "grub-pc grub-pc/install_devices multiselect \n"
        "grub-pc grub-pc/install_devices_empty boolean true\n",
    )


def _install_packages(tree: Path, profile: DiskProfile, install: InstallConfig, say) -> str:
    """apt in the tree: the disk's packages, the kernel's extra modules, the admin user; then the
    Xen packages downloaded only. Returns the kernel release."""
    env = _apt_env()
    apt = ["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0"]
    packages = profile.all_packages(install)
    say(f"installing {len(packages)} packages into the host disk's tree (apt, a few minutes)")
    _run(namespaced(tree, [["debconf-set-selections", DEBCONF],
                           apt + ["update"],
                           apt + ["upgrade"],  # the preseed's pkgsel/upgrade safe-upgrade
                           apt + ["install", "--no-install-recommends", *packages]], env=env),
         "apt-get install in the host disk's tree", timeout=3600)  # fmt: skip
    _use_host_resolver(tree)
    release = kernel_release(tree)
    extra = [p.format(release=release) for p in profile.kernel_extra]
    user = ["useradd", "-m", "-s", "/bin/bash", "-c", install.user, "-G", "sudo",
            "-p", install.password_hash or preseed.LOCKED, install.user]  # fmt: skip
    # Only the Xen packages in apt's cache: the debs of what is installed go (apt-get clean
    # first), and host.xen's own `apt-get install` (recommends included) finds these offline.
    say(f"kernel {release}; downloading {' '.join(profile.xen_packages())} into apt's cache")
    _run(namespaced(tree, [apt + ["install", "--no-install-recommends", *extra], user,
                           ["apt-get", "clean"],
                           apt + ["install", "--download-only", *profile.xen_packages()]],
                    env=env), "apt-get in the host disk's tree", timeout=3600)  # fmt: skip
    return release


def kernel_release(tree: Path) -> str:
    found = sorted(p.name for p in (tree / "lib/modules").iterdir())
    if len(found) != 1:
        raise Failed(f"the host disk's tree has {len(found)} kernels ({found}), not one")
    return found[0]


def _finish(tree: Path, install: InstallConfig) -> None:
    """What the installer leaves once its packages are in: no build-time files."""
    for path in (xen.POLICY_RC, DEBCONF):
        (tree / path.lstrip("/")).unlink()
    _replace_link(tree, "/etc/resolv.conf", RESOLV_LINK)
    # grub-pc's later upgrades install to the disk, as d-i's grub-installer records it
    _write(tree, DEBCONF, f"grub-pc grub-pc/install_devices multiselect {install.disk}\n")


def _host_keys(tree: Path) -> Tuple[str, ...]:
    keys = tuple(
        p.read_text().strip() for p in sorted((tree / "etc/ssh").glob("ssh_host_*_key.pub"))
    )
    if not keys:
        raise Failed("openssh-server made no host keys in the host disk's tree")
    return keys


def _make_image(image: Path, tree: Path, install: InstallConfig,
                parts: Sequence[DiskPartition], uuids: Tuple[str, str], say) -> None:  # fmt: skip
    """The sparse disk: the label, the filesystems (the release's own mkfs, as the installer's),
    the tree copied onto /, GRUB in the MBR and grub.cfg made on the disk."""
    root_uuid, swap_uuid = uuids
    with open(str(image), "wb") as fh:
        fh.truncate(install.disk_size)
    run_checked(["sfdisk", "--quiet", str(image)], input=sfdisk_script(parts))
    by_role = {p.role: p for p in parts}
    with loops(image, parts) as (whole, part_loops):
        blocks = {install.disk: whole}
        blocks.update({node(install.disk, p.number): dev for p, dev in zip(parts, part_loops)})
        root_dev = node(install.disk, by_role["/"].number)
        swap_dev = node(install.disk, by_role["swap"].number)
        say(f"making the filesystems and copying the tree onto {root_dev} of the disk image")
        _run(namespaced(tree, [["mkfs.ext4", "-q", "-F", "-U", root_uuid, root_dev],
                               ["mkswap", "-U", swap_uuid, swap_dev]], blocks=blocks),
             "mkfs on the host disk")  # fmt: skip
        # GRUB's tools take a name such as vda1 for a partition of vda and then look for it in
        # sysfs, where a loop device has none: / goes through a neutral name (a disk to GRUB, so
        # grub-install embeds a search by UUID, which part_msdos lets it find at boot).
        grub_blocks = {install.disk: whole, GRUB_ROOT_NODE: blocks[root_dev],
                       swap_dev: blocks[swap_dev]}  # fmt: skip
        grub_uuids = {root_uuid: GRUB_ROOT_NODE, swap_uuid: swap_dev}
        with tempfile.TemporaryDirectory(prefix="xenlab-disk-") as mnt:
            q = shlex.quote
            copy = [f"cp -a {q(str(tree))}/. {q(mnt)}/"]
            grub = [
                ["debconf-set-selections", DEBCONF],
                ["rm", "-f", DEBCONF],
                # again, now that fstab's devices exist: the fsck hook found no root device in
                # the tree and left fsck.ext4 out
                ["update-initramfs", "-u", "-k", "all"],
                ["grub-install", "--target=i386-pc", "--modules=part_msdos",
                 "--boot-directory=/boot", install.disk],
                ["update-grub"],
            ]  # fmt: skip
            say("installing GRUB on the disk image")
            _run(namespaced(Path(mnt), grub, blocks=grub_blocks, uuids=grub_uuids,
                            mount=GRUB_ROOT_NODE, before=copy), "GRUB on the host disk",
                 timeout=1800)  # fmt: skip


def _disk_bytes(path: Path) -> int:
    return os.stat(str(path)).st_blocks * 512


def _build(tmp: Path, site, profile: DiskProfile, root: Path, say) -> None:
    install = site.install
    started = time.monotonic()
    parts = layout(install)
    uuids = (str(uuid.uuid4()), str(uuid.uuid4()))
    tree = tmp / "tree"
    say(f"copying the {profile.suite} tree")
    run_checked(["cp", "-a", "--reflink=auto", str(root), str(tree)])
    try:
        _configure(tree, install, profile, parts, uuids)
        release = _install_packages(tree, profile, install, say)
        archives = tree / ARCHIVES.lstrip("/")
        debs = {d.name: d.stat().st_size for d in sorted(archives.glob("*.deb"))}
        _finish(tree, install)
        keys = _host_keys(tree)
        image = tmp / IMAGE
        _make_image(image, tree, install, parts, uuids, say)
    finally:
        shutil.rmtree(str(tree), ignore_errors=True)
    disk = BaseDisk(
        profile=profile.name, path=image, disk=install.disk, size=install.disk_size,
        partitions=parts, root_uuid=uuids[0], swap_uuid=uuids[1], kernel=release,
        host_keys=keys, xen_debs=tuple(debs), xen_debs_bytes=sum(debs.values()),
        build_seconds=round(time.monotonic() - started, 1),
    )  # fmt: skip
    _save(tmp / META, disk)
    say(
        f"host disk built in {disk.build_seconds:.0f} s: {units.human(_disk_bytes(image))} of data,"
        f" {len(debs)} Xen debs ({units.human(disk.xen_debs_bytes)}) in apt's cache"
    )


def disk_key(site, profile: DiskProfile, root: Path) -> str:
    """Every input of the disk: a change to any of them makes another cache entry."""
    install = site.install
    return cache_key(
        RECIPE, profile.name, root.parent.name, profile.sources_list(install),
        profile.all_packages(install),
        profile.xen_packages(), [asdict(p) for p in layout(install)], install.disk,
        install.user, install.password_hash, install.hostname, install.domain,
        install.timezone, grub_console(),
    )  # fmt: skip


def base_disk(site, say: Callable[[str], None] = _silent) -> BaseDisk:
    """The installed host disk of site.install (cached under site.rehearse.cache_dir/disks)."""
    install = site.install
    profile = profile_for(install.profile)
    cache = Path(site.rehearse.cache_dir)
    mirror = profile.mirror(install)
    keyring = profile.keyring(cache / "keyrings", mirror, say) if profile.keyring else None
    say(f"{profile.suite} from {mirror} (debootstrap, cached)")
    root = debootstrap.cached_root(
        profile.suite, mirror, cache / "roots", components=profile.components, keyring=keyring
    )
    entry = cache / "disks" / f"{profile.name}-{disk_key(site, profile, root)}"
    if (entry / META).is_file():
        say(f"host disk cached: {entry}")
    entry = debootstrap.cached_dir(entry, lambda tmp: _build(tmp, site, profile, root, say))
    return _load(entry)


# --- reading a disk, and the install's late setup -----------------------------------------------
def debugfs(image: Path, part: DiskPartition, request: str) -> str:
    """debugfs's answer to `request` (e.g. "cat /etc/hostname") on the ext4 of `part`: read-only,
    without mounting anything."""
    dev = _attach(image, part.start, part.size)
    try:
        return run_checked(["debugfs", "-R", request, dev]).stdout
    finally:
        subprocess.run(["losetup", "--detach", dev], capture_output=True)


def install(
    base: BaseDisk,
    dest: Path,
    setup_script: str,
    netns: str,
    uplink_netplan: str,
    say: Callable[[str], None] = _silent,
) -> Installed:
    """A copy of `base` at `dest` after the install's late setup: `uplink_netplan` written as d-i's
    netcfg writes it, then `setup_script` run as late_command's `in-target sh` runs it, its
    network being the namespace `netns`. Failed with the script's tail when it fails (`dest` is
    left for a look)."""
    started = time.monotonic()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    say(f"copying the host disk to {dest}")
    run_checked(["cp", "--sparse=always", "--reflink=auto", str(base.path), str(dest)])
    root = base.partition("/")
    root_dev = node(base.disk, root.number)
    with tempfile.TemporaryDirectory(prefix="xenlab-install-") as work:
        files = Path(work)
        (files / "netplan.yaml").write_text(uplink_netplan)
        (files / "setup.sh").write_text(setup_script)
        mnt = files / "root"
        mnt.mkdir()
        q = shlex.quote
        inside = q(str(mnt))
        policy = q(str(mnt) + xen.POLICY_RC)
        before = [
            f"install -m 600 {q(str(files / 'netplan.yaml'))} {inside}{NETPLAN_FILE}",
            f"install -m 644 {q(str(files / 'setup.sh'))} {inside}{SETUP_IN_TARGET}",
            # as d-i's in-target: no daemon starts from a package script
            f"printf '#!/bin/sh\\nexit 101\\n' >{policy}",
            f"chmod 755 {policy}",
        ]
        after = [f"rm -f {policy} {inside}{SETUP_IN_TARGET}"]
        with loops(dest, base.partitions) as (whole, part_loops):
            blocks = {base.disk: whole}
            blocks.update(
                {node(base.disk, p.number): d for p, d in zip(base.partitions, part_loops)}
            )
            say(f"running the install's late setup in {dest} (network: {netns})")
            argv = namespaced(mnt, [["sh", SETUP_IN_TARGET]], blocks=blocks, mount=root_dev,
                              before=before, after=after, netns=netns)  # fmt: skip
            output = _run(argv, "the install's late setup", timeout=1800)
    seconds = round(time.monotonic() - started, 1)
    say(f"late setup done in {seconds:.0f} s")
    return Installed(dest, base.host_keys, output, seconds)
