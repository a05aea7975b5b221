"""The site config: one validated model built from Invoke's config (invoke.yaml, -f, INVOKE_*) and flags.

Every error names the dotted field (and the flag when the value came from one) and the bad value.
"""

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from pipeline import subnet as subnet_math
from pipeline import units
from pipeline.errors import BadInput, Problem

IFNAMSIZ = 16  # the kernel's limit includes the trailing NUL
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_ifname(value: str) -> str:
    if len(value) > IFNAMSIZ - 1:
        raise ValueError(
            f"is {len(value)} characters; Linux interface names are at most {IFNAMSIZ - 1}"
        )
    if not _IFNAME.match(value):
        raise ValueError("is not an interface name (letters, digits, '_', '.', '-')")
    return value


def _absolute(value: str, suffix: str) -> str:
    if not value.startswith("/") or "\n" in value or "/../" in value + "/":
        raise ValueError("must be an absolute path without '..'")
    if not value.endswith(suffix):
        raise ValueError(f"must end in {suffix}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def size_field(default_unit: str = ""):
    """A validator turning '100G' or a bare number (in `default_unit`) into bytes."""

    def check(cls, value: Any) -> Optional[int]:
        if value in (None, ""):
            return None
        return units.parse_size(value, default_unit)

    return classmethod(check)


# --- host.storage (issue 3) -------------------------------------------------------------------
class StorageConfig(_Strict):
    # lvm: LVs in volume_group (made by host.storage on device); dir: image files under dir
    kind: Literal["lvm", "dir"] = "lvm"
    device: Optional[str] = None
    size: Optional[int] = None  # bytes; None = all of the largest free region
    volume_group: str = "VolumeGroupXen"
    dir: str = "/srv/xen"

    _size = field_validator("size", mode="before")(size_field())


# --- host.xen (issue 3) -----------------------------------------------------------------------
class XenConfig(_Strict):
    package: Optional[str] = None  # None = the hypervisor package of the host's release
    dom0_mem: int = 4096 * units.MiB  # bytes

    _dom0_mem = field_validator("dom0_mem", mode="before")(size_field("M"))


class HostConfig(_Strict):
    bridge: str = "xenbr0"
    subnet: ipaddress.IPv4Network
    address: Optional[ipaddress.IPv4Address] = None
    netplan_file: str = "/etc/netplan/01-netcfg.yaml"
    sysctl_file: str = "/etc/sysctl.d/60-xenlab-forwarding.conf"
    storage: StorageConfig = StorageConfig()
    xen: XenConfig = XenConfig()

    _bridge = field_validator("bridge")(check_ifname)

    @field_validator("subnet", mode="before")
    @classmethod
    def _subnet(cls, value: Any) -> ipaddress.IPv4Network:
        return subnet_math.parse_subnet(value)

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any, info: ValidationInfo) -> Optional[ipaddress.IPv4Address]:
        if value in (None, ""):
            return None
        address = subnet_math.parse_address(value)
        net = info.data.get("subnet")
        if net is not None:
            subnet_math.bridge_interface(net, address)
        return address

    @field_validator("netplan_file")
    @classmethod
    def _netplan(cls, value: str) -> str:
        return _absolute(value, ".yaml")

    @field_validator("sysctl_file")
    @classmethod
    def _sysctl(cls, value: str) -> str:
        return _absolute(value, ".conf")

    @property
    def bridge_interface(self) -> ipaddress.IPv4Interface:
        return subnet_math.bridge_interface(self.subnet, self.address)


# --- install.* and pxe.* (issue 4) ------------------------------------------------------------
class InstallConfig(_Strict):
    profile: Literal["ubuntu-18.04", "debian-12"] = "ubuntu-18.04"
    mac: Optional[str] = None
    disk: str = "/dev/sda"
    disk_size: int = 500 * units.GiB
    root_size: int = 20 * units.GiB
    swap_size: int = 8 * units.GiB
    keep_free: int = 200 * units.GiB
    user: str = "admin"
    ssh_authorized_keys: List[str] = []
    packages: List[str] = ["openssh-server", "neovim", "zsh", "lvm2"]

    _sizes = field_validator("disk_size", "root_size", "swap_size", "keep_free", mode="before")(
        size_field()
    )


class PxeConfig(_Strict):
    interface: Optional[str] = None
    mode: Literal["proxy", "dhcp"] = "proxy"
    dhcp_range: Optional[str] = None  # "FIRST-LAST", for mode dhcp
    http_port: int = 8080
    tftp_root: str = "/srv/xenlab/tftp"
    state_dir: str = "/var/lib/xenlab/pxe"


# --- images.* and guests.* (issue 5) -----------------------------------------------------------
class ImagesConfig(_Strict):
    cache_dir: str = "/var/cache/xenlab/images"
    mirror: Optional[str] = None  # None = the machine's apt sources
    security_mirror: Optional[str] = None


class GuestConfig(_Strict):
    memory: int = 1024 * units.MiB  # bytes
    vcpus: int = 1
    disk: int = 10 * units.GiB
    swap: int = 1 * units.GiB
    profile: Literal["ubuntu-18.04", "debian-12"] = "ubuntu-18.04"
    ip: Optional[ipaddress.IPv4Address] = None
    gateway: Optional[ipaddress.IPv4Address] = None  # None = the bridge address
    bridge: Optional[str] = None  # None = host.bridge
    autostart: bool = True
    ssh_authorized_keys: List[str] = []
    ssh_allow_from: List[str] = []

    _memory = field_validator("memory", mode="before")(size_field("M"))
    _volumes = field_validator("disk", "swap", mode="before")(size_field("G"))


class Site(_Strict):
    host: HostConfig
    install: InstallConfig = InstallConfig()
    pxe: PxeConfig = PxeConfig()
    images: ImagesConfig = ImagesConfig()
    guests: Dict[str, GuestConfig] = {}


# Sections of Invoke's config that belong to xenlab; the rest (run, tasks, sudo...) is Invoke's own.
SECTIONS = tuple(Site.model_fields)


def plain(obj: Any) -> Any:
    """Invoke's DataProxy (and any Mapping) to plain dicts, recursively."""
    if isinstance(obj, Mapping) or hasattr(obj, "_config"):
        return {k: plain(obj[k]) for k in obj}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def load_site(config: Mapping, flags: Optional[Dict[str, Any]] = None) -> Site:
    """Validate the xenlab sections of `config` with `flags` ({'host.subnet': ('--subnet', value)}) on top."""
    data = {k: plain(config[k]) for k in SECTIONS if k in config}
    from_flag = {}
    for dotted, (flag, value) in (flags or {}).items():
        if value is None:
            continue
        from_flag[dotted] = flag
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        raise BadInput.of([_problem(err, from_flag) for err in exc.errors()]) from None


def _problem(err: Dict[str, Any], from_flag: Dict[str, str]) -> Problem:
    field = ".".join(str(p) for p in err["loc"])
    if field in from_flag:
        field = f"{field} ({from_flag[field]})"
    kind = err["type"]
    if kind == "missing":
        return Problem(field, None, "is required")
    if kind == "extra_forbidden":
        return Problem(field, err["input"], "is not a known setting")
    reason = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
    return Problem(field, err["input"], reason)
