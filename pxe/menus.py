"""Boot menus, made per request: what each loader asks for, decided by whether its MAC is armed.

The paths the loaders request (relative to the boot tree; a leading '/' is ignored):
- pxelinux (bios/pxelinux.0, or bios/lpxelinux.0: the same with an HTTP client) looks in its
  own folder: bios/pxelinux.cfg/01-<mac-with-dashes>
  first (answered for every MAC: the install when armed, else the local disk), then the hex IP
  names (not answered) and bios/pxelinux.cfg/default (the local disk).
- UEFI: shim (bootx64.efi) loads grubx64.efi, Debian's signed GRUB network image. Its prefix
  /grub is compiled in; it asks for grub/x86_64-efi/{command,fs,crypto,terminal}.lst (none
  needed), sources $prefix/x86_64-efi/grub.cfg if it exists (not answered), else
  $prefix/grub.cfg. It does not look for per-MAC files itself, so grub/grub.cfg sources
  grub/mac/$net_default_mac.cfg (colon separated, lower case) and falls back to the local disk.
  Seen in full with OVMF's own PXE client and dnsmasq: shim, GRUB, grub/grub.cfg,
  grub/mac/<mac>.cfg, then the installer's kernel and initrd over TFTP.
- iPXE fetches ipxe/<mac>.ipxe over HTTP: the URL loader_for gives it in the DHCP answer.
With pxe.http_boot (the default) only the first loader and its modules come over TFTP: BIOS
clients get lpxelinux.0, whose menu names kernel and initrd as http:// URLs, and GRUB loads them
from (http,SERVER:PORT). Without it pxelinux.0 and GRUB load the installer over TFTP (pxelinux's
"::" means from the TFTP root, not from its own folder). iPXE always loads it over HTTP.
UEFI HTTP Boot clients (vendor class "HTTPClient", UEFI 2.5+) get shim as an http:// URL: shim
then fetches grubx64.efi from the same folder over HTTP, and GRUB its menus over HTTP too.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, List, Optional

from pipeline import mac as macs
from pipeline.config import KERNEL_ARG, InstallConfig
from pipeline.errors import BadInput
from pxe.templating import render_template

BIOS_LOADER = "bios/pxelinux.0"
BIOS_HTTP_LOADER = "bios/lpxelinux.0"  # pxelinux with lwIP and an HTTP client (package pxelinux)
BIOS_LOADERS = ("pxelinux.0", "lpxelinux.0")  # under bios/
# shim, and the GRUB it loads: at the top of the tree, because shim fetches grubx64.efi from the
# folder of the boot file name it finds in the DHCP packet's `file` field, and a server (or
# dnsmasq) that sends the name as option 67 leaves that field empty: shim then asks for
# /grubx64.efi (seen with OVMF's own PXE client).
EFI_LOADER = "bootx64.efi"
EFI_GRUB = "grubx64.efi"
# Debian's signed GRUB network image has tftp and efinet built in but not http: its module comes
# from the package grub-efi-amd64-bin of the same build, in $prefix/x86_64-efi/. Under Secure
# Boot GRUB refuses an unsigned module; the menu then loads the installer over TFTP instead.
EFI_GRUB_MODULE_DIR = "grub/x86_64-efi"
EFI_GRUB_MODULES = ("http.mod",)
EFI_ARCHES = (6, 7, 9)  # DHCP option 93: EFI IA32, EFI BC, EFI x86-64
HTTP_ARCHES = (15, 16)  # DHCP option 93 of UEFI HTTP Boot: x86 and x86-64 (RFC 4578 registry)
# modules vesamenu.c32 needs beside ldlinux.c32 (syslinux 6)
BIOS_MODULES = ("ldlinux.c32", "vesamenu.c32", "libcom32.c32", "libutil.c32")

_PXELINUX_MAC = re.compile(r"^bios/pxelinux\.cfg/01-([0-9a-f]{2}(?:-[0-9a-f]{2}){5})$")
_GRUB_MAC = re.compile(r"^grub/mac/([0-9a-f]{2}(?::[0-9a-f]{2}){5})\.cfg$")
_IPXE_MAC = re.compile(r"^ipxe/([0-9a-f]{2}(?::[0-9a-f]{2}){5})\.ipxe$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SERIAL = re.compile(r"^console=ttyS([0-9]+)(?:,([0-9]+))?")


@dataclass(frozen=True)
class ServerInfo:
    address: str  # where the clients reach the server (IPv4 address or host name)
    http_port: int
    install: InstallConfig
    timeout: int = 5  # seconds a menu waits before its default entry
    http_boot: bool = True  # pxe.http_boot: kernel and initrd over HTTP for every loader


@dataclass(frozen=True)
class Serial:
    unit: int
    speed: int


@dataclass(frozen=True)
class InstallEntry:
    profile: str
    disk: str
    kernel: str  # relative to the tree
    initrd: str
    args: List[str]
    base_url: str  # the tree over HTTP (for iPXE)
    http: bool = True  # pxelinux and GRUB load kernel and initrd over HTTP
    grub_http: str = ""  # GRUB's device for the HTTP server: (http,ADDRESS:PORT)


def installer_files(profile: str) -> List[str]:
    return [f"installers/{profile}/linux", f"installers/{profile}/initrd.gz"]


def _check(server: ServerInfo) -> None:
    try:
        ipaddress.IPv4Address(server.address)
    except ValueError:
        if not _HOST.fullmatch(server.address):
            raise BadInput("server.address", server.address, "is not an address") from None
    if not isinstance(server.http_port, int) or not 0 < server.http_port < 65536:
        raise BadInput("pxe.http_port", server.http_port, "is not a port number")
    if not isinstance(server.timeout, int) or not 0 <= server.timeout <= 3600:
        raise BadInput("timeout", server.timeout, "is not a number of seconds")


def base_url(server: ServerInfo) -> str:
    return f"http://{server.address}:{server.http_port}"


def kernel_args(server: ServerInfo, mac: str) -> List[str]:
    """The installer's arguments for `mac`: where its preseed is, and install.kernel_args."""
    install = server.install
    args = [
        "auto=true",
        "priority=critical",
        f"url={base_url(server)}/preseed/{mac}.cfg",
        "interface=auto",
        "netcfg/dhcp_timeout=30",
        f"hostname={install.hostname}",
        f"domain={install.domain}",
        f"locale={install.locale}",
        f"keymap={install.keyboard}",
        *install.kernel_args,
    ]
    for arg in args:  # the config validated its parts; this guards the whole
        if not KERNEL_ARG.fullmatch(arg):
            raise BadInput("install.kernel_args", arg, "is not one kernel argument")
    return args


def serial(install: InstallConfig) -> Optional[Serial]:
    """The serial console the installer is told to use, for the loaders' menus too."""
    for arg in install.kernel_args:
        match = _SERIAL.match(arg)
        if match:
            return Serial(int(match.group(1)), int(match.group(2) or 9600))
    return None


def _entry(server: ServerInfo, mac: str) -> InstallEntry:
    install = server.install
    kernel, initrd = installer_files(install.profile)
    return InstallEntry(
        profile=install.profile,
        disk=install.disk,
        kernel=kernel,
        initrd=initrd,
        args=kernel_args(server, mac),
        base_url=base_url(server),
        http=server.http_boot,
        grub_http=f"(http,{server.address}:{server.http_port})",
    )


def _menu(template: str, server: ServerInfo, mac: Optional[str], is_armed: bool) -> str:
    entry = _entry(server, mac) if mac and is_armed else None
    if mac is None:
        title = "no machine-specific menu: booting the local disk"
    elif entry:
        title = f"{mac} is armed: installing {server.install.profile} on {server.install.disk}"
    else:
        title = f"{mac} is not armed: booting the local disk"
    return render_template(
        template,
        title=title,
        install=entry,
        default="install" if entry else "local",
        timeout=server.timeout,
        serial=serial(server.install),
        per_mac="grub/mac/MAC.cfg",
    )


def render(path: str, server: ServerInfo, armed: Callable[[str], bool]) -> Optional[str]:
    """The menu for a path a loader requests (TFTP or HTTP); None when it is not a menu."""
    _check(server)
    path = path.lstrip("/")
    match = _PXELINUX_MAC.fullmatch(path)
    if match:
        mac = match.group(1).replace("-", ":")
        return _menu("pxelinux.cfg.j2", server, mac, armed(mac))
    if path == "bios/pxelinux.cfg/default":
        return _menu("pxelinux.cfg.j2", server, None, False)
    if path == "grub/grub.cfg":
        return _menu("grub.cfg.j2", server, None, False)
    match = _GRUB_MAC.fullmatch(path)
    if match:
        mac = match.group(1)
        return _menu("grub-mac.cfg.j2", server, mac, armed(mac))
    match = _IPXE_MAC.fullmatch(path)
    if match:
        mac = match.group(1)
        return _menu("ipxe.j2", server, mac, armed(mac))
    return None


def loader_for(
    arch: int,
    user_class: Optional[bytes],
    mac: str,
    server: ServerInfo,
    http_client: bool = False,
) -> str:
    """The boot file name for a DHCP answer: the iPXE script's URL for iPXE (which loads over
    HTTP); for UEFI HTTP Boot (`http_client`: vendor class HTTPClient) shim's URL; GRUB through
    shim for EFI (option 93 of 6, 7, 9); lpxelinux (pxe.http_boot) or pxelinux for the rest."""
    if user_class == b"iPXE":
        _check(server)
        return f"{base_url(server)}/ipxe/{macs.normalise(mac)}.ipxe"
    if http_client:
        _check(server)
        return f"{base_url(server)}/{EFI_LOADER}"
    if arch in EFI_ARCHES:
        return EFI_LOADER
    return BIOS_HTTP_LOADER if server.http_boot else BIOS_LOADER
