"""The site config: one validated model built from Invoke's config (invoke.yaml, -f, INVOKE_*) and flags.

Every error names the dotted field (and the flag when the value came from one) and the bad value.
Each kind of value (user name, mirror URL, SSH public key, host name, path, interface name,
package name) has one validator below, used by every section with such a field; `Site` then
checks what spans sections: every guest's name and address against the host's subnet.
"""

import base64
import binascii
import ipaddress
import posixpath
import re
from collections.abc import Mapping
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Annotated  # typing.Annotated is 3.9+; pydantic depends on it

from pipeline import mac as macs
from pipeline import subnet as subnet_math
from pipeline import units
from pipeline.apt_sources import UBUNTU_ARCHIVE
from pipeline.errors import BadInput, Problem

# --- one validator per kind of value ----------------------------------------------------------
# Each raises ValueError with the reason; load_site names the field and the bad value. Values that
# go into the preseed, the boot menus and xl.cfg (jinja2 templates) or a shell word are held to
# strict patterns here, so no template ever sees a quote, a stray space or a newline.

IFNAMSIZ = 16  # the kernel's limit includes the trailing NUL
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# Names the kernel keeps for itself: /proc/sys/net/ipv4/conf/{all,default} and the bonding
# driver's /sys/class/net/bonding_masters ('.', '..', '/', ':' and spaces the pattern refuses).
RESERVED_IFNAMES = frozenset({"all", "default", "bonding_masters"})


def check_ifname(value: str) -> str:
    if len(value) > IFNAMSIZ - 1:
        raise ValueError(
            f"is {len(value)} characters; Linux interface names are at most {IFNAMSIZ - 1}"
        )
    if not _IFNAME.fullmatch(value):
        raise ValueError("is not an interface name (letters, digits, '_', '.', '-')")
    if value in RESERVED_IFNAMES:
        raise ValueError("is a name the kernel reserves (all, default, bonding_masters)")
    return value


_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def check_user(value: str) -> str:
    """An account xenlab creates (the install's admin, a guest's admin): never root."""
    if not _USER.fullmatch(value) or value == "root":
        raise ValueError(
            "is not a user name other than root (a-z, 0-9, '_', '-'; at most 32, not starting"
            " with a digit or '-')"
        )
    return value


# RFC 1123 label, lower case; also keeps LV names (NAME-disk), paths and xl's name= plain.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(f"^{_LABEL}$")


def check_hostname(value: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("is not a host name (a-z, 0-9, '-' inside; at most 63; no dots)")
    return value


# scheme://host[:port][/path]: what a sources.list line, the preseed's mirror/* keys and a shell
# word all take as it is (no user:password@, query or fragment).
_MIRROR = re.compile(
    r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:(?P<port>[0-9]{1,5}))?"
    r"(/[A-Za-z0-9._~%+-]+)*/?$"
)


def check_mirror(value: Any) -> Optional[str]:
    """An http(s) URL of a package archive or a folder on one, without its trailing '/'."""
    if value in (None, ""):
        return None
    match = _MIRROR.fullmatch(value) if isinstance(value, str) else None
    if match is None or not 0 < int(match.group("port") or 80) < 65536:
        raise ValueError(
            f"is not an http:// or https:// URL such as {UBUNTU_ARCHIVE} (a host, an optional"
            " port and path; no spaces, quotes, user or query)"
        )
    return value.rstrip("/")


_SSH_KEY = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( [\x21-\x7e][\x20-\x7e]*)?$"
)


def check_ssh_key(value: str) -> str:
    """One OpenSSH public key line: type, base64 blob, an optional comment without quotes.

    The blob must decode, and start with the length-prefixed key type (RFC 4253 6.6) that
    matches the line's type, as sshd reads it: a key sshd would skip is refused here.
    """
    if not _SSH_KEY.fullmatch(value) or set(value) & set("'\"\\`$"):
        raise ValueError(
            "is not one OpenSSH public key on one line (a type such as ssh-ed25519,"
            " ecdsa-sha2-nistp256 or ssh-rsa, the base64 key, an optional comment without quotes)"
        )
    kind, blob = value.split(" ")[:2]
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("has a key that is not valid base64 (cut short or mistyped?)") from None
    fields = _ssh_fields(data)
    if fields is None or fields[0] != kind.encode() or len(fields) != _SSH_FIELDS[kind]:
        raise ValueError(f"has a key whose data is not one {kind} key (cut short or mistyped?)")
    if kind.endswith("ed25519") or kind.endswith("ed25519@openssh.com"):
        if len(fields[1]) != 32:
            raise ValueError(f"has a key whose data is not one {kind} key (cut short or mistyped?)")
    return value


# How many length-prefixed fields each key type's blob holds (RFC 4253 6.6, RFC 5656, PROTOCOL.u2f).
_SSH_FIELDS = {
    "ssh-ed25519": 2,
    "ssh-rsa": 3,
    "ssh-dss": 5,
    "ecdsa-sha2-nistp256": 3,
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "sk-ssh-ed25519@openssh.com": 3,
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,
}


def _ssh_fields(data: bytes) -> Optional[List[bytes]]:
    """The blob as its length-prefixed fields, or None when they do not add up to it exactly."""
    fields, at = [], 0
    while at < len(data):
        if at + 4 > len(data):
            return None
        size = int.from_bytes(data[at : at + 4], "big")
        if at + 4 + size > len(data):
            return None
        fields.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return fields or None


_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def check_package(value: str) -> str:
    if not _PACKAGE.fullmatch(value):
        raise ValueError("is not a Debian package name")
    return value


# A path component: what xl.cfg's disk spec, a sources.list line and `sh -c` (diskimage-builder
# passes folders through it unquoted) all take as it is.
_COMPONENT = re.compile(r"^[A-Za-z0-9_.+-]+$")


def check_path(value: str, suffix: str = "") -> str:
    """An absolute path without '..' and with plain characters only; '.' and '//' normalised."""
    parts = value.split("/")
    if not value.startswith("/") or any(
        part == ".." or (part and not _COMPONENT.fullmatch(part)) for part in parts
    ):
        raise ValueError(
            "must be an absolute path of letters, digits, '_', '.', '+' and '-' (no '..',"
            " spaces or quotes)"
        )
    path = "/" + posixpath.normpath(value).lstrip("/")
    if not path.endswith(suffix):
        raise ValueError(f"must end in {suffix}")
    return path


def check_dir(value: str) -> str:
    """A folder xenlab writes into: a path (see check_path), not / itself."""
    path = check_path(value)
    if path == "/":
        raise ValueError("is / itself; name a folder of its own")
    return path


# Folders whose contents belong to the system: a guest folder there would be removed by --force.
SYSTEM_DIRS = frozenset(
    "/" + name
    for name in "bin boot dev etc home lib lib64 opt proc root run sbin srv sys tmp usr var".split()
)


def check_storage_dir(value: str) -> str:
    """host.storage.dir: guest.build --force removes a guest's folder under it."""
    path = check_dir(value)
    if path in SYSTEM_DIRS:
        raise ValueError(
            f"is {path}, a system folder; guests' files need a folder of their own (e.g. /srv/xen)"
        )
    return path


def _optional(check):
    """`check` for a value that may be left empty (None or '' = unset)."""
    return lambda value: None if value in (None, "") else check(value)


UserName = Annotated[str, AfterValidator(check_user)]
HostName = Annotated[str, AfterValidator(check_hostname)]
MirrorUrl = Annotated[Optional[str], BeforeValidator(check_mirror)]
SshKey = Annotated[str, AfterValidator(check_ssh_key)]
PackageName = Annotated[str, AfterValidator(check_package)]
Directory = Annotated[str, AfterValidator(check_dir)]
InterfaceName = Annotated[Optional[str], AfterValidator(_optional(check_ifname))]


def _absolute(suffix: str):
    return AfterValidator(lambda value: check_path(value, suffix))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def size_field(default_unit: str = ""):
    """A validator turning '100G' or a bare number (in `default_unit`) into bytes."""

    def check(cls, value: Any) -> Optional[int]:
        if value in (None, ""):
            return None
        return units.parse_size(value, default_unit)

    return classmethod(check)


# --- host.storage -----------------------------------------------------------------------------
class StorageConfig(_Strict):
    # lvm: LVs in volume_group (made by host.storage on device); dir: image files under dir
    kind: Literal["lvm", "dir"] = "lvm"
    device: Optional[str] = None
    size: Optional[int] = None  # bytes; None = all of the largest free region
    volume_group: str = "VolumeGroupXen"
    dir: Annotated[str, AfterValidator(check_storage_dir)] = "/srv/xen"

    _size = field_validator("size", mode="before")(size_field())

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Optional[str]:
        if value in (None, ""):
            return None
        if (
            not isinstance(value, str)
            or not re.fullmatch(r"^/dev/[A-Za-z0-9][A-Za-z0-9_./:-]*$", value)
            or "/../" in value + "/"
        ):
            raise ValueError("must be a block device path such as /dev/sdb or /dev/sdb2")
        return value

    @field_validator("volume_group")
    @classmethod
    def _volume_group(cls, value: str) -> str:
        # LVM's own rule for VG names (lvm(8), "Valid names")
        if (
            not re.fullmatch(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$", value)
            or value in (".", "..")
            or len(value) > 127
        ):
            raise ValueError(
                "is not an LVM name (letters, digits, '+', '_', '.', '-'; no leading '-')"
            )
        return value


# --- host.xen ---------------------------------------------------------------------------------
class XenConfig(_Strict):
    # None = the hypervisor package of the host's release
    package: Optional[Annotated[str, AfterValidator(check_package)]] = None
    dom0_mem: int = 4096 * units.MiB  # bytes
    # What xendomains does with running guests when the host shuts down: shutdown (cleanly; the
    # /etc/xen/auto links start them again at boot) or save (a memory image each in
    # /var/lib/xen/save, restored at boot).
    on_shutdown: Literal["shutdown", "save"] = "shutdown"

    _dom0_mem = field_validator("dom0_mem", mode="before")(size_field("M"))

    @field_validator("dom0_mem")
    @classmethod
    def _dom0_mem_range(cls, value: int) -> int:
        # Xen's dom0_mem takes whole MiB here; below 512M a dom0 with udev and xl does not boot well.
        if value % units.MiB or value < 512 * units.MiB:
            raise ValueError("must be a whole number of MiB, at least 512M")
        return value


class HostConfig(_Strict):
    bridge: Annotated[str, AfterValidator(check_ifname)] = "xenbr0"
    subnet: ipaddress.IPv4Network
    address: Optional[ipaddress.IPv4Address] = None
    netplan_file: Annotated[str, _absolute(".yaml")] = "/etc/netplan/01-netcfg.yaml"
    sysctl_file: Annotated[str, _absolute(".conf")] = "/etc/sysctl.d/60-xenlab-forwarding.conf"
    storage: StorageConfig = StorageConfig()
    xen: XenConfig = XenConfig()

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

    @property
    def bridge_interface(self) -> ipaddress.IPv4Interface:
        return subnet_math.bridge_interface(self.subnet, self.address)


# --- install.* and pxe.* ----------------------------------------------------------------------
# Values that go into the preseed and the boot menus: each is checked against a strict pattern.
_DOMAIN = re.compile(f"^{_LABEL}(\\.{_LABEL})*$")
_LOCALE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?(\.UTF-8)?(@[a-z]+)?$")
_KEYMAP = re.compile(r"^[a-z]{2,8}([-_][a-z0-9]{1,12})?$")
_TIMEZONE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}$")
_SHELL = re.compile(r"^[a-z][a-z0-9-]*$")
_CRYPT = re.compile(r"^\$(1|2[aby]|5|6|y|gy|7)\$[A-Za-z0-9./$=,-]+$")
_TERM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$")
# One kernel argument: what GRUB, pxelinux and iPXE all pass through unquoted and unexpanded.
KERNEL_ARG = re.compile(r"^[A-Za-z0-9_./:,=@+-]+$")


def _matching(pattern: "re.Pattern", what: str) -> AfterValidator:
    """A str field's check against one of the patterns above."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"is not {what}")
        return value

    return AfterValidator(check)


Locale = Annotated[str, _matching(_LOCALE, "a locale such as en_US.UTF-8")]
Keymap = Annotated[str, _matching(_KEYMAP, "a keymap such as us or de")]
TimeZone = Annotated[str, _matching(_TIMEZONE, "a time zone such as Europe/Amsterdam")]
Domain = Annotated[str, _matching(_DOMAIN, "a DNS domain such as example.net")]
Shell = Annotated[str, _matching(_SHELL, "a shell's name such as zsh")]
CryptHash = Annotated[
    str, _matching(_CRYPT, "a crypt(3) hash such as the output of mkpasswd -m sha-512")
]
TerminalName = Annotated[str, _matching(_TERM, "a terminal name")]
KernelArg = Annotated[str, _matching(KERNEL_ARG, "one kernel argument (no spaces or quotes)")]


# The profile names a site may use; pxe/profiles.py (the installer's) and pipeline/guest/profiles.py
# (the golden image's) each hold one entry per name.
ProfileName = Literal["ubuntu-18.04", "debian-12"]


class InstallConfig(_Strict):
    profile: ProfileName = "ubuntu-18.04"
    mac: Optional[str] = None
    disk: str = "/dev/sda"
    disk_size: int = 500 * units.GiB
    root_size: int = 20 * units.GiB
    swap_size: int = 8 * units.GiB
    keep_free: int = 200 * units.GiB
    user: UserName = "admin"
    ssh_authorized_keys: List[SshKey] = []
    packages: List[PackageName] = ["openssh-server", "neovim", "zsh", "lvm2"]
    locale: Locale = "en_US.UTF-8"
    keyboard: Keymap = "us"
    timezone: TimeZone = "Etc/UTC"
    mirror: MirrorUrl = None  # None = the profile's default (see pxe/profiles.py)
    installer_url: MirrorUrl = None  # the netboot images directory; None = the profile's
    hostname: HostName = "xenhost"
    domain: Domain = "example.net"
    shell: Shell = "zsh"  # a package that installs /usr/bin/NAME or /bin/NAME
    password_hash: Optional[CryptHash] = None  # crypt(3); None = a locked password (keys only)
    terminfo: List[TerminalName] = ["xterm-kitty"]
    kernel_args: List[KernelArg] = []  # extra installer arguments, e.g. console=ttyS0,115200n8
    cache_dir: Directory = "/var/cache/xenlab/pxe"  # downloads, under --root

    _sizes = field_validator("disk_size", "root_size", "swap_size", "keep_free", mode="before")(
        size_field()
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

    @field_validator("terminfo", "kernel_args", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        # a single name (terminfo: xterm-kitty) is a list of one
        return [value] if isinstance(value, str) else value


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
    interface: InterfaceName = None  # pxe.serve binds to this interface only
    mode: Literal["proxy", "dhcp"] = "proxy"
    dhcp_range: Optional[str] = None  # "FIRST-LAST", for mode dhcp
    http_port: int = 8080
    tftp_root: Directory = "/srv/xenlab/tftp"
    state_dir: Directory = "/var/lib/xenlab/pxe"
    # iPXE clients (DHCP user class "iPXE") get an HTTP script; false: the TFTP loader as any ROM.
    ipxe_http: bool = True
    # Kernel and initrd over HTTP after the first loader for every client (lpxelinux.0 for BIOS,
    # GRUB's (http,...) for UEFI); false: pxelinux and GRUB load them over TFTP.
    http_boot: bool = True
    # Full DHCP: the name server offered (the installer insists on one); None = this server.
    dns: Optional[ipaddress.IPv4Address] = None
    lease_time: int = 3600  # seconds, full DHCP

    @field_validator("dhcp_range")
    @classmethod
    def _range(cls, value: Optional[str]) -> Optional[str]:
        if value in (None, ""):
            return None
        first, last = parse_range(value)
        return f"{first}-{last}"  # rebuilt from the addresses: nothing else of the input stays

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

    @property
    def range_bounds(self) -> Optional[Tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]]:
        return parse_range(self.dhcp_range) if self.dhcp_range else None


# --- images.* and guests.* --------------------------------------------------------------------
class ImagesConfig(_Strict):
    cache_dir: Directory = "/var/cache/xenlab/images"
    # Debian's archive and its security archive; None = the machine's apt sources.
    mirror: MirrorUrl = None
    security_mirror: MirrorUrl = None
    # Ubuntu's archive (its -security suite is there too); None = the machine's Ubuntu source
    # for the release if it has one, else Ubuntu's public archive (apt_sources.UBUNTU_ARCHIVE).
    ubuntu_mirror: MirrorUrl = None
    # Where golden images come from instead of diskimage-builder: pxe.serve's /images/ on the
    # install machine (each image a tarball with its SHA256); None = build them here.
    source: MirrorUrl = None


class GuestConfig(_Strict):
    memory: int = 1024 * units.MiB  # bytes
    vcpus: int = 1
    disk: int = 10 * units.GiB
    swap: int = 1 * units.GiB
    profile: ProfileName = "ubuntu-18.04"
    ip: Optional[ipaddress.IPv4Address] = None  # required by guest.build; Site checks it
    gateway: Optional[ipaddress.IPv4Address] = None  # None = the bridge address
    bridge: InterfaceName = None  # None = host.bridge
    autostart: bool = True
    ssh_authorized_keys: List[SshKey] = []
    # Networks that may reach the guest's sshd; empty = any address (still key-only).
    ssh_allow_from: List[ipaddress.IPv4Network] = []
    user: UserName = "admin"  # the guest's admin account: the keys above, sudo, no password
    dns: List[ipaddress.IPv4Address] = []  # empty = the host's own (non-loopback) name servers
    # pvgrub: GRUB's Xen image (grub-xen-host) boots the guest's own grub.cfg inside the guest;
    # pygrub: dom0 parses the guest's filesystem; pvh: PVH with GRUB's xen_pvh image (Xen >= 4.10).
    boot: Literal["pvgrub", "pygrub", "pvh"] = "pvgrub"
    stop_timeout: int = 120  # seconds guest.stop waits for a clean shutdown

    _memory = field_validator("memory", mode="before")(size_field("M"))
    _volumes = field_validator("disk", "swap", mode="before")(size_field("G"))

    @field_validator("vcpus")
    @classmethod
    def _vcpus(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("stop_timeout")
    @classmethod
    def _stop_timeout(cls, value: int) -> int:
        if not 1 <= value <= 3600:
            raise ValueError("must be 1 to 3600 seconds")
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


# --- fleet (fleet.*: the same tasks on several Xen hosts over SSH) ----------------------------
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SITE_PATH = re.compile(r"^[A-Za-z0-9_.+/-]+\.ya?ml$")


class FleetHost(_Strict):
    address: str  # the host's SSH address: an IPv4 address or a DNS name
    user: str = "root"  # who logs in; another user than root runs the tasks with sudo -n
    site: str  # the host's own site file on this machine (relative: to the current folder)
    port: Optional[int] = None  # None = the ssh config's Port, else 22

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            pass
        if not _DOMAIN.fullmatch(value) or value.replace(".", "").isdigit():
            raise ValueError("is not an IPv4 address or a DNS name such as xen1.example.net")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _SSH_USER.fullmatch(value):
            raise ValueError("is not a user name (a-z, 0-9, '_', '-'; at most 32)")
        return value

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        if not _SITE_PATH.fullmatch(value) or ".." in value.split("/"):
            raise ValueError(
                "must be a .yaml file's path of letters, digits, '_', '.', '+', '-' and '/'"
                " (no '..', spaces or quotes)"
            )
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError("must be a TCP port, 1..65535")
        return value


class FleetConfig(_Strict):
    hosts: Dict[str, FleetHost] = {}  # NAME -> its address, user and site file
    parallel: Optional[int] = None  # hosts worked on at once; None = all of them
    connect_timeout: int = 10  # seconds for the TCP connection and the SSH handshake
    # Host keys come from ~/.ssh/known_hosts; true: a host that is not in it yet is accepted and
    # added there (as ssh's StrictHostKeyChecking=accept-new). A changed key is always refused.
    accept_new_host_keys: bool = False

    @field_validator("parallel")
    @classmethod
    def _parallel(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and not 1 <= value <= 256:
            raise ValueError("must be 1 to 256 hosts at once (or null: all of them)")
        return value

    @field_validator("connect_timeout")
    @classmethod
    def _connect_timeout(cls, value: int) -> int:
        if not 1 <= value <= 300:
            raise ValueError("must be 1 to 300 seconds")
        return value

    @model_validator(mode="after")
    def _host_names(self) -> "FleetConfig":
        problems = []
        for name in self.hosts:
            try:
                check_hostname(name)
            except ValueError as exc:
                problems.append(Problem(f"fleet.hosts.{name}", name, str(exc)))
        if problems:
            raise SiteProblems(problems)
        return self


# --- rehearse (lab.rehearse: the whole lab on a VM) -------------------------------------------
class RehearseConfig(_Strict):
    # The VM host's uplink: its address on the upstream router's segment, and the router's,
    # which is the host's default gateway; the router routes host.subnet via the uplink.
    uplink: ipaddress.IPv4Interface = ipaddress.IPv4Interface("198.51.100.2/24")
    gateway: ipaddress.IPv4Address = ipaddress.IPv4Address("198.51.100.1")
    # A second address of the router's, outside every guest's ssh_allow_from: sshd must refuse it.
    outside: ipaddress.IPv4Interface = ipaddress.IPv4Interface("203.0.113.1/24")
    memory: int = 3072 * units.MiB  # the VM's RAM (bytes); dom0 gets host.xen.dom0_mem of it
    cpus: int = 2
    # The host disks it builds (installed OS, cached by their inputs) and each run's work files.
    cache_dir: Directory = "/var/cache/xenlab/rehearsal"

    _memory = field_validator("memory", mode="before")(size_field("M"))

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, value: int) -> int:
        if not 1 <= value <= 8:
            raise ValueError("must be 1 to 8")
        return value

    @field_validator("gateway")
    @classmethod
    def _gateway_on_uplink(cls, value: ipaddress.IPv4Address, info: ValidationInfo):
        uplink = info.data.get("uplink")
        if uplink is not None and (value not in uplink.network or value == uplink.ip):
            raise ValueError(f"must be another address of uplink's {uplink.network}")
        return value

    @field_validator("outside")
    @classmethod
    def _outside_elsewhere(cls, value: ipaddress.IPv4Interface, info: ValidationInfo):
        uplink = info.data.get("uplink")
        if uplink is not None and value.network.overlaps(uplink.network):
            raise ValueError(f"must lie outside uplink's {uplink.network}")
        return value


# --- the whole site ---------------------------------------------------------------------------
class SiteProblems(ValueError):
    """What a check across sections found, each naming its own field; load_site lists them all."""

    def __init__(self, problems: List[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def guest_problems(host: HostConfig, guests: Dict[str, GuestConfig]) -> List[Problem]:
    """Every guest's name is a host name; its IP, when set, is a free host address in host.subnet."""
    problems = []
    bridge = host.bridge_interface.ip
    owners: Dict[ipaddress.IPv4Address, str] = {}
    for name, guest in guests.items():
        try:
            check_hostname(name)
        except ValueError as exc:
            problems.append(Problem(f"guests.{name}", name, str(exc)))
        if guest.ip is None:
            continue
        why = subnet_math.host_address_problem(host.subnet, guest.ip)
        if why is None and guest.ip == bridge:
            why = "is the bridge's address"
        if why is None and guest.ip in owners:
            why = f"is guests.{owners[guest.ip]}'s already"
        if why:
            problems.append(Problem(f"guests.{name}.ip", str(guest.ip), why))
        else:
            owners[guest.ip] = name
    return problems


class Site(_Strict):
    host: HostConfig
    install: InstallConfig = InstallConfig()
    pxe: PxeConfig = PxeConfig()
    images: ImagesConfig = ImagesConfig()
    guests: Dict[str, GuestConfig] = {}
    rehearse: RehearseConfig = RehearseConfig()
    fleet: FleetConfig = FleetConfig()

    @model_validator(mode="after")
    def _guests_fit_the_host(self) -> "Site":
        problems = guest_problems(self.host, self.guests)
        if problems:
            raise SiteProblems(problems)
        return self


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
        problems = []
        for err in exc.errors():
            found = (err.get("ctx") or {}).get("error")
            if isinstance(found, SiteProblems):
                problems += [_named(p, from_flag) for p in found.problems]
            else:
                problems.append(_named(_problem(err), from_flag))
        raise BadInput.of(problems) from None


def _named(problem: Problem, from_flag: Dict[str, str]) -> Problem:
    """The problem's field with the flag its value came from, if one did."""
    if problem.field in from_flag:
        return problem._replace(field=f"{problem.field} ({from_flag[problem.field]})")
    return problem


def _problem(err: Dict[str, Any]) -> Problem:
    field = ".".join(str(p) for p in err["loc"])
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
