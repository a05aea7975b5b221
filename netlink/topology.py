"""The host's live network read over netlink, as plain data: what host.diagram draws and host.report prints.

One read gives links (kind, MAC, state, master, IPv4 addresses), bridges with their ports, the
main routing table with the default gateway, the IPv4 neighbours (ARP) and the MACs each bridge
learned on its ports. Nothing here changes anything; `--netns` reads another namespace.
"""

import ipaddress
import socket
from dataclasses import dataclass
from typing import List, Optional

from pyroute2 import IPRoute

from netlink import forwarding, links, namespace, state

MAIN_TABLE = 254
# Neighbour states that hold no usable MAC: incomplete, failed, noarp (multicast, loopback).
_NUD_UNUSABLE = 0x01 | 0x20 | 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


@dataclass(frozen=True)
class Route:
    dst: ipaddress.IPv4Network  # 0.0.0.0/0 for the default route
    gateway: Optional[ipaddress.IPv4Address]
    dev: Optional[str]
    source: Optional[ipaddress.IPv4Address]
    metric: int

    @property
    def is_default(self) -> bool:
        return self.dst.prefixlen == 0

    def __str__(self) -> str:
        words = ["default" if self.is_default else str(self.dst)]
        if self.gateway is not None:
            words += ["via", str(self.gateway)]
        if self.dev:
            words += ["dev", self.dev]
        if self.source is not None:
            words += ["src", str(self.source)]
        return " ".join(words)


@dataclass(frozen=True)
class Neighbour:
    """An IPv4 neighbour (ARP entry): who answered for `address` on `dev`."""

    address: ipaddress.IPv4Address
    mac: str
    dev: str


@dataclass(frozen=True)
class Learned:
    """A MAC a bridge learned on one of its ports (`bridge fdb`: dynamic entries only)."""

    mac: str
    port: str
    bridge: str


@dataclass(frozen=True)
class Bridge:
    state: state.BridgeState
    mac: str
    stp: bool
    priority: int

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def members(self) -> List[str]:
        return self.state.members

    @property
    def bridge_id(self) -> str:
        """As brctl prints it: the priority in hex, a dot, the MAC without colons."""
        return f"{self.priority:04x}." + self.mac.replace(":", "")


@dataclass(frozen=True)
class Topology:
    links: List[links.Link]
    bridges: List[Bridge]
    routes: List[Route]
    neighbours: List[Neighbour]
    learned: List[Learned]
    forwarding: bool

    def link(self, name: str) -> Optional[links.Link]:
        return next((link for link in self.links if link.name == name), None)

    def bridge(self, name: str) -> Optional[Bridge]:
        return next((b for b in self.bridges if b.name == name), None)

    @property
    def default_route(self) -> Optional[Route]:
        defaults = [r for r in self.routes if r.is_default]
        return min(defaults, key=lambda r: r.metric) if defaults else None

    @property
    def gateway(self) -> Optional[ipaddress.IPv4Address]:
        route = self.default_route
        return route.gateway if route else None

    @property
    def uplink(self) -> Optional[links.Link]:
        """The link the default route leaves by."""
        route = self.default_route
        return self.link(route.dev) if route and route.dev else None

    def route_to(self, dev: str) -> List[Route]:
        """The routes (other than the default) that send traffic out of `dev`."""
        return [r for r in self.routes if r.dev == dev and not r.is_default]

    def neighbour(self, address: ipaddress.IPv4Address) -> Optional[Neighbour]:
        return next((n for n in self.neighbours if n.address == address), None)

    def neighbour_with_mac(self, mac: str) -> Optional[Neighbour]:
        return next((n for n in self.neighbours if n.mac == mac.lower()), None)

    def port_of(self, mac: str) -> Optional[Learned]:
        """The bridge port behind which `mac` was seen."""
        return next((e for e in self.learned if e.mac == mac.lower()), None)


def read(netns: Optional[str] = None) -> Topology:
    """Everything the diagram and the report show, read in one go (inside `netns` when given)."""
    with namespace.inside(netns):
        with IPRoute() as ipr:
            all_links = links.all_links(ipr)
            names = {link.index: link.name for link in all_links}
            return Topology(
                links=all_links,
                bridges=[_bridge(ipr, link) for link in all_links if link.kind == "bridge"],
                routes=_routes(ipr, names),
                neighbours=_neighbours(ipr, names),
                learned=_learned(ipr, names),
                forwarding=forwarding.enabled(),
            )


def _bridge(ipr, link: links.Link) -> Bridge:
    msg = ipr.get_links(link.index)[0]
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    stp = data.get_attr("IFLA_BR_STP_STATE") if data is not None else None
    priority = data.get_attr("IFLA_BR_PRIORITY") if data is not None else None
    return Bridge(
        state=state.read_bridge(ipr, link.name),
        mac=link.mac,
        stp=bool(stp),
        priority=0x8000 if priority is None else priority,
    )


def _routes(ipr, names) -> List[Route]:
    routes = []
    for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        if msg.get_attr("RTA_TABLE", msg["table"]) != MAIN_TABLE or msg["type"] != 1:
            continue  # only unicast routes of the main table (not local or broadcast ones)
        dst = msg.get_attr("RTA_DST") or "0.0.0.0"
        source = msg.get_attr("RTA_PREFSRC")
        # A multipath route (ECMP) has its next hops nested: one Route per next hop.
        hops = [
            (hop.get_attr("RTA_GATEWAY"), hop["oif"]) for hop in msg.get_attr("RTA_MULTIPATH") or []
        ] or [(msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"))]
        for gateway, oif in hops:
            routes.append(
                Route(
                    dst=ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}"),
                    gateway=ipaddress.IPv4Address(gateway) if gateway else None,
                    dev=names.get(oif),
                    source=ipaddress.IPv4Address(source) if source else None,
                    metric=msg.get_attr("RTA_PRIORITY") or 0,
                )
            )
    return sorted(routes, key=lambda r: (not r.is_default, r.dst, r.metric, r.dev or ""))


def _neighbours(ipr, names) -> List[Neighbour]:
    found = []
    for msg in ipr.get_neighbours(family=socket.AF_INET):
        mac, dst = msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")
        if msg["state"] & _NUD_UNUSABLE or not mac or not dst or msg["ifindex"] not in names:
            continue
        found.append(Neighbour(ipaddress.IPv4Address(dst), mac.lower(), names[msg["ifindex"]]))
    return sorted(found, key=lambda n: (n.address, n.dev))


def _learned(ipr, names) -> List[Learned]:
    found = []
    for msg in ipr.get_neighbours(family=socket.AF_BRIDGE):
        master = msg.get_attr("NDA_MASTER")
        mac = msg.get_attr("NDA_LLADDR")
        # The ports' own addresses are permanent entries; what came in over a port is not.
        if master is None or not mac or msg["state"] & NUD_PERMANENT or msg["flags"] & NTF_SELF:
            continue
        if msg["ifindex"] in names and master in names:
            found.append(Learned(mac.lower(), names[msg["ifindex"]], names[master]))
    return sorted(found, key=lambda e: (e.bridge, e.port, e.mac))
