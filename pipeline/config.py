"""The site config: one validated model built from Invoke's config (invoke.yaml, -f, INVOKE_*) and flags.

Every error names the dotted field (and the flag when the value came from one) and the bad value.
"""

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from pipeline import mac as macs
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

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Optional[str]:
        if value in (None, ""):
            return None
        if (
            not isinstance(value, str)
            or not re.match(r"^/dev/[A-Za-z0-9][A-Za-z0-9_./:-]*$", value)
            or "/../" in value + "/"
        ):
            raise ValueError("must be a block device path such as /dev/sdb or /dev/sdb2")
        return value

    @field_validator("volume_group")
    @classmethod
    def _volume_group(cls, value: str) -> str:
        # LVM's own rule for VG names (lvm(8), "Valid names")
        if (
            not re.match(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$", value)
            or value in (".", "..")
            or len(value) > 127
        ):
            raise ValueError(
                "is not an LVM name (letters, digits, '+', '_', '.', '-'; no leading '-')"
            )
        return value


# --- host.xen (issue 3) -----------------------------------------------------------------------
class XenConfig(_Strict):
    package: Optional[str] = None  # None = the hypervisor package of the host's release
    dom0_mem: int = 4096 * units.MiB  # bytes

    _dom0_mem = field_validator("dom0_mem", mode="before")(size_field("M"))

    @field_validator("dom0_mem")
    @classmethod
    def _dom0_mem_range(cls, value: int) -> int:
        # Xen's dom0_mem takes whole MiB here; below 512M a dom0 with udev and xl does not boot well.
        if value % units.MiB or value < 512 * units.MiB:
            raise ValueError("must be a whole number of MiB, at least 512M")
        return value

    @field_validator("package")
    @classmethod
    def _package(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.match(r"^[a-z0-9][a-z0-9+.-]+$", value):
            raise ValueError("is not a Debian package name")
        return value


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
# Values that go into the preseed and the boot menus (jinja2 templates): each is checked against
# a strict pattern here, so no template ever sees a quote, a space where none belongs or a newline.
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_LOCALE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?(\.UTF-8)?(@[a-z]+)?$")
_KEYMAP = re.compile(r"^[a-z]{2,8}([-_][a-z0-9]{1,12})?$")
_TIMEZONE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}$")
_MIRROR = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%+-]+)*/?$")
_SHELL = re.compile(r"^[a-z][a-z0-9-]*$")
_CRYPT = re.compile(r"^\$(1|2[aby]|5|6|y|gy|7)\$[A-Za-z0-9./$=,-]+$")
_TERM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$")
# One kernel argument: what GRUB, pxelinux and iPXE all pass through unquoted and unexpanded.
KERNEL_ARG = re.compile(r"^[A-Za-z0-9_./:,=@+-]+$")
_SSH_KEY = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( [\x21-\x7e][\x20-\x7e]*)?$"
)


def _matching(pattern: "re.Pattern", what: str):
    def check(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"is not {what}")
        return value

    return classmethod(check)


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
    locale: str = "en_US.UTF-8"
    keyboard: str = "us"
    timezone: str = "Etc/UTC"
    mirror: Optional[str] = None  # None = the profile's default (see pxe/profiles.py)
    installer_url: Optional[str] = None  # the netboot images directory; None = the profile's
    hostname: str = "xenhost"
    domain: str = "example.net"
    shell: str = "zsh"  # a package that installs /usr/bin/NAME or /bin/NAME
    password_hash: Optional[str] = None  # crypt(3); None = a locked password (keys only)
    terminfo: List[str] = ["xterm-kitty"]
    kernel_args: List[str] = []  # extra installer arguments, e.g. console=ttyS0,115200n8
    cache_dir: str = "/var/cache/xenlab/pxe"  # downloads, under --root

    _sizes = field_validator("disk_size", "root_size", "swap_size", "keep_free", mode="before")(
        size_field()
    )
    _user = field_validator("user")(_matching(_USER, "a user name (a-z, 0-9, '_', '-')"))
    _locale = field_validator("locale")(_matching(_LOCALE, "a locale such as en_US.UTF-8"))
    _keyboard = field_validator("keyboard")(_matching(_KEYMAP, "a keymap such as us or de"))
    _timezone = field_validator("timezone")(
        _matching(_TIMEZONE, "a time zone such as Europe/Amsterdam")
    )
    _mirror = field_validator("mirror", "installer_url")(
        _matching(_MIRROR, "an http(s) URL such as http://archive.ubuntu.com/ubuntu")
    )
    _hostname = field_validator("hostname")(
        _matching(_HOSTNAME, "a host name (a-z, 0-9, '-', no dots)")
    )
    _domain = field_validator("domain")(_matching(_DOMAIN, "a DNS domain such as example.net"))
    _shell = field_validator("shell")(_matching(_SHELL, "a shell's name such as zsh"))
    _password_hash = field_validator("password_hash")(
        _matching(_CRYPT, "a crypt(3) hash such as the output of mkpasswd -m sha-512")
    )

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, value: Any) -> Optional[str]:
        return None if value in (None, "") else macs.normalise(value)

    @field_validator("disk")
    @classmethod
    def _disk(cls, value: str) -> str:
        if not re.fullmatch(r"/dev/[A-Za-z0-9][A-Za-z0-9_/-]*", value) or "/../" in value + "/":
            raise ValueError("must be a whole disk such as /dev/sda or /dev/nvme0n1")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys(cls, value: List[str]) -> List[str]:
        for key in value:
            if not _SSH_KEY.fullmatch(key) or set(key) & set("'\"\\`$"):
                raise ValueError(
                    f"{key[:40]!r}... is not one public key on one line (type, base64, a comment"
                    " without quotes)"
                )
        return value

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: List[str]) -> List[str]:
        for name in value:
            if not _PACKAGE.fullmatch(name):
                raise ValueError(f"{name!r} is not a Debian package name")
        return value

    @field_validator("terminfo", "kernel_args", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        # a single name (terminfo: xterm-kitty) is a list of one
        return [value] if isinstance(value, str) else value

    @field_validator("terminfo")
    @classmethod
    def _terminfo(cls, value: List[str]) -> List[str]:
        for name in value:
            if not _TERM.fullmatch(name):
                raise ValueError(f"{name!r} is not a terminal name")
        return value

    @field_validator("kernel_args")
    @classmethod
    def _kernel_args(cls, value: List[str]) -> List[str]:
        for arg in value:
            if not KERNEL_ARG.fullmatch(arg):
                raise ValueError(f"{arg!r} is not one kernel argument (no spaces or quotes)")
        return value

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, value: str) -> str:
        if not re.fullmatch(r"/[A-Za-z0-9_./-]*", value) or "/../" in value + "/":
            raise ValueError("must be an absolute path without '..'")
        return value


def parse_range(value: str) -> Tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """'10.0.0.50-10.0.0.99' -> (first, last); ValueError naming what is wrong."""
    parts = str(value).split("-")
    if len(parts) != 2:
        raise ValueError("must be FIRST-LAST, e.g. 192.0.2.8-192.0.2.14")
    try:
        first, last = (ipaddress.IPv4Address(p.strip()) for p in parts)
    except ValueError:
        raise ValueError("must be two IPv4 addresses, FIRST-LAST") from None
    if first > last:
        raise ValueError("FIRST is after LAST")
    return first, last


class PxeConfig(_Strict):
    interface: Optional[str] = None  # pxe.serve binds to this interface only
    mode: Literal["proxy", "dhcp"] = "proxy"
    dhcp_range: Optional[str] = None  # "FIRST-LAST", for mode dhcp
    http_port: int = 8080
    tftp_root: str = "/srv/xenlab/tftp"
    state_dir: str = "/var/lib/xenlab/pxe"
    # iPXE clients (DHCP user class "iPXE") get an HTTP script; false: the TFTP loader as any ROM.
    ipxe_http: bool = True
    # Full DHCP: the name server offered (the installer insists on one); None = this server.
    dns: Optional[ipaddress.IPv4Address] = None
    lease_time: int = 3600  # seconds, full DHCP

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: Optional[str]) -> Optional[str]:
        return None if value in (None, "") else check_ifname(value)

    @field_validator("dhcp_range")
    @classmethod
    def _range(cls, value: Optional[str]) -> Optional[str]:
        if value in (None, ""):
            return None
        parse_range(value)
        return value.replace(" ", "")

    @field_validator("http_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("must be a TCP port, 1..65535")
        return value

    @field_validator("lease_time")
    @classmethod
    def _lease_time(cls, value: int) -> int:
        if not 60 <= value <= 86400 * 30:
            raise ValueError("must be 60 seconds to 30 days")
        return value

    @field_validator("tftp_root", "state_dir")
    @classmethod
    def _dirs(cls, value: str) -> str:
        if not value.startswith("/") or "/../" in value + "/" or value == "/":
            raise ValueError("must be an absolute path without '..' (and not /)")
        if any(c.isspace() or c in "'\"$`\\" for c in value):
            # diskimage-builder passes it through `sh -c` unquoted
            raise ValueError("must not hold spaces, quotes, '$', '`' or '\\'")
        return value.rstrip("/")

    @property
    def range_bounds(self) -> Optional[Tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]:
        return parse_range(self.dhcp_range) if self.dhcp_range else None


# --- images.* and guests.* (issue 5) -----------------------------------------------------------
_MIRROR = re.compile(r"^https?://[A-Za-z0-9._~:/@%+-]+$")


def check_mirror(value: Any) -> Optional[str]:
    """An http(s) URL with nothing a sources.list line or a shell word could trip over."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _MIRROR.match(value):
        raise ValueError("must be an http:// or https:// URL without spaces or quotes")
    return value.rstrip("/")


class ImagesConfig(_Strict):
    cache_dir: str = "/var/cache/xenlab/images"
    # Debian's archive and its security archive; None = the machine's apt sources.
    mirror: Optional[str] = None
    security_mirror: Optional[str] = None
    # Ubuntu's archive (its -security suite is there too); None = the machine's Ubuntu source
    # for the release if it has one, else http://archive.ubuntu.com/ubuntu.
    ubuntu_mirror: Optional[str] = None

    _mirrors = field_validator("mirror", "security_mirror", "ubuntu_mirror", mode="before")(
        classmethod(lambda cls, value: check_mirror(value))
    )

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, value: str) -> str:
        if not value.startswith("/") or "/../" in value + "/" or value == "/":
            raise ValueError("must be an absolute path without '..' (and not /)")
        if any(c.isspace() or c in "'\"$`\\" for c in value):
            # diskimage-builder passes it through `sh -c` unquoted
            raise ValueError("must not hold spaces, quotes, '$', '`' or '\\'")
        return value.rstrip("/")


_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


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
    # Networks that may reach the guest's sshd; empty = any address (still key-only).
    ssh_allow_from: List[ipaddress.IPv4Network] = []
    user: str = "admin"  # the guest's admin account: the keys above, sudo, no password
    dns: List[ipaddress.IPv4Address] = []  # empty = the host's own (non-loopback) name servers

    _memory = field_validator("memory", mode="before")(size_field("M"))
    _volumes = field_validator("disk", "swap", mode="before")(size_field("G"))

    @field_validator("vcpus")
    @classmethod
    def _vcpus(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys(cls, value: List[str]) -> List[str]:
        for key in value:
            words = key.split()
            if "\n" in key or len(words) < 2 or not words[0].startswith(_KEY_TYPES):
                raise ValueError(f"{key[:40]!r} is not one OpenSSH public key line")
        return value

    @field_validator("ssh_allow_from", mode="before")
    @classmethod
    def _allow(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("must be a list of networks such as 192.0.2.0/28")
        nets = []
        for item in value:
            try:
                nets.append(ipaddress.IPv4Network(str(item).strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IPv4 network ({exc})") from None
        return nets

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _USER.match(value) or value == "root":
            raise ValueError("must be a Linux user name other than root (a-z, 0-9, _ and -)")
        return value


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
