"""The one owner of the /etc/xen layout: NAME.cfg (rendered, and its vif line read back) and
the /etc/xen/auto links that xendomains starts at boot.

xl's config format has no serializer, so a cfg is a template; every value is checked first to be
one xl reads back as it was meant (no quotes, commas, newlines where they would end a field).
"""

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import jinja2

XEN_DIR = "/etc/xen"
AUTO_DIR = "/etc/xen/auto"


def cfg_path(root: Path, name: str) -> Path:
    """ROOT/etc/xen/NAME.cfg."""
    return Path(root) / XEN_DIR.lstrip("/") / f"{name}.cfg"


def link_path(root: Path, name: str) -> Path:
    """ROOT/etc/xen/auto/NAME.cfg: the autostart link."""
    return Path(root) / AUTO_DIR.lstrip("/") / f"{name}.cfg"


LINK_TARGET = "../{name}.cfg"  # relative, so the link holds under --root too

# xenconsoled keeps every guest's console here (host.xen turns it on): guest.console --log.
CONSOLE_LOG_DIR = "/var/log/xen/console"


def console_log_path(root: Path, name: str) -> Path:
    """ROOT/var/log/xen/console/guest-NAME.log, the file xenconsoled --log=guest writes."""
    return Path(root) / CONSOLE_LOG_DIR.lstrip("/") / f"guest-{name}.log"


# How a guest boots (guests.NAME.boot) and the loader file each mode names as its kernel: GRUB's
# Xen images from the Debian/Ubuntu package grub-xen-host. xl reads that file on the host when
# it creates the domain; pygrub is xl's own helper and needs no path here.
BOOTS = ("pvgrub", "pygrub", "pvh")
LOADER_PACKAGE = "grub-xen-host"
LOADERS = {
    "pvgrub": "/usr/lib/grub-xen/grub-x86_64-xen.bin",
    "pvh": "/usr/lib/grub-xen/grub-i386-xen_pvh.bin",
}
PVH_SINCE = (4, 10)  # type = "pvh" came with Xen 4.10; bionic's 4.9 has no PVH


def loader(boot: str) -> Optional[str]:
    """The file `boot` names as the guest's kernel, or None (pygrub)."""
    return LOADERS.get(boot)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_VDEV = re.compile(r"^xvd[a-z]+[0-9]*$")
_PATH = re.compile(r"^/[A-Za-z0-9_./+@:-]*$")  # no quotes, commas, spaces or newlines
ACTIONS = (
    "destroy",
    "restart",
    "preserve",
    "rename-restart",
    "coredump-destroy",
    "coredump-restart",
)


@dataclass(frozen=True)
class Disk:
    target: str  # a block device or an image file
    vdev: str  # the guest's name for it: xvda2 root, xvda1 swap, xvdc seed
    writable: bool = True
    cdrom: bool = False

    def spec(self) -> str:
        # xl's key=value disk syntax (xl-disk-configuration(5)); target last, as xl requires.
        parts = ["format=raw", f"vdev={self.vdev}", f"access={'rw' if self.writable else 'ro'}"]
        if self.cdrom:
            parts.append("devtype=cdrom")
        parts.append(f"target={self.target}")
        return ", ".join(parts)


@dataclass(frozen=True)
class XlConfig:
    name: str
    memory_mib: int
    vcpus: int
    disks: Tuple[Disk, ...]  # the root filesystem first: pygrub boots from the first disk
    ip: ipaddress.IPv4Address
    mac: str
    bridge: str
    boot: str = "pvgrub"
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "restart"


def problems(cfg: XlConfig) -> List[str]:
    """What would make `cfg` render into something xl misreads; empty when it is fine."""
    found = []
    if not _NAME.match(cfg.name):
        found.append(f"name {cfg.name!r} is not a domain name xl accepts")
    if cfg.memory_mib < 32:
        found.append(f"memory {cfg.memory_mib} MiB is below what a PV guest boots with")
    if cfg.vcpus < 1:
        found.append(f"vcpus {cfg.vcpus} must be at least 1")
    if not cfg.disks:
        found.append("there is no disk")
    for disk in cfg.disks:
        if not _PATH.match(disk.target):
            found.append(f"disk target {disk.target!r} is not a plain absolute path")
        if not _VDEV.match(disk.vdev):
            found.append(f"disk vdev {disk.vdev!r} is not a Xen virtual device name")
    if not _MAC.match(cfg.mac):
        found.append(f"mac {cfg.mac!r} is not a lower-case MAC address")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$", cfg.bridge):
        found.append(f"bridge {cfg.bridge!r} is not an interface name")
    if cfg.boot not in BOOTS:
        found.append(f"boot {cfg.boot!r} is not one of {', '.join(BOOTS)}")
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        if getattr(cfg, key) not in ACTIONS:
            found.append(f"{key} {getattr(cfg, key)!r} is not one of {', '.join(ACTIONS)}")
    return found


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


def render(cfg: XlConfig) -> str:
    found = problems(cfg)
    if found:
        raise ValueError("; ".join(found))
    return _ENV.get_template("xl.cfg.j2").render(
        name=cfg.name,
        memory=cfg.memory_mib,
        vcpus=cfg.vcpus,
        disks=[d.spec() for d in cfg.disks],
        vif=f"ip={cfg.ip},mac={cfg.mac},bridge={cfg.bridge}",
        boot=cfg.boot,
        kernel=loader(cfg.boot) or "",
        on_poweroff=cfg.on_poweroff,
        on_reboot=cfg.on_reboot,
        on_crash=cfg.on_crash,
    )


def vif_addresses(text: str) -> Tuple[List[str], List[str]]:
    """(ips, macs) named in the vif entries of an existing cfg (ours or hand-written)."""
    vifs = parse_vifs(text)
    ips = [ip for v in vifs for ip in v.get("ip", "").split()]
    macs = [v["mac"].lower() for v in vifs if v.get("mac")]
    return ips, macs


def other_cfgs(root: Path, name: str) -> Dict[str, str]:
    """{guest name: cfg text} of the other guests' configs in ROOT/etc/xen (ours or hand-made)."""
    found = {}
    xen = Path(root) / XEN_DIR.lstrip("/")
    if xen.is_dir():
        for path in sorted(xen.glob("*.cfg")):
            if path.stem != name and path.is_file():
                found[path.stem] = path.read_text(errors="replace")
    return found


@dataclass(frozen=True)
class Autostart:
    on: bool
    note: str  # 'yes', 'no', or why not/how


def autostart(root: Path, name: str) -> Autostart:
    """Whether ROOT/etc/xen/auto/NAME.cfg links to ROOT/etc/xen/NAME.cfg (xendomains starts it at boot).

    The link may point at /etc/xen/NAME.cfg as on the host itself, or be relative.
    """
    link = link_path(root, name)
    cfg = os.path.normpath(str(cfg_path(root, name)))
    if not link.is_symlink():
        if link.is_file():
            return Autostart(True, "yes (a copy in /etc/xen/auto, not a link)")
        return Autostart(False, "no")
    target = os.readlink(str(link))
    if os.path.isabs(target):
        candidates = [target, str(root / target.lstrip("/"))]
    else:
        candidates = [str(link.parent / target)]
    if any(os.path.normpath(c) == cfg for c in candidates):
        if not os.path.isfile(cfg):
            return Autostart(False, f"no (the link points to {target}, which is missing)")
        return Autostart(True, "yes")
    return Autostart(False, f"no (the link points to {target})")


_VIF = re.compile(r"^\s*vif\s*=\s*\[(.*?)\]", re.S | re.M)
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def parse_vifs(cfg_text: str) -> List[Dict[str, str]]:
    """The `vif = ['ip=...,mac=...,bridge=...']` entries of an xl.cfg, as dicts."""
    match = _VIF.search(cfg_text)
    if not match:
        return []
    vifs = []
    for single, double in _QUOTED.findall(match.group(1)):
        spec = single or double
        vifs.append(
            {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in spec.split(",")) if k}
        )
    return vifs


def read_cfgs(root: Path, names: Sequence[str]) -> Dict[str, str]:
    """The text of ROOT/etc/xen/NAME.cfg for the names that have one."""
    found = {}
    for name in names:
        path = cfg_path(root, name)
        if path.is_file():
            found[name] = path.read_text(errors="replace")
    return found


def autostart_names(root: Path) -> List[str]:
    """The guests linked in ROOT/etc/xen/auto."""
    auto = Path(root) / AUTO_DIR.lstrip("/")
    return sorted(p.name[: -len(".cfg")] for p in auto.glob("*.cfg")) if auto.is_dir() else []


_DISK = re.compile(r"^\s*disk\s*=\s*\[(.*?)\]", re.S | re.M)


def parse_disks(cfg_text: str) -> List[Dict[str, str]]:
    """The `disk = [...]` entries of an xl.cfg as dicts: the key=value syntax ours uses, and the
    positional 'TARGET,FORMAT,VDEV,ACCESS' one (xl-disk-configuration(5)) hand-made ones may."""
    match = _DISK.search(cfg_text)
    if not match:
        return []
    disks = []
    for single, double in _QUOTED.findall(match.group(1)):
        spec = single or double
        parts = [p.strip() for p in spec.split(",")]
        if all("=" in p for p in parts if p):
            disks.append({k.strip(): v.strip() for k, _, v in (p.partition("=") for p in parts)})
        else:  # positional: target, format, vdev, access
            keys = ("target", "format", "vdev", "access")
            disks.append({k: v for k, v in zip(keys, parts) if v})
    return disks


def cfg_boot(cfg_text: str) -> str:
    """How a cfg boots: pygrub (a bootloader line), pvh, pvgrub (GRUB's Xen image as kernel)."""
    if re.search(r"^\s*bootloader\s*=", cfg_text, re.M):
        return "pygrub"
    if re.search(r"""^\s*type\s*=\s*["']pvh["']""", cfg_text, re.M):
        return "pvh"
    kernel = re.search(r"""^\s*kernel\s*=\s*["']([^"']*)["']""", cfg_text, re.M)
    if kernel and "grub" in kernel.group(1).rsplit("/", 1)[-1]:
        return "pvgrub"
    return f"kernel {kernel.group(1)}" if kernel else "-"


def set_autostart(runner, root: Path, name: str, on: bool) -> bool:
    """Make /etc/xen/auto/NAME.cfg (under `root`) link to ../NAME.cfg, or remove it; whether that
    changed anything. A link somewhere else, or a copy, is replaced by ours (--on) or removed
    (--off): xendomains would start whatever it names."""
    link = link_path(root, name)
    present = link.is_symlink() or link.exists()
    good = present and link.is_symlink() and os.readlink(str(link)) == LINK_TARGET.format(name=name)
    if on and good:
        return False
    if not on and not present:
        return False
    if present:
        old_target = os.readlink(str(link)) if link.is_symlink() else None
        old_bytes = None if link.is_symlink() else link.read_bytes()

        def restore() -> None:
            if old_target is not None:
                link.symlink_to(old_target)
            else:
                link.write_bytes(old_bytes or b"")

        runner.change(f"remove {link}", link.unlink, restore)
    if on:
        target = LINK_TARGET.format(name=name)
        made = not link.parent.is_dir()

        def make() -> None:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)

        def undo() -> None:
            link.unlink()
            if made and not any(link.parent.iterdir()):
                link.parent.rmdir()

        runner.change(f"link {link} -> {target}", make, undo)
    return True
