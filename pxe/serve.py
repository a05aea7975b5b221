"""pxe.serve: DHCP (proxy or full), TFTP and HTTP in one process, on one interface only.

Each server runs in its own thread; every socket is bound to the interface (SO_BINDTODEVICE)
and, where it can be, to the interface's address, so nothing answers on other segments. Every
client step is one log line with the client's MAC: "aa:bb:cc:dd:ee:ff DHCP offer ...",
"... TFTP bios/pxelinux.0 ...", "... HTTP installers/debian-12/linux ...", "... preseed ...",
"... callback ...". Everything a client sent is logged with its control characters escaped, so
no request can write a line of its own.

The install's trust chain (pxe/arming.py, pxe/progress.py): an armed MAC's preseed is served once
per arming, to the address the MAC's lease (or proxy-mode sighting) has; in full-DHCP mode a
committed lease binds the MAC to its address while it is armed. The preseed carries the arming's
random token: the callback (which disarms) and the host's progress reports must bring it, from the
host's address. With a wheelhouse in the boot tree (pxe.build makes it) the preseed also makes the
host provision itself (zero touch), and /wheelhouse/ and /images/ serve what that needs.
"""

import dataclasses
import ipaddress
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from pipeline.errors import BadInput, Failed
from pipeline.runner import Runner
from pxe import arming, images, preseed, progress, wheelhouse
from pxe.dhcp import Packet
from pxe.dhcp_server import ClientTable, DhcpLogic, DhcpServer, Leases, Network, leases_file
from pxe.http import HttpApp, HttpServer
from pxe.tftp import TftpServer

# A loader asking over TFTP for its own menu names its MAC: pxelinux, GRUB (grub.cfg's per-MAC
# file). Not iPXE's script over HTTP: iPXE's address is known from its DHCPREQUEST already.
_MENU_MAC = re.compile(
    r"^(?:bios/pxelinux\.cfg/01-|grub/mac/)([0-9a-f]{2}(?:[-:][0-9a-f]{2}){5})(?:\.cfg)?$"
)


@dataclass
class Plan:
    """Everything pxe.serve needs, checked before any socket is opened."""

    interface: str
    address: ipaddress.IPv4Interface  # the interface's, as clients see the server
    mode: str
    dhcp_range: Optional[Tuple[str, str]]
    tftp_root: Path
    state_dir: Path
    http_port: int
    ipxe_http: bool
    dns: Optional[str]
    lease_time: int
    mtu: int = 1500
    images_dir: Optional[Path] = None  # the install machine's image cache, served at /images/


def check(site) -> None:
    """What pxe.serve needs of the site config alone, checked before the interface is read.

    A disk too small to keep install.keep_free free is bad input, found before serving anyone; so
    is anything else the preseed cannot be made from, and a missing pxe.interface.
    """
    preseed.preflight(site.install)
    if not site.pxe.interface:
        raise BadInput("pxe.interface (--interface)", None, "is required: the PXE segment's NIC")


def plan(site, root: Path, address: ipaddress.IPv4Interface, mtu: int = 1500) -> Plan:
    """Check the settings against the interface's `address` and `mtu` (netlink reads them from
    pxe.interface); BadInput names the field."""
    check(site)
    pxe = site.pxe
    bounds = None
    if pxe.mode == "dhcp":
        if pxe.range_bounds is None:
            raise BadInput("pxe.dhcp_range (--range)", None, "is required with --mode dhcp")
        first, last = pxe.range_bounds
        net = address.network
        if first not in net or last not in net:
            raise BadInput(
                "pxe.dhcp_range (--range)",
                pxe.dhcp_range,
                f"is not inside {net} of {pxe.interface}",
            )
        if (
            first <= address.ip <= last
            or net.network_address in (first, last)
            or net.broadcast_address in (first, last)
        ):
            raise BadInput(
                "pxe.dhcp_range (--range)",
                pxe.dhcp_range,
                f"holds the server's {address.ip} or the network/broadcast address",
            )
        bounds = (str(first), str(last))
    tftp_root = Path(str(root)) / pxe.tftp_root.lstrip("/")
    if not tftp_root.is_dir():
        raise Failed(f"no boot tree at {tftp_root}: run `invoke pxe.build` first")
    return Plan(
        interface=pxe.interface,
        address=address,
        mode=pxe.mode,
        dhcp_range=bounds,
        tftp_root=tftp_root,
        state_dir=Path(str(root)) / pxe.state_dir.lstrip("/"),
        http_port=pxe.http_port,
        ipxe_http=pxe.ipxe_http,
        dns=str(pxe.dns) if pxe.dns else None,
        lease_time=pxe.lease_time,
        mtu=mtu,
        images_dir=Path(site.images.cache_dir),
    )


def server_info(cls, address: str, http_port: int, site):
    """The build side's ServerInfo: address and port, the rest from the install settings by name."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name == "address":
            values[f.name] = address
        elif f.name == "http_port":
            values[f.name] = http_port
        elif f.name == "install":
            values[f.name] = site.install
        elif hasattr(site.install, f.name):
            values[f.name] = getattr(site.install, f.name)
        elif hasattr(site.pxe, f.name):
            values[f.name] = getattr(site.pxe, f.name)
    return cls(**values)


class Service:
    """The three servers of one pxe.serve run; start() binds them, stop() closes them."""

    def __init__(self, plan: Plan, site, log: Callable[[str], None]):
        from pxe import menus

        self.plan = plan
        self.site = site
        self._say = log
        self._log_lock = threading.Lock()
        self.menus = menus
        ip = str(plan.address.ip)
        self.ip = ip
        self.server = server_info(menus.ServerInfo, ip, plan.http_port, site)
        # Full DHCP: a committed lease binds an armed MAC to its address (later packets cannot
        # move it); proxy mode has no lease to bind.
        self.clients = ClientTable(bound=self.armed if plan.mode == "dhcp" else None)
        self.leases: Optional[Leases] = None
        if plan.mode == "dhcp":
            assert plan.dhcp_range is not None
            self.leases = Leases(
                plan.dhcp_range[0],
                plan.dhcp_range[1],
                leases_file(plan.state_dir),
                plan.lease_time,
            )
            for mac, lease in self.leases.committed.items():
                self.clients.bind(mac, lease.ip)
        self.threads: List[threading.Thread] = []
        self.dhcp: Optional[DhcpServer] = None
        self.tftp: Optional[TftpServer] = None
        self.http: Optional[HttpServer] = None

    @property
    def runner(self) -> Runner:
        """A runner for one of the server's own writes (state files): atomic, no --root (the plan
        resolved it); a fresh one each time, so a long-running server keeps no undo history."""
        return Runner()

    # --- what the servers ask ------------------------------------------------------------------
    def log(self, mac: str, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        line = progress.printable(f"{mac} {message}", limit=2000)
        with self._log_lock:
            self._say(f"{stamp} {line}")

    def armed(self, mac: str) -> bool:
        try:
            return arming.is_armed(self.plan.state_dir, mac)
        except Failed as exc:  # a damaged armed.json: nobody is armed until it is repaired
            self.log(mac, f"ERROR: {exc}")
            return False

    def disarm(self, mac: str) -> bool:
        done = arming.disarm(self.runner, self.plan.state_dir, mac)
        if done:
            progress.record(self.runner, self.plan.state_dir, mac, state="installed")
        return done

    def claim(self, mac: str, client: str) -> Optional[str]:
        """The preseed of `mac` may go to `client` (None) once per arming; else why not."""
        token = arming.token_of(self.plan.state_dir, mac)
        entry = arming.claim_preseed(self.runner, self.plan.state_dir, mac, client)
        if entry is None:
            progress.record(
                self.runner, self.plan.state_dir, mac, state="installing", address=client,
                token=token,
            )  # fmt: skip
            return None
        return (
            f"this arming's preseed was served to {entry.get('served_to')} at"
            f" {entry.get('served_at')}; `invoke pxe.arm --mac {mac}` arms it again"
        )

    def callback_refused(self, mac: str, token: str, client: str) -> Optional[str]:
        return arming.check_callback(self.plan.state_dir, mac, token, client)

    def report(self, mac: str, token: str, client: str, body: bytes) -> Tuple[int, str]:
        """POST /progress/<mac>/<token>: a step of the host's host.provision."""
        why = progress.check_report(
            self.plan.state_dir, mac, token, client, self.clients.ip_of(mac)
        )
        if why is not None:
            self.log(mac, f"WARNING: progress report from {client} refused: {why}")
            return 403, "refused"
        try:
            fields = progress.parse_report(body)
        except ValueError as exc:
            self.log(mac, f"progress report from {client} refused: {exc}")
            return 400, str(exc)
        entry = progress.record(self.runner, self.plan.state_dir, mac, **fields)
        self.log(mac, f"progress: {progress.describe(entry)}")
        for line in progress.last_lines(entry)[-5:]:
            self.log(mac, f"  | {line}")
        return 200, "ok"

    def files(self, path: str) -> Optional[Path]:
        """The wheelhouse (in the boot tree) and the image cache's tarballs, by URL path."""
        head, _, name = path.partition("/")
        if head == wheelhouse.DIR:
            folder = self.plan.tftp_root / wheelhouse.DIR
            if name in ("", "index.html") or "/" in name or name.startswith("."):
                return None  # the index page is HTML, made by `virtual`
            return folder / name if (folder / name).is_file() else None
        if head == "images" and self.plan.images_dir is not None:
            if name == images.INDEX:
                data = images.index(self.plan.images_dir, lambda line: self.log("-", line))
                out = self.plan.images_dir / images.EXPORT / images.INDEX
                self.runner.write_bytes(str(out), data, under_root=False)
                return out
            return images.file_for(self.plan.images_dir, name)
        return None

    def virtual(self, path: str, client: str) -> Optional[bytes]:
        """Generated content: the menus, and the wheelhouse's index page (for pip --find-links)."""
        path = path.lstrip("/")
        if path in (f"{wheelhouse.DIR}/", f"{wheelhouse.DIR}/index.html"):
            index = self.plan.tftp_root / wheelhouse.DIR / "index.html"
            return index.read_bytes() if index.is_file() else None
        return self.render_menu(path)

    def provision(self, mac: str) -> Optional[preseed.Provision]:
        """What the preseed needs to make `mac`'s host provision itself; None without a
        wheelhouse in the boot tree (the install then ends at the installed OS)."""
        folder = self.plan.tftp_root / wheelhouse.DIR
        xenlab = wheelhouse.xenlab_requirement(self.plan.tftp_root)
        pips = sorted(folder.glob("pip-*-py3-none-any.whl")) if folder.is_dir() else []
        token = arming.token_of(self.plan.state_dir, mac)
        if xenlab is None or not pips or not token:
            return None
        base = f"http://{self.ip}:{self.plan.http_port}"
        target = wheelhouse.target_for(self.site.install.profile)
        return preseed.Provision(
            base_url=base,
            mac=mac,
            token=token,
            site_yaml=preseed.site_for_host(self.site, f"{base}/images"),
            xenlab=xenlab,
            pip_wheel=pips[-1].name,
            python=target.python,
            python_packages=target.apt_packages,
        )

    def boot_file(self, packet: Packet) -> Optional[str]:
        user_class = packet.user_class if self.plan.ipxe_http else None
        return self.menus.loader_for(
            packet.arch, user_class, packet.mac, self.server, http_client=packet.is_http_client
        )

    def render_menu(self, path: str) -> Optional[bytes]:
        content = self.menus.render(path, self.server, self.armed)
        if content is None:
            return None
        return content.encode() if isinstance(content, str) else bytes(content)

    def tftp_menu(self, name: str, client_ip: str) -> Optional[bytes]:
        """A generated menu over TFTP; in proxy mode, also where its MAC's client is."""
        path = name.lstrip("/")
        content = self.render_menu(path)
        found = _MENU_MAC.match(path)
        if content is not None and found and self.plan.mode == "proxy":
            # Proxy mode has no lease: a client asking for its own menu shows where it is.
            self.clients.learn(found.group(1).replace("-", ":"), client_ip)
        return content

    def preseed(self, mac: str) -> str:
        token = arming.token_of(self.plan.state_dir, mac)
        callback = preseed.callback_for(mac, self.ip, self.plan.http_port, token)
        return preseed.render(self.site.install, mac, callback, self.provision(mac))

    def mac_of(self, ip: str) -> str:
        return self.clients.mac_of(ip)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        plan = self.plan
        dns = (plan.dns or self.ip,)
        network = Network(
            server=self.ip,
            netmask=str(plan.address.netmask),
            router=self.ip if plan.mode == "dhcp" else None,
            dns=dns if plan.mode == "dhcp" else (),
            lease_time=plan.lease_time,
        )
        logic = DhcpLogic(plan.mode, network, self.boot_file, self.clients, self.leases)
        try:
            self.dhcp = DhcpServer(logic, plan.interface, self.ip, self.log)
            self.tftp = TftpServer(
                plan.tftp_root,
                self.ip,
                69,
                plan.interface,
                virtual=lambda name, client: self.tftp_menu(name, client[0]),
                # A block that fits one frame (IP 20 + UDP 8 + TFTP 4): no IP fragments, which
                # some PXE ROMs cannot reassemble.
                max_blksize=max(512, plan.mtu - 32),
                log=lambda ip, msg: self.log(self.mac_of(ip), msg),
            )
            app = HttpApp(
                root=plan.tftp_root,
                armed=self.armed,
                disarm=self.disarm,
                preseed=self.preseed,
                virtual=self.virtual,
                ip_of=self.clients.ip_of,
                mac_of=self.mac_of,
                log=self.log,
                claim=self.claim,
                callback_refused=self.callback_refused,
                progress=self.report,
                files=self.files,
            )
            self.http = HttpServer((self.ip, plan.http_port), app, plan.interface)
        except OSError as exc:
            self.stop()
            raise Failed(f"cannot listen on {plan.interface} ({self.ip}): {exc}") from None
        for name, target in (
            ("dhcp", self.dhcp.serve_forever),
            ("tftp", self.tftp.serve_forever),
            ("http", self.http.serve_forever),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        if self.http is not None:
            if self.threads:
                self.http.shutdown()
            self.http.server_close()
        if self.dhcp is not None:
            self.dhcp.shutdown()
        if self.tftp is not None:
            self.tftp.shutdown()
        for thread in self.threads:
            thread.join(timeout=5)
        if self.dhcp is not None:
            self.dhcp.close()
        if self.tftp is not None:
            self.tftp.close()
        self.threads = []


def describe(p: Plan) -> str:
    extra = f", range {p.dhcp_range[0]}-{p.dhcp_range[1]}" if p.dhcp_range else ""
    return (
        f"on {p.interface} ({p.address.ip}): {p.mode} DHCP{extra}, TFTP from "
        f"{p.tftp_root}, HTTP on port {p.http_port}; armed: "
        f"{', '.join(sorted(arming.load(p.state_dir))) or 'none'}"
    )


def run(site, the_plan: Plan, log: Callable[[str], None], stop: threading.Event) -> None:
    """Serve `the_plan` until `stop` is set (the task sets it on SIGINT/SIGTERM)."""
    service = Service(the_plan, site, log)
    service.start()
    log(f"serving {describe(the_plan)}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()
        log("stopped")
