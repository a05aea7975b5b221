"""netlink.topology on real namespaces: what it reads is what `ip -j` and `bridge -j` report."""

import ipaddress
import json

import pytest

from netlink import topology
from pipeline.errors import BadInput
from pipeline.mac import derive
from tests.conftest import ip_json, lab_with_guest, sh


def test_reads_links_addresses_bridge_routes_and_what_was_seen(lab):
    lab_with_guest(lab)
    host = lab["host"]
    topo = topology.read(host)

    # Links and addresses as ip -j addr gives them.
    want = {
        a["ifname"]: (
            a["address"],
            sorted(
                f"{i['local']}/{i['prefixlen']}" for i in a["addr_info"] if i["family"] == "inet"
            ),
        )
        for a in ip_json(host, "addr", "show")
    }
    got = {link.name: (link.mac, sorted(str(x) for x in link.addresses)) for link in topo.links}
    assert got == want
    kinds = {link.name: link.kind for link in topo.links}
    assert kinds["xenbr0"] == "bridge" and kinds["eth0"] == "veth" and kinds["vif1.0"] == "veth"

    # The default route, its gateway and the uplink it leaves by.
    routes = ip_json(host, "-4", "route", "show", "table", "main")
    (default,) = [r for r in routes if r["dst"] == "default"]
    assert str(topo.gateway) == default["gateway"] == "198.51.100.1"
    assert topo.uplink.name == default["dev"] == "eth0"
    assert sorted(str(r) for r in topo.routes if not r.is_default) == sorted(
        f"{r['dst']} dev {r['dev']} src {r['prefsrc']}" for r in routes if r["dst"] != "default"
    )
    assert [str(r.dst) for r in topo.route_to("xenbr0")] == ["192.0.2.0/28"]

    # The bridge, its port and its id as ip -d reports them; forwarding.
    (br,) = ip_json(host, "-d", "link", "show", "xenbr0")
    bridge = topo.bridge("xenbr0")
    assert bridge.members == [
        p["ifname"] for p in ip_json(host, "link", "show", "master", "xenbr0")
    ]
    assert bridge.members == ["vif1.0"]
    assert bridge.state.addresses == ["192.0.2.1/28"]
    assert bridge.stp is False
    data = br["linkinfo"]["info_data"]
    priority, mac = data["bridge_id"].split(".")  # ip drops leading zeros: 8000.a:25:cd:...
    assert bridge.priority == int(priority, 16) == data["priority"]
    assert bridge.bridge_id == f"{bridge.priority:04x}." + "".join(
        f"{int(x, 16):02x}" for x in mac.split(":")
    )
    assert topo.forwarding is True

    # What the host has seen: the guest's MAC in ARP and learned on vif1.0, the gateway's MAC.
    guest_mac = derive("guest-01")
    assert topo.neighbour(ipaddress.IPv4Address("192.0.2.2")).mac == guest_mac
    assert topo.port_of(guest_mac) == topology.Learned(guest_mac, "vif1.0", "xenbr0")
    fdb = json.loads(sh("bridge", "-n", host, "-j", "fdb", "show", "br", "xenbr0").stdout)
    assert {
        e["mac"]
        for e in fdb
        if e.get("ifname") == "vif1.0" and "permanent" not in e.get("state", "")
    } >= {guest_mac}
    (router_link,) = ip_json(lab["router"], "link", "show", "r-up")
    assert topo.neighbour(topo.gateway).mac == router_link["address"]


def test_a_host_without_default_route_or_bridge(netns):
    bare = netns("bare")
    topo = topology.read(bare)
    assert topo.default_route is None and topo.gateway is None and topo.uplink is None
    assert topo.bridges == []
    assert [link.name for link in topo.links] == ["lo"]
    assert topo.forwarding is False


def test_missing_namespace_is_bad_input():
    with pytest.raises(BadInput) as err:
        topology.read("xl-no-such-ns")
    assert "xl-no-such-ns" in str(err.value)
