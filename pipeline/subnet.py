"""Address math for the subnet routed to the host: which address the bridge gets, which guests may have.

Functions raise ValueError with a reason; the config model turns that into an error naming the field.
"""

import ipaddress
from typing import Optional

# The bridge plus at least one guest: a /31 or /32 leaves no room for both.
LONGEST_PREFIX = 30
# The widest block taken as "the subnet routed to this host". The bridge's connected route claims
# the whole block as on-link: wider than a /16 (65,534 guests, far more than one Xen host runs)
# it would shadow the host's other routes into that space, and no provider routes a block that
# large to one server. 0.0.0.0/0 and the like are typos or a misunderstanding, not a lab.
SHORTEST_PREFIX = 16

# Blocks that can never be a subnet routed to a host, by what they are (RFC 6890); each is at
# least a /16, so a subnet that passes the SHORTEST_PREFIX check overlaps one only by lying in it. The
# documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) stay allowed: the default
# site and the tests use them; private ranges (RFC 1918) and shared space are real labs.
UNROUTABLE = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "in 'this network' (0.0.0.0/8), which no host may use"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "in loopback (127.0.0.0/8), which is lo's alone"),
    (
        ipaddress.IPv4Network("169.254.0.0/16"),
        "in link-local (169.254.0.0/16), which is never routed",
    ),
    (
        ipaddress.IPv4Network("224.0.0.0/4"),
        "in multicast (224.0.0.0/4): group addresses, not hosts",
    ),
    (ipaddress.IPv4Network("240.0.0.0/4"), "in class E (240.0.0.0/4), reserved and not usable"),
)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """The routed subnet, strictly: '192.0.2.5/28' names a host, not a network, and is refused."""
    text = str(text)
    if text != text.strip() or not text.isprintable():
        raise ValueError("has spaces or control characters in it (a newline?)")
    if "/" not in text:
        raise ValueError("needs a prefix length, e.g. 192.0.2.0/28")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"has host bits set; the network would be {loose}") from None
        raise ValueError("is not an IPv4 network") from None
    if net.version != 4:
        raise ValueError("only IPv4 subnets are supported")
    if net.prefixlen > LONGEST_PREFIX:
        raise ValueError(f"a /{net.prefixlen} has no room for the bridge and a guest (at most /30)")
    if net.prefixlen == 0:
        raise ValueError("is every IPv4 address (the default route), not a subnet routed to a host")
    for block, what in UNROUTABLE:
        if net.subnet_of(block):
            raise ValueError(f"is {what}")
    if net.prefixlen < SHORTEST_PREFIX:
        raise ValueError(
            f"a /{net.prefixlen} is wider than a subnet routed to one host (at least"
            f" /{SHORTEST_PREFIX}): the bridge would claim all of it as on-link"
        )
    return net


def first_usable(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + 1


def host_address_problem(
    net: ipaddress.IPv4Network, address: ipaddress.IPv4Address
) -> Optional[str]:
    """Why `address` cannot be a host's address in `net`, or None when it can."""
    if address not in net:
        return f"is outside {net}"
    if address == net.network_address:
        return f"is the network address of {net}"
    if address == net.broadcast_address:
        return f"is the broadcast address of {net}"
    return None


def parse_address(text: str) -> ipaddress.IPv4Address:
    text = str(text)
    if text != text.strip() or not text.isprintable():
        raise ValueError("has spaces or control characters in it (a newline?)")
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError("is not an IPv4 address") from None


def bridge_interface(
    net: ipaddress.IPv4Network, explicit: Optional[ipaddress.IPv4Address] = None
) -> ipaddress.IPv4Interface:
    """The bridge's address with the subnet's prefix: the explicit one if valid, else the first usable."""
    address = first_usable(net) if explicit is None else explicit
    why = host_address_problem(net, address)
    if why:
        raise ValueError(why)
    return ipaddress.IPv4Interface(f"{address}/{net.prefixlen}")
