"""`invoke host.diagram` on the lab's namespaces, and the graph and DOT writer it is made of.

The drawing is checked the way a reader would: the SVG's text, and the .dot file read back by
Graphviz itself (`dot -Tjson`), not by our own parser.
"""

import ipaddress
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from netlink import links, state, topology
from pipeline import xl
from pipeline.config import GuestConfig
from pipeline.guest import xen_cfg
from pipeline.lab import diagram, read
from pipeline.mac import derive
from tests.conftest import invoke, ip_json, lab_with_guest

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(path: Path) -> list:
    return [t.text for t in ET.parse(str(path)).getroot().iter(f"{SVG}text") if t.text]


def read_dot(path: Path) -> dict:
    """Nodes {name: [label lines as drawn]} and edges [(tail, head, label)] as Graphviz reads them."""
    out = json.loads(
        subprocess.run(["dot", "-Tjson", str(path)], check=True, capture_output=True).stdout
    )
    names = {}
    nodes = {}
    for obj in out["objects"]:
        names[obj["_gvid"]] = obj["name"]
        if "nodes" not in obj and "subgraphs" not in obj:  # a node, not the dom0 cluster
            nodes[obj["name"]] = [op["text"] for op in obj.get("_ldraw_", []) if op["op"] == "T"]
    edges = [(names[e["tail"]], names[e["head"]], e.get("label", "")) for e in out.get("edges", [])]
    return {"nodes": nodes, "edges": edges}


def path_through(edges, *stops) -> bool:
    """Whether the edges lead from the first stop to the last through the others, in order."""
    follows = {}
    for tail, head, _ in edges:
        follows.setdefault(tail, set()).add(head)

    def reach(a, b, seen=()):
        return b in follows.get(a, ()) or any(
            reach(n, b, seen + (a,)) for n in follows.get(a, ()) if n not in seen and n not in stops
        )

    return all(reach(a, b) for a, b in zip(stops, stops[1:]))


@pytest.fixture
def drawn(lab, tmp_path):
    lab_with_guest(lab)
    site = tmp_path / "guests.yaml"
    site.write_text("host:\n  subnet: 192.0.2.0/28\nguests:\n  guest-01:\n    ip: 192.0.2.2\n")

    def draw(output, *args):
        return invoke("-f", str(site), "host.diagram", "--netns", lab["host"],
                      "--root", str(lab["root"]), "--output", str(output), *args)  # fmt: skip

    return draw


def test_svg_names_every_card_bridge_and_router_with_addresses(lab, drawn, tmp_path):
    out = tmp_path / "lab.svg"
    r = drawn(out)
    assert r.returncode == 0, r.stderr
    text = "\n".join(svg_texts(out))
    host = lab["host"]
    (eth0,) = ip_json(host, "-4", "addr", "show", "eth0")
    (br,) = ip_json(host, "-4", "addr", "show", "xenbr0")
    (vif,) = ip_json(host, "link", "show", "vif1.0")
    for expected in [
        "xenbr0",
        f"{br['addr_info'][0]['local']}/{br['addr_info'][0]['prefixlen']}",  # 192.0.2.1/28
        "eth0 (uplink NIC)",
        f"{eth0['addr_info'][0]['local']}/{eth0['addr_info'][0]['prefixlen']}",  # 198.51.100.2/30
        "default gateway 198.51.100.1",
        "vif1.0",
        vif["address"],
        "eth0 192.0.2.2/28",
        derive("guest-01"),
        "IPv4 forwarding on",
        "Internet",
    ]:
        assert expected in text, (expected, text)
    assert "autostart" not in text  # nothing is linked in ROOT/etc/xen/auto


def test_dot_read_back_has_the_path_router_uplink_bridge_vif_guest(drawn, tmp_path):
    out = tmp_path / "lab.dot"
    r = drawn(out)
    assert r.returncode == 0, r.stderr
    graph = read_dot(out)
    nodes = graph["nodes"]
    assert nodes["router"][:2] == ["upstream router", "default gateway 198.51.100.1"]
    assert nodes["nic:eth0"][:2] == ["eth0 (uplink NIC)", "198.51.100.2/30"]
    assert nodes["bridge:xenbr0"][:2] == ["xenbr0 (bridge)", "192.0.2.1/28"]
    assert nodes["vif:vif1.0"][0] == "vif1.0 (bridge port)"
    assert nodes["guest:guest-01"][:3] == [
        "guest-01 (domU)",
        "eth0 192.0.2.2/28",
        f"MAC {derive('guest-01')}",
    ]
    edges = graph["edges"]
    assert path_through(
        edges,
        "internet",
        "router",
        "nic:eth0",
        "dom0",
        "bridge:xenbr0",
        "vif:vif1.0",
        "guest:guest-01",
    ), edges
    # ...and no shortcut: the guest hangs off its vif only, the bridge off dom0 only.
    assert [e for e in edges if e[1] == "guest:guest-01"] == [
        ("vif:vif1.0", "guest:guest-01", "eth0")
    ]
    assert [e[0] for e in edges if e[1] == "bridge:xenbr0"] == ["dom0"]
    assert not path_through(edges, "guest:guest-01", "router")  # drawn top-down, in order


def test_a_png_output_is_a_png(drawn, tmp_path):
    png = tmp_path / "lab.png"
    r = drawn(png)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drawing_an_unchanged_lab_again_changes_nothing(drawn, tmp_path):
    out = tmp_path / "lab.svg"
    assert drawn(out).returncode == 0
    before = out.stat().st_mtime_ns, out.read_bytes()
    again = drawn(out)
    assert again.returncode == 0, again.stderr
    assert f"no changes: {out} already shows this" in again.stdout
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before


def test_dry_run_says_what_it_would_write_and_writes_nothing(drawn, tmp_path):
    out = tmp_path / "dry.svg"
    dry = drawn(out, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would write {out}" in dry.stdout
    assert not out.exists()


def test_autostart_link_and_a_guest_not_on_the_bridge(lab, drawn, tmp_path):
    xen = lab["root"] / "etc/xen"
    (xen / "auto").mkdir(parents=True)
    (xen / "guest-01.cfg").write_text(
        f"vif = ['ip=192.0.2.2,mac={derive('guest-01')},bridge=xenbr0']\n"
    )
    os.symlink("/etc/xen/guest-01.cfg", str(xen / "auto/guest-01.cfg"))
    site = tmp_path / "two.yaml"
    site.write_text("host:\n  subnet: 192.0.2.0/28\nguests:\n  guest-01:\n    ip: 192.0.2.2\n"
                    "  guest-02:\n    ip: 192.0.2.3\n")  # fmt: skip
    out = tmp_path / "two.dot"
    r = invoke("-f", str(site), "host.diagram", "--netns", lab["host"], "--root", str(lab["root"]),
               "--output", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    graph = read_dot(out)
    assert "autostart" in graph["nodes"]["guest:guest-01"]
    assert "autostart" not in graph["nodes"]["guest:guest-02"]
    assert graph["nodes"]["guest:guest-02"][:2] == ["guest-02 (domU)", "eth0 192.0.2.3/28"]
    assert ("bridge:xenbr0", "guest:guest-02", "not seen") in graph["edges"]


# --- the pieces, on data -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "label",
    [
        "plain",
        'say "hi"',
        "back\\slash",
        "two\nlines",
        "end \\",
        "\\n is not a newline",
        "{x} [y] <z> -> ;",
    ],
)
def test_dot_quoting_survives_graphviz(tmp_path, label):
    graph = diagram.Graph(
        nodes=(diagram.Node('a "b"', "guest", tuple(label.split("\n"))),), edges=(), dom0=()
    )
    path = tmp_path / "q.dot"
    path.write_text(diagram.to_dot(graph))
    nodes = read_dot(path)["nodes"]
    assert list(nodes) == ['a "b"']
    assert nodes['a "b"'] == label.split("\n")


XL_LIST = """\
Name                                        ID   Mem VCPUs\tState\tTime(s)
Domain-0                                     0  4096     4     r-----     161.8
guest-01                                     3  1024     2     -b----      12.4
web                                          5   512     1     -b----       3.0
"""
NETWORK_LIST = """\
Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path
0   0  00:16:3e:11:22:33     0     4     19   768/769         /local/domain/0/backend/vif/5/0
"""


def _link(index, name, kind="veth", master=None, mac="fe:ff:ff:ff:ff:ff", addresses=()):
    return links.Link(index, name, kind, True, "UP", master, mac,
                      [ipaddress.IPv4Interface(a) for a in addresses])  # fmt: skip


def _topology(neighbours=(), learned=()):
    lks = [
        _link(1, "lo", "", mac="00:00:00:00:00:00", addresses=["127.0.0.1/8"]),
        _link(2, "eth0", "", mac="52:54:00:0a:00:02", addresses=["198.51.100.2/30"]),
        _link(3, "xenbr0", "bridge", mac="fe:ff:ff:ff:ff:ff", addresses=["192.0.2.1/28"]),
        _link(4, "vif3.0", "", master=3),
        _link(5, "vif5.0", "", master=3),
    ]
    br = topology.Bridge(
        state.BridgeState("xenbr0", True, "up", ["192.0.2.1/28"], ["vif3.0", "vif5.0"], True),
        "fe:ff:ff:ff:ff:ff", False, 0x8000,
    )  # fmt: skip
    routes = [
        topology.Route(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("198.51.100.1"), "eth0", None, 0),
        topology.Route(ipaddress.IPv4Network("192.0.2.0/28"), None, "xenbr0", ipaddress.IPv4Address("192.0.2.1"), 0),
    ]  # fmt: skip
    return topology.Topology(lks, [br], routes, list(neighbours), list(learned), True)


def test_recorded_xl_output_puts_running_domains_on_their_vifs():
    """Where Xen runs: xl list's domain ids name the vifs (vifDOMID.0), network-list their MACs,
    ARP gives the address of a domain the site does not know."""
    xen = read.XenState(
        xl.parse_list(XL_LIST),
        {"guest-01": {}, "web": xl.parse_network_list(NETWORK_LIST)},
    )
    topo = _topology(
        neighbours=[
            topology.Neighbour(ipaddress.IPv4Address("192.0.2.9"), "00:16:3e:11:22:33", "xenbr0")
        ]
    )
    guests = read.find_guests(topo, {"guest-01": GuestConfig(ip="192.0.2.2")}, "xenbr0", xen)
    by_name = {g.name: g for g in guests}
    assert by_name["guest-01"] == read.Guest(
        "guest-01", "192.0.2.2/28", derive("guest-01"), "vif3.0", "xenbr0", 3, False, True
    )
    assert by_name["web"] == read.Guest(
        "web", "192.0.2.9/28", "00:16:3e:11:22:33", "vif5.0", "xenbr0", 5, False, False
    )
    graph = diagram.build(topo, guests, xen)
    assert ("vif:vif3.0", "guest:guest-01", "eth0") in [
        (e.tail, e.head, e.label) for e in graph.edges
    ]
    assert "Domain-0: 4096 MiB, 4 vCPUs" in graph.node("dom0").lines
    assert graph.node("guest:web").lines[:3] == (
        "web (domU, id 5)",
        "eth0 192.0.2.9/28",
        "MAC 00:16:3e:11:22:33",
    )


def test_a_site_guest_xl_does_not_list_is_not_running():
    xen = read.XenState(xl.parse_list(XL_LIST.splitlines()[0] + "\n" + XL_LIST.splitlines()[1]), {})
    topo = _topology()
    guests = read.find_guests(topo, {"db": GuestConfig(ip="192.0.2.4")}, "xenbr0", xen)
    graph = diagram.build(topo, guests, xen)
    assert "not running (not in xl list)" in graph.node("guest:db").lines
    assert ("bridge:xenbr0", "guest:db", "not seen") in [
        (e.tail, e.head, e.label) for e in graph.edges
    ]


def test_no_default_route_means_no_router_or_internet():
    topo = _topology()
    topo = topology.Topology(topo.links, topo.bridges, topo.routes[1:], [], [], False)
    graph = diagram.build(topo, [])
    ids = {n.id for n in graph.nodes}
    assert "router" not in ids and "internet" not in ids and "nic:eth0" not in ids
    assert "IPv4 forwarding off" in graph.node("dom0").lines


def test_parse_vifs_and_network_list():
    cfg = "name = 'g'\nvif = [ 'ip=192.0.2.2,mac=00:16:3e:00:00:01,bridge=xenbr0',\n  \"mac=00:16:3e:00:00:02\" ]\n"
    assert xen_cfg.parse_vifs(cfg) == [
        {"ip": "192.0.2.2", "mac": "00:16:3e:00:00:01", "bridge": "xenbr0"},
        {"mac": "00:16:3e:00:00:02"},
    ]
    assert xen_cfg.parse_vifs("memory = 1024\n") == []
    assert xl.parse_network_list(NETWORK_LIST) == {0: "00:16:3e:11:22:33"}
    assert xl.parse_network_list("") == {}


def test_autostart_follows_the_link(tmp_path):
    xen = tmp_path / "etc/xen"
    (xen / "auto").mkdir(parents=True)
    assert xen_cfg.autostart(tmp_path, "g") == xen_cfg.Autostart(False, "no")
    os.symlink("/etc/xen/g.cfg", str(xen / "auto/g.cfg"))
    assert not xen_cfg.autostart(tmp_path, "g").on  # the cfg it names is missing
    (xen / "g.cfg").write_text("name = 'g'\n")
    assert xen_cfg.autostart(tmp_path, "g") == xen_cfg.Autostart(True, "yes")
    os.unlink(str(xen / "auto/g.cfg"))
    os.symlink("../g.cfg", str(xen / "auto/g.cfg"))
    assert xen_cfg.autostart(tmp_path, "g").on
    (xen / "other.cfg").write_text("")
    os.symlink("/etc/xen/g.cfg", str(xen / "auto/other.cfg"))
    assert xen_cfg.autostart(tmp_path, "other") == xen_cfg.Autostart(
        False, "no (the link points to /etc/xen/g.cfg)"
    )
    assert xen_cfg.autostart_names(tmp_path) == ["g", "other"]


@pytest.mark.parametrize(
    "path, fmt",
    [("lab.svg", "svg"), ("out/b.PNG", "png"), ("c.Dot", "dot"), ("/tmp/x.y.svg", "svg")],
)
def test_the_output_format_comes_from_the_suffix_in_any_case(path, fmt):
    assert diagram.output_format(path) == fmt


@pytest.mark.parametrize("path", ["d.jpg", "svg", "lab.svg.bak", "lab.", "lab.pdf"])
def test_a_suffix_xenlab_does_not_draw_has_no_format(path):
    assert diagram.output_format(path) is None


def test_dot_output_is_the_dot_text_itself():
    text = diagram.to_dot(diagram.Graph((), (), ()))
    assert diagram.render(text, "dot") == text.encode()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_an_empty_graph_is_a_digraph_graphviz_draws(tmp_path):
    text = diagram.to_dot(diagram.Graph((), (), ()))
    assert re.match(r"^digraph lab \{", text)
    svg = tmp_path / "empty.svg"
    svg.write_bytes(diagram.render(text, "svg"))
    assert ET.parse(str(svg)).getroot().tag == f"{SVG}svg"


@pytest.mark.parametrize("name", ["lab.jpg", "lab", "lab.svg.bak"])
def test_diagram_task_refuses_a_suffix_it_cannot_draw_naming_output(tmp_path, name):
    out = tmp_path / name
    r = invoke("host.diagram", "--output", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"--output = '{out}': must end in .svg, .png, .dot" in r.stderr
    assert not out.exists()


def test_diagram_task_refuses_an_output_folder_that_does_not_exist(tmp_path):
    out = tmp_path / "nowhere" / "lab.svg"
    r = invoke("host.diagram", "--output", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"--output = '{out}': its folder does not exist" in r.stderr
    assert not out.parent.exists()


def test_a_guest_only_in_etc_xen_is_drawn_from_its_cfg():
    """A cfg linked in /etc/xen/auto that the site does not name: its vif line says where it goes;
    a value that is not an address is left out, not fatal."""
    cfgs = {
        "old": "vif = ['ip=192.0.2.7,mac=00:16:3E:00:00:07,bridge=xenbr0']\n",
        "odd": "vif = ['ip=not-an-ip,bridge=xenbr0']\n",
    }
    guests = read.find_guests(_topology(), {}, "xenbr0", None, cfgs)
    assert [(g.name, g.address, g.mac, g.bridge, g.in_site) for g in guests] == [
        ("odd", None, None, "xenbr0", False),
        ("old", "192.0.2.7/28", "00:16:3e:00:00:07", "xenbr0", False),
    ]
    graph = diagram.build(_topology(), guests)
    assert graph.node("guest:odd").lines[1:3] == ("eth0 address unknown", "MAC unknown")
    assert ("bridge:xenbr0", "guest:old", "not seen") in [
        (e.tail, e.head, e.label) for e in graph.edges
    ]
