"""Address math for the subnet routed to the host: which address the bridge gets, which guests may have.

Functions raise ValueError with a reason; the config model turns that into an error naming the field.
"""

import ipaddress
from typing import Optional

# The bridge plus at least one guest: a /31 or /32 leaves no room for both.
LONGEST_PREFIX = 30


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """The routed subnet, strictly: '192.0.2.5/28' names a host, not a network, and is refused."""
    text = str(text).strip()
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
    try:
        return ipaddress.IPv4Address(str(text).strip())
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
