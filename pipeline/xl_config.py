"""/etc/xen/NAME.cfg for a PV guest booted by pygrub: rendered from checked values.

xl's config format has no serializer, so it is a template; every value is checked first to be
one xl reads back as it was meant (no quotes, commas, newlines where they would end a field).
"""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import jinja2

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
        on_poweroff=cfg.on_poweroff,
        on_reboot=cfg.on_reboot,
        on_crash=cfg.on_crash,
    )


def parse_vif(text: str) -> Tuple[List[str], List[str]]:
    """(ips, macs) named in the vif lines of an existing cfg (ours or hand-written)."""
    ips = re.findall(r"\bip=([0-9.]+)", text)
    macs = [m.lower() for m in re.findall(r"\bmac=([0-9A-Fa-f:]{17})", text)]
    return ips, macs
