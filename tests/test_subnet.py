"""Address math: which address the bridge gets, which addresses are refused."""

import ipaddress

import pytest

from pipeline import subnet


@pytest.mark.parametrize(
    "text, first, last_usable",
    [
        ("145.100.111.0/28", "145.100.111.1", "145.100.111.14"),
        ("192.0.2.16/28", "192.0.2.17", "192.0.2.30"),
        ("198.51.100.8/29", "198.51.100.9", "198.51.100.14"),
        ("203.0.113.4/30", "203.0.113.5", "203.0.113.6"),
        ("10.20.0.0/16", "10.20.0.1", "10.20.255.254"),  # the widest (subnet.SHORTEST_PREFIX)
    ],
)
def test_first_usable_and_last_host(text, first, last_usable):
    net = subnet.parse_subnet(text)
    assert str(subnet.first_usable(net)) == first
    assert str(subnet.bridge_interface(net)) == f"{first}/{net.prefixlen}"
    assert subnet.host_address_problem(net, ipaddress.IPv4Address(last_usable)) is None


def test_lab_subnet_gives_dot_one_with_the_prefix():
    iface = subnet.bridge_interface(subnet.parse_subnet("145.100.111.0/28"))
    assert str(iface) == "145.100.111.1/28"
    assert iface.network == ipaddress.IPv4Network("145.100.111.0/28")


@pytest.mark.parametrize(
    "text, words",
    [
        ("145.100.111.5/28", "host bits set; the network would be 145.100.111.0/28"),
        ("145.100.111.0", "needs a prefix length"),
        ("192.0.2.0/31", "no room"),
        ("192.0.2.1/32", "no room"),
        ("2001:db8::/64", "only IPv4"),
        ("not-a-net/28", "is not an IPv4 network"),
        ("192.0.2.0/33", "is not an IPv4 network"),
        ("0.0.0.0/0", "every IPv4 address"),
        ("10.0.0.0/15", "wider than a subnet routed to one host"),
        ("224.0.0.0/24", "multicast"),
        ("240.0.0.0/28", "class E"),
        ("0.0.0.0/28", "'this network'"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.1.0/24", "link-local"),
    ],
)
def test_bad_subnets_say_why(text, words):
    with pytest.raises(ValueError, match=words.split(";")[0]):
        subnet.parse_subnet(text)


@pytest.mark.parametrize(
    "net, address, words",
    [
        ("192.0.2.0/28", "192.0.2.0", "network address"),
        ("192.0.2.0/28", "192.0.2.15", "broadcast address"),
        ("192.0.2.0/28", "192.0.2.16", "outside"),
        ("203.0.113.4/30", "203.0.113.4", "network address"),
        ("203.0.113.4/30", "203.0.113.7", "broadcast address"),
        ("203.0.113.4/30", "203.0.113.8", "outside"),
    ],
)
def test_explicit_address_must_be_a_host_in_the_subnet(net, address, words):
    with pytest.raises(ValueError, match=words):
        subnet.bridge_interface(subnet.parse_subnet(net), ipaddress.IPv4Address(address))


def test_explicit_address_inside_is_taken():
    net = subnet.parse_subnet("203.0.113.4/30")
    assert (
        str(subnet.bridge_interface(net, ipaddress.IPv4Address("203.0.113.6"))) == "203.0.113.6/30"
    )
