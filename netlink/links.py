"""Reading links and addresses over netlink, as plain data."""

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from pipeline.errors import BadInput

IFF_UP = 0x1


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # '' for a plain device
    up: bool
    operstate: str
    master: Optional[int]
    mac: str
    addresses: List[ipaddress.IPv4Interface] = field(default_factory=list)


def _link(msg, addresses: List[ipaddress.IPv4Interface]) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        up=bool(msg["flags"] & IFF_UP),
        operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
        master=msg.get_attr("IFLA_MASTER"),
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        addresses=addresses,
    )


def ipv4_addresses(ipr, index: int) -> List[ipaddress.IPv4Interface]:
    return [
        ipaddress.IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
        for m in ipr.get_addr(index=index, family=socket.AF_INET)
    ]


def by_name(ipr, name: str) -> Optional[Link]:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    return _link(ipr.get_links(found[0])[0], ipv4_addresses(ipr, found[0]))


def all_links(ipr) -> List[Link]:
    return [_link(m, ipv4_addresses(ipr, m["index"])) for m in ipr.get_links()]


def members(ipr, index: int) -> List[Link]:
    return [link for link in all_links(ipr) if link.master == index]


def holder_of(ipr, address: ipaddress.IPv4Address) -> Optional[str]:
    """The name of the link that carries `address`, if any."""
    for link in all_links(ipr):
        if any(a.ip == address for a in link.addresses):
            return link.name
    return None


def interface_address(name: str, field: str = "--interface") -> Tuple[ipaddress.IPv4Interface, int]:
    """The first IPv4 address on link `name` in this network namespace, and the link's MTU.

    BadInput naming `field` when there is no such link or it has no IPv4 address.
    """
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        link = by_name(ipr, name)
        mtu = ipr.get_links(link.index)[0].get_attr("IFLA_MTU") if link else None
    if link is None:
        raise BadInput(field, name, "no such interface here")
    if not link.addresses:
        raise BadInput(field, name, "has no IPv4 address")
    return link.addresses[0], int(mtu or 1500)
