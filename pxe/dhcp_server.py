"""The DHCP side of pxe.serve: proxyDHCP beside a site's own DHCP server, or full DHCP with a range.

Proxy mode (the default) answers only PXE clients: a DHCPDISCOVER on port 67 gets an offer with
no address, only the boot file (the PXE spec's proxyDHCP offer), and a request on port 4011 gets
the same as an ack. The site's DHCP server keeps handing out addresses. Full DHCP mode (an
isolated segment) leases addresses from the range to everyone, as the installer needs one too,
and adds the boot file for PXE clients. Leases live in memory and in `leases.json` in the state
directory, so a restarted server gives the same host the same address.

`DhcpLogic.handle` is the whole decision, socket-free; `DhcpServer` puts it on the sockets.
"""

import ipaddress
import itertools
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from pxe import dhcp
from pxe.dhcp import Packet

CLIENT_PORT, SERVER_PORT, PXE_PORT = 68, 67, 4011
OFFER_HOLD = 60  # seconds an offered address stays reserved for its client


class ClientTable:
    """What the server knows about clients: the IP each MAC was last seen with, and back.

    Full DHCP knows this from its leases; proxy mode learns it from the clients' own packets
    (ciaddr on 4011, option 50 of a DHCPREQUEST, the TFTP request for its own menu). HTTP uses it
    to serve a preseed only to its host, TFTP and HTTP to put a MAC on each log line.
    """

    def __init__(self, arp_table: str = "/proc/net/arp", bound=None):
        self._lock = threading.Lock()
        self._ip_of: Dict[str, str] = {}
        self._arp_table = arp_table
        # Full DHCP: MACs whose committed lease binds them to its address while `bound(mac)`
        # holds (pxe.serve: while the MAC is armed); no later packet moves them.
        self._bound = bound
        self._binding: Dict[str, str] = {}

    def bind(self, mac: str, ip: str) -> None:
        """`mac` is at `ip` by a committed lease."""
        with self._lock:
            self._binding[mac] = ip
            self._ip_of[mac] = ip

    def bound_ip(self, mac: str) -> Optional[str]:
        """The address a committed lease binds `mac` to, while it is bound; else None."""
        with self._lock:
            ip = self._binding.get(mac)
        return ip if ip is not None and self._bound is not None and self._bound(mac) else None

    def learn(self, mac: str, ip: Optional[str]) -> None:
        if not ip or ip == "0.0.0.0":
            return
        if self.bound_ip(mac) not in (None, ip):
            return  # a packet claiming a bound MAC from elsewhere does not move it
        with self._lock:
            self._ip_of[mac] = ip

    def ip_of(self, mac: str) -> Optional[str]:
        with self._lock:
            return self._ip_of.get(mac)

    def mac_of(self, ip: str) -> str:
        """The MAC last seen with `ip`; else the kernel's neighbour table; else '?'."""
        with self._lock:
            for mac, known in reversed(list(self._ip_of.items())):
                if known == ip:
                    return mac
        try:
            with open(self._arp_table) as fh:
                next(fh, None)
                for line in fh:
                    cols = line.split()
                    if len(cols) >= 4 and cols[0] == ip and cols[3] != "00:00:00:00:00:00":
                        return cols[3].lower()
        except OSError:
            pass
        return "?"


LEASES_FILE = "leases.json"  # in pxe.state_dir


@dataclass
class Lease:
    ip: str
    expires: float


def leases_file(state_dir: Path) -> Path:
    return Path(state_dir) / LEASES_FILE


def read_leases(state_file: Path) -> Dict[str, Lease]:
    """The committed leases in `state_file`, {mac: Lease}; an entry that cannot be read is left
    out, and a missing or damaged file holds none (it only loses the memory of old leases)."""
    try:
        data = json.loads(Path(state_file).read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("leases") if isinstance(data, dict) else None
    found = {}
    for mac, entry in (entries if isinstance(entries, dict) else {}).items():
        try:
            found[mac] = Lease(str(entry["ip"]), float(entry["expires"]))
        except (KeyError, TypeError, ValueError):
            continue
    return found


class Leases:
    """Addresses from FIRST-LAST, one per MAC; committed leases persisted as JSON."""

    def __init__(
        self, first: str, last: str, state_file: Optional[Path], lease_time: int, now=time.time
    ):
        self.first = ipaddress.IPv4Address(first)
        self.last = ipaddress.IPv4Address(last)
        self.state_file = state_file
        self.lease_time = lease_time
        self._now = now
        self._lock = threading.Lock()
        self.committed: Dict[str, Lease] = read_leases(state_file) if state_file else {}
        self._offered: Dict[str, Lease] = {}

    def in_range(self, ip: str) -> bool:
        try:
            return self.first <= ipaddress.IPv4Address(ip) <= self.last
        except ValueError:
            return False

    def _taken(self, ip: str, mac: str) -> bool:
        now = self._now()
        for table in (self.committed, self._offered):
            for other, lease in table.items():
                if other != mac and lease.ip == ip and lease.expires > now:
                    return True
        return False

    def offer(self, mac: str, wanted: Optional[str]) -> Optional[str]:
        """An address for `mac`: its lease, else the one it asks for, else the first free one."""
        with self._lock:
            now = self._now()
            for table in (self.committed, self._offered):
                lease = table.get(mac)
                if lease is not None and not self._taken(lease.ip, mac):
                    self._offered[mac] = Lease(lease.ip, now + OFFER_HOLD)
                    return lease.ip
            taken = {
                lease.ip
                for table in (self.committed, self._offered)
                for other, lease in table.items()
                if other != mac and lease.expires > now
            }
            candidates = itertools.chain(
                [wanted] if wanted and self.in_range(wanted) else [],
                (str(ipaddress.IPv4Address(n)) for n in range(int(self.first), int(self.last) + 1)),
            )
            for candidate in candidates:
                if candidate not in taken:
                    self._offered[mac] = Lease(candidate, now + OFFER_HOLD)
                    return candidate
            return None

    def commit(self, mac: str, ip: str) -> bool:
        """Bind `ip` to `mac` if it is ours to give and free; False means NAK."""
        with self._lock:
            if not self.in_range(ip) or self._taken(ip, mac):
                return False
            self.committed[mac] = Lease(ip, self._now() + self.lease_time)
            self._offered.pop(mac, None)
            self._save()
            return True

    def release(self, mac: str) -> None:
        with self._lock:
            self.committed.pop(mac, None)
            self._offered.pop(mac, None)
            self._save()

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "leases": {m: {"ip": le.ip, "expires": le.expires} for m, le in self.committed.items()}
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.state_file)


@dataclass
class Network:
    """What full DHCP hands out besides the address."""

    server: str  # this server's address on the segment
    netmask: str
    router: Optional[str] = None
    dns: Tuple[str, ...] = ()
    lease_time: int = 3600


@dataclass
class Answer:
    packet: Packet
    to: Tuple[str, int]
    log: str  # the step, e.g. "DHCP offer 10.0.0.5 bios/pxelinux.0"


class DhcpLogic:
    """The decisions: which packet gets which answer. No sockets, so tests drive it directly."""

    def __init__(
        self,
        mode: str,
        network: Network,
        boot_file: Callable[[Packet], Optional[str]],
        clients: ClientTable,
        leases: Optional[Leases] = None,
    ):
        if mode not in ("proxy", "dhcp"):
            raise ValueError(f"mode {mode!r}")
        if mode == "dhcp" and leases is None:
            raise ValueError("full DHCP needs a range")
        self.mode = mode
        self.net = network
        self.boot_file = boot_file
        self.clients = clients
        self.leases = leases

    def handle(self, packet: Packet, port: int, source: Tuple[str, int]) -> Optional[Answer]:
        if packet.op != dhcp.BOOTREQUEST or packet.htype != 1 or len(packet.chaddr) != 6:
            return None
        kind = packet.message_type
        if kind is None:
            return None  # plain BOOTP: not served
        if kind == dhcp.REQUEST and self.mode == "proxy":
            # The site's server answers it, but the address asked for is where the client will be.
            self.clients.learn(packet.mac, packet.requested_ip or packet.ciaddr)
        if port == PXE_PORT:
            return self._pxe_port(packet, kind, source)
        if self.mode == "proxy":
            return self._proxy(packet, kind)
        return self._full(packet, kind)

    # --- proxyDHCP ---------------------------------------------------------------------------
    def _boot_options(self, packet: Packet, reply: Packet, proxy: bool) -> Optional[str]:
        """Put the boot file into `reply`; its name, or None when this client gets none."""
        http_client = packet.is_http_client  # UEFI HTTP Boot: the name is a URL, no TFTP
        if not (packet.is_pxe or http_client):
            return None
        name = self.boot_file(packet)
        if not name:
            return None
        raw = name.encode()
        reply.siaddr = self.net.server
        if len(raw) <= 127:
            reply.file = raw
        reply.options[dhcp.TFTP_SERVER] = self.net.server.encode()
        reply.options[dhcp.BOOTFILE] = raw
        if http_client:
            # UEFI takes the offer's URL only with its own vendor class echoed (UEFI 2.5, 24.7).
            reply.options[dhcp.VENDOR_CLASS] = b"HTTPClient"
            reply.options.pop(dhcp.TFTP_SERVER, None)
        elif proxy:
            # A proxy answer must say PXEClient and carry the PXE options (PXE spec 2.2.5);
            # discovery control 8: boot the file named here, no boot server discovery.
            reply.options[dhcp.VENDOR_CLASS] = b"PXEClient"
            reply.options[dhcp.VENDOR_OPTIONS] = dhcp.pxe_vendor_options(
                {dhcp.PXE_DISCOVERY_CONTROL: bytes([dhcp.DISCOVERY_BOOTFILE_ONLY])}
            )
        if dhcp.CLIENT_UUID in packet.options:
            reply.options[dhcp.CLIENT_UUID] = packet.options[dhcp.CLIENT_UUID]
        return name

    def _proxy(self, packet: Packet, kind: int) -> Optional[Answer]:
        if kind != dhcp.DISCOVER or not (packet.is_pxe or packet.is_http_client):
            return None  # addresses are the site DHCP server's business
        reply = dhcp.reply_to(packet, dhcp.OFFER)
        reply.options[dhcp.SERVER_ID] = dhcp.ip_option(self.net.server)
        name = self._boot_options(packet, reply, proxy=True)
        if name is None:
            return None
        return Answer(reply, ("255.255.255.255", CLIENT_PORT), f"DHCP proxy offer {name}")

    def _pxe_port(self, packet: Packet, kind: int, source: Tuple[str, int]) -> Optional[Answer]:
        """Port 4011: a PXE client that took an address elsewhere asks for its boot file."""
        if kind not in (dhcp.REQUEST, dhcp.INFORM) or not packet.is_pxe:
            return None
        client_ip = packet.ciaddr if packet.ciaddr != "0.0.0.0" else source[0]
        self.clients.learn(packet.mac, client_ip)
        reply = dhcp.reply_to(packet, dhcp.ACK)
        reply.options[dhcp.SERVER_ID] = dhcp.ip_option(self.net.server)
        name = self._boot_options(packet, reply, proxy=True)
        if name is None:
            return None
        return Answer(reply, (client_ip, source[1]), f"DHCP proxy ack {client_ip} {name}")

    # --- full DHCP ---------------------------------------------------------------------------
    def _network_options(self, reply: Packet, lease_time: Optional[int]) -> None:
        net = self.net
        reply.options[dhcp.SERVER_ID] = dhcp.ip_option(net.server)
        if lease_time is not None:
            reply.options[dhcp.LEASE_TIME] = dhcp.u32(lease_time)
            reply.options[dhcp.RENEWAL_TIME] = dhcp.u32(lease_time // 2)
            reply.options[dhcp.REBINDING_TIME] = dhcp.u32(lease_time * 7 // 8)
        reply.options[dhcp.SUBNET_MASK] = dhcp.ip_option(net.netmask)
        if net.router:
            reply.options[dhcp.ROUTER] = dhcp.ip_option(net.router)
        if net.dns:
            # The Debian installer stops at a critical question when DHCP names no DNS server.
            reply.options[dhcp.DNS] = dhcp.ip_option(*net.dns)

    def _destination(self, packet: Packet, nak: bool = False) -> Tuple[str, int]:
        if packet.giaddr != "0.0.0.0":
            return (packet.giaddr, SERVER_PORT)
        if packet.ciaddr != "0.0.0.0" and not nak:
            return (packet.ciaddr, CLIENT_PORT)
        # No address yet: broadcast, which every client accepts (unicast would need ARP entries
        # for an address the client does not have).
        return ("255.255.255.255", CLIENT_PORT)

    def _full(self, packet: Packet, kind: int) -> Optional[Answer]:
        assert self.leases is not None
        mac = packet.mac
        if kind == dhcp.DISCOVER:
            ip = self.leases.offer(mac, packet.requested_ip)
            if ip is None:
                return None  # the range is full: stay silent, as another server may answer
            reply = dhcp.reply_to(packet, dhcp.OFFER)
            reply.yiaddr = ip
            self._network_options(reply, self.net.lease_time)
            name = self._boot_options(packet, reply, proxy=False)
            return Answer(reply, self._destination(packet), _step("offer", ip, name))
        if kind == dhcp.REQUEST:
            server_id = packet.server_id
            if server_id is not None and server_id != self.net.server:
                return None  # it chose another server's offer
            wanted = packet.requested_ip or packet.ciaddr
            bound = self.clients.bound_ip(mac)
            if bound is not None and wanted != bound:
                reply = dhcp.reply_to(packet, dhcp.NAK)
                reply.options[dhcp.SERVER_ID] = dhcp.ip_option(self.net.server)
                return Answer(
                    reply, self._destination(packet, nak=True),
                    f"DHCP nak {wanted}: bound to {bound} while armed",
                )  # fmt: skip
            if wanted != "0.0.0.0" and self.leases.commit(mac, wanted):
                self.clients.bind(mac, wanted)
                reply = dhcp.reply_to(packet, dhcp.ACK)
                reply.yiaddr = wanted
                reply.ciaddr = packet.ciaddr
                self._network_options(reply, self.net.lease_time)
                name = self._boot_options(packet, reply, proxy=False)
                return Answer(reply, self._destination(packet), _step("ack", wanted, name))
            reply = dhcp.reply_to(packet, dhcp.NAK)
            reply.options[dhcp.SERVER_ID] = dhcp.ip_option(self.net.server)
            return Answer(reply, self._destination(packet, nak=True), f"DHCP nak {wanted}")
        if kind == dhcp.INFORM:
            reply = dhcp.reply_to(packet, dhcp.ACK)
            reply.ciaddr = packet.ciaddr
            self._network_options(reply, None)
            name = self._boot_options(packet, reply, proxy=False)
            return Answer(reply, self._destination(packet), _step("ack (inform)", "", name))
        if kind in (dhcp.RELEASE, dhcp.DECLINE) and self.clients.bound_ip(mac) is None:
            self.leases.release(mac)  # a bound (armed) MAC's lease stays until it is disarmed
        return None


def _step(what: str, ip: str, boot_file: Optional[str]) -> str:
    parts = ["DHCP", what]
    if ip:
        parts.append(ip)
    if boot_file:
        parts.append(boot_file)
    return " ".join(parts)


def bound_socket(address: str, port: int, interface: Optional[str]) -> socket.socket:
    """A UDP socket on (address, port), on `interface` only (SO_BINDTODEVICE), broadcast allowed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if interface:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


class DhcpServer:
    """DhcpLogic on port 67 (broadcasts need the wildcard address) and 4011, one thread."""

    def __init__(
        self,
        logic: DhcpLogic,
        interface: Optional[str],
        server_ip: str,
        log: Callable[[str, str], None],
        ports: Tuple[int, int] = (SERVER_PORT, PXE_PORT),
    ):
        self.logic = logic
        self.log = log
        self.socks: List[Tuple[socket.socket, int]] = []
        try:
            self.socks.append((bound_socket("0.0.0.0", ports[0], interface), SERVER_PORT))
            self.socks.append((bound_socket(server_ip, ports[1], interface), PXE_PORT))
        except OSError:
            self.close()
            raise
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for sock, port in self.socks:
            sel.register(sock, selectors.EVENT_READ, port)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    self._one(key.fileobj, key.data)
        finally:
            sel.close()

    def _one(self, sock: socket.socket, port: int) -> None:
        try:
            data, source = sock.recvfrom(4096)
        except OSError:
            return
        try:
            packet = dhcp.decode(data)
        except dhcp.MalformedPacket as exc:
            self.log("?", f"DHCP dropped a bad packet from {source[0]}: {exc}")
            return
        try:
            answer = self.logic.handle(packet, port, source)
        except Exception as exc:  # one client's odd packet must not stop the others' boots
            self.log(packet.mac, f"DHCP error handling {dhcp.describe(packet)[1]}: {exc!r}")
            return
        if answer is None:
            return
        try:
            sock.sendto(dhcp.encode(answer.packet), answer.to)
        except (OSError, ValueError) as exc:
            self.log(packet.mac, f"DHCP cannot answer to {answer.to[0]}: {exc}")
            return
        self.log(packet.mac, answer.log)

    def shutdown(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for sock, _ in self.socks:
            sock.close()
