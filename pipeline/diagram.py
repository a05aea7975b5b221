"""The lab as a drawing: a graph built only from what was read (netlink, xl, /etc/xen, the site's
guests), written as Graphviz DOT and rendered by `dot`.

Internet - upstream router (the default gateway) - uplink NIC - dom0 (routing, forwarding)
- bridge - vif (bridge port) - guest (eth0 address, MAC). Nothing in a label is written for the
lab: every name, address and MAC comes from the state passed in.
"""

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from netlink import topology
from netlink.topology import Topology
from pipeline import mac as xen_mac
from pipeline import xl
from pipeline.errors import Failed
from pipeline.runner import Runner

FORMATS = ("svg", "png", "dot")


# --- the guests: the site's, xl's domains, their /etc/xen cfg, matched to bridge ports ------------
@dataclass(frozen=True)
class Guest:
    name: str
    address: Optional[str]  # eth0's IPv4 address, with the bridge network's prefix when known
    mac: Optional[str]  # eth0's MAC
    vif: Optional[str]  # the bridge port on dom0's side
    bridge: Optional[str]
    domain_id: Optional[int]  # set when xl lists it (it runs)
    autostart: bool
    in_site: bool


@dataclass(frozen=True)
class Autostart:
    on: bool
    note: str  # 'yes', 'no', or why not/how


def autostart(root: Path, name: str) -> Autostart:
    """Whether ROOT/etc/xen/auto/NAME.cfg links to ROOT/etc/xen/NAME.cfg (xendomains starts it at boot).

    The link may point at /etc/xen/NAME.cfg as on the host itself, or be relative.
    """
    link = root / "etc/xen/auto" / f"{name}.cfg"
    cfg = os.path.normpath(str(root / "etc/xen" / f"{name}.cfg"))
    if not link.is_symlink():
        if link.is_file():
            return Autostart(True, "yes (a copy in /etc/xen/auto, not a link)")
        return Autostart(False, "no")
    target = os.readlink(str(link))
    if os.path.isabs(target):
        candidates = [target, str(root / target.lstrip("/"))]
    else:
        candidates = [str(link.parent / target)]
    if any(os.path.normpath(c) == cfg for c in candidates):
        if not os.path.isfile(cfg):
            return Autostart(False, f"no (the link points to {target}, which is missing)")
        return Autostart(True, "yes")
    return Autostart(False, f"no (the link points to {target})")


_VIF = re.compile(r"^\s*vif\s*=\s*\[(.*?)\]", re.S | re.M)
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def parse_vifs(cfg_text: str) -> List[Dict[str, str]]:
    """The `vif = ['ip=...,mac=...,bridge=...']` entries of an xl.cfg, as dicts."""
    match = _VIF.search(cfg_text)
    if not match:
        return []
    vifs = []
    for single, double in _QUOTED.findall(match.group(1)):
        spec = single or double
        vifs.append(
            {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in spec.split(",")) if k}
        )
    return vifs


def parse_network_list(text: str) -> Dict[int, str]:
    """`xl network-list DOMAIN`: {device index: MAC}."""
    found = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].isdigit() and re.match(r"^[0-9a-f:]{17}$", words[2], re.I):
            found[int(words[0])] = words[2].lower()
    return found


@dataclass(frozen=True)
class XenState:
    """What xl says, where Xen runs: the domains and each one's vif MACs."""

    domains: List[xl.Domain]
    vif_macs: Dict[str, Dict[int, str]]  # domain name -> {devid: MAC}


def read_xen() -> Optional[XenState]:
    """xl's view, or None where there is no xl or no hypervisor to ask."""
    listing = xl.run("list")
    if listing is None:
        return None
    domains = xl.parse_list(listing)
    macs = {}
    for dom in domains:
        if dom.id != 0:
            macs[dom.name] = parse_network_list(xl.run("network-list", dom.name) or "")
    return XenState(domains, macs)


def read_cfgs(root: Path, names: Sequence[str]) -> Dict[str, str]:
    """The text of ROOT/etc/xen/NAME.cfg for the names that have one."""
    found = {}
    for name in names:
        path = root / "etc/xen" / f"{name}.cfg"
        if path.is_file():
            found[name] = path.read_text(errors="replace")
    return found


def find_guests(
    topo: Topology,
    site_guests: Mapping[str, object],
    default_bridge: str,
    xen: Optional[XenState] = None,
    cfgs: Optional[Mapping[str, str]] = None,
    autostarts: Optional[Mapping[str, Autostart]] = None,
) -> List[Guest]:
    """The guests to draw: the site's (GuestConfig: ip, bridge) and every domain xl lists, each
    matched to its bridge port by what the host sees: Xen's vif name (vifDOMID.DEVID) for a
    running domain, else the bridge port that learned the guest's MAC (from the ARP entry of its
    address, or the MAC its cfg or name gives)."""
    cfgs = cfgs or {}
    autostarts = autostarts or {}
    domains = {d.name: d for d in (xen.domains if xen else []) if d.id != 0}
    names = list(site_guests)
    names += sorted(n for n in set(domains) | set(cfgs) if n not in site_guests)
    guests = []
    for name in names:
        conf = site_guests.get(name)
        vif_cfg = (parse_vifs(cfgs[name]) or [{}])[0] if name in cfgs else {}
        dom = domains.get(name)
        xl_mac = (xen.vif_macs.get(name, {}) if xen else {}).get(0)

        ip = getattr(conf, "ip", None) or vif_cfg.get("ip", "").split(" ")[0] or None
        address = _address(ip)
        configured_mac = xl_mac or vif_cfg.get("mac") or (xen_mac.derive(name) if conf else None)
        seen = topo.neighbour(address) if address else None
        mac = (xl_mac or (seen.mac if seen else None) or configured_mac or "").lower() or None
        if address is None and mac:
            by_mac = topo.neighbour_with_mac(mac)
            address = by_mac.address if by_mac else None

        vif = None
        if dom is not None:
            vif = _xen_vif(topo, dom.id)
        if vif is None:
            for candidate in (mac, configured_mac):
                learned = topo.port_of(candidate) if candidate else None
                if learned:
                    vif = learned.port
                    break
        bridge = _master(topo, vif) or getattr(conf, "bridge", None) or vif_cfg.get("bridge")
        guests.append(
            Guest(
                name=name,
                address=_with_prefix(topo, address),
                mac=mac,
                vif=vif,
                bridge=bridge or (default_bridge if conf else None),
                domain_id=dom.id if dom else None,
                autostart=autostarts[name].on if name in autostarts else False,
                in_site=conf is not None,
            )
        )
    return guests


def _address(value: object) -> Optional[ipaddress.IPv4Address]:
    """The site's address, or the first one a cfg's vif names; None if there is none or it is not
    an address (a hand-written cfg is read, not judged)."""
    try:
        return ipaddress.IPv4Address(str(value)) if value else None
    except ValueError:
        return None


def _xen_vif(topo: Topology, domid: int) -> Optional[str]:
    """Xen's vif-bridge names the backend of device N of domain D `vifD.N` (`-emu` for HVM's tap)."""
    for name in (f"vif{domid}.0", f"vif{domid}.0-emu"):
        if topo.link(name) is not None:
            return name
    ports = sorted(
        link.name for link in topo.links if link.name.startswith(f"vif{domid}.") and link.master
    )
    return ports[0] if ports else None


def _master(topo: Topology, port: Optional[str]) -> Optional[str]:
    link = topo.link(port) if port else None
    if link is None or link.master is None:
        return None
    return next((m.name for m in topo.links if m.index == link.master), None)


def _with_prefix(topo: Topology, address: Optional[ipaddress.IPv4Address]) -> Optional[str]:
    if address is None:
        return None
    for bridge in topo.bridges:
        for iface in bridge.state.addresses:
            net = ipaddress.IPv4Interface(iface).network
            if address in net:
                return f"{address}/{net.prefixlen}"
    return str(address)


@dataclass(frozen=True)
class Lab:
    """Everything read for one drawing or report."""

    topology: Topology
    xen: Optional[XenState]
    guests: List[Guest]
    autostarts: Dict[str, Autostart]


def autostart_names(root: Path) -> List[str]:
    """The guests linked in ROOT/etc/xen/auto."""
    auto = root / "etc/xen/auto"
    return sorted(p.name[: -len(".cfg")] for p in auto.glob("*.cfg")) if auto.is_dir() else []


def read_lab(
    site_guests: Mapping[str, object], bridge: str, root: Path, netns: Optional[str]
) -> Lab:
    """Read the network (in `netns`), xl's domains, and /etc/xen under `root`."""
    topo = topology.read(netns)
    xen = read_xen()
    names = list(site_guests) + autostart_names(root)
    names += [d.name for d in (xen.domains if xen else []) if d.id != 0]
    names = list(dict.fromkeys(names))
    cfgs = read_cfgs(root, names)
    autostarts = {name: autostart(root, name) for name in names}
    guests = find_guests(topo, site_guests, bridge, xen, cfgs, autostarts)
    return Lab(topo, xen, guests, autostarts)


# --- the graph ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # internet, router, nic, dom0, bridge, vif, guest
    lines: Tuple[str, ...]  # the label: a title line, then facts


@dataclass(frozen=True)
class Edge:
    tail: str
    head: str
    label: str = ""


@dataclass(frozen=True)
class Graph:
    nodes: Tuple[Node, ...]
    edges: Tuple[Edge, ...]
    dom0: Tuple[str, ...]  # the ids of the nodes inside dom0 (drawn as one box)

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)


def build(topo: Topology, guests: Sequence[Guest], xen: Optional[XenState] = None) -> Graph:
    nodes: List[Node] = []
    edges: List[Edge] = []
    dom0: List[str] = []

    route = topo.default_route
    uplink = topo.uplink
    if route is not None and route.gateway is not None:
        seen = topo.neighbour(route.gateway)
        nodes.append(Node("internet", "internet", ("Internet",)))
        nodes.append(
            Node(
                "router",
                "router",
                ("upstream router", f"default gateway {route.gateway}")
                + ((f"MAC {seen.mac}",) if seen else ()),
            )
        )
        edges.append(Edge("internet", "router"))

    # dom0 itself: its routing table and whether it forwards.
    facts = [f"IPv4 forwarding {'on' if topo.forwarding else 'off'}"]
    if xen is not None:
        facts += [
            f"Domain-0: {d.memory_mib} MiB, {d.vcpus} vCPUs" for d in xen.domains if d.id == 0
        ]
    facts += [f"route {r}" for r in topo.routes]
    nodes.append(Node("dom0", "dom0", ("dom0 routing",) + tuple(facts)))
    dom0.append("dom0")

    if uplink is not None:
        uid = f"nic:{uplink.name}"
        nodes.append(
            Node(
                uid,
                "nic",
                (f"{uplink.name} (uplink NIC)",)
                + tuple(str(a) for a in uplink.addresses)
                + (f"MAC {uplink.mac}", f"state {uplink.operstate.lower()}"),
            )
        )
        dom0.append(uid)
        if "router" in {n.id for n in nodes}:
            edges.append(Edge("router", uid, "default route"))
        edges.append(Edge(uid, "dom0"))

    by_port = {g.vif: g for g in guests if g.vif}
    for bridge in topo.bridges:
        bid = f"bridge:{bridge.name}"
        nodes.append(
            Node(
                bid,
                "bridge",
                (f"{bridge.name} (bridge)",)
                + tuple(bridge.state.addresses)
                + (f"state {bridge.state.state}", f"STP {'on' if bridge.stp else 'off'}"),
            )
        )
        dom0.append(bid)
        routed = ", ".join(str(r.dst) for r in topo.route_to(bridge.name))
        edges.append(Edge("dom0", bid, f"routes {routed}" if routed else ""))
        for port in bridge.members:
            link = topo.link(port)
            pid = f"vif:{port}"
            lines = [f"{port} (bridge port)"]
            if link is not None:
                lines += [f"MAC {link.mac}", f"state {link.operstate.lower()}"]
            nodes.append(Node(pid, "vif", tuple(lines)))
            dom0.append(pid)
            edges.append(Edge(bid, pid))
            if port in by_port:
                edges.append(Edge(pid, f"guest:{by_port[port].name}", "eth0"))

    bridges = {b.name for b in topo.bridges}
    for guest in guests:
        title = f"{guest.name} (domU"
        title += f", id {guest.domain_id})" if guest.domain_id is not None else ")"
        lines = [title, f"eth0 {guest.address or 'address unknown'}"]
        lines.append(f"MAC {guest.mac}" if guest.mac else "MAC unknown")
        if xen is not None and guest.domain_id is None:
            lines.append("not running (not in xl list)")
        if guest.autostart:
            lines.append("autostart")
        nodes.append(Node(f"guest:{guest.name}", "guest", tuple(lines)))
        if guest.vif is None and guest.bridge in bridges:
            # Not seen on the bridge: drawn where it would attach, dashed.
            edges.append(Edge(f"bridge:{guest.bridge}", f"guest:{guest.name}", "not seen"))
    return Graph(tuple(nodes), tuple(edges), tuple(dom0))


# --- DOT ------------------------------------------------------------------------------------------
_STYLE = {
    "internet": 'shape=ellipse, style="dashed"',
    "router": 'shape=box, style="rounded,bold"',
    "nic": 'shape=box, style="filled", fillcolor="#e8f0fe"',
    "dom0": 'shape=box, style="filled", fillcolor="#fff4d6"',
    "bridge": 'shape=box, style="filled", fillcolor="#e6f4ea"',
    "vif": 'shape=box, style="filled", fillcolor="#f1f3f4"',
    "guest": 'shape=box, style="rounded,filled", fillcolor="#fce8e6"',
}


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as DOT's centred `\\n`."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r", "").replace("\n", "\\n") + '"'


def to_dot(graph: Graph) -> str:
    out = [
        "digraph lab {",
        '  graph [rankdir=TB, fontname="Helvetica", nodesep=0.4, ranksep=0.45];',
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [dir=none, fontname="Helvetica", fontsize=10];',
    ]

    def node_line(node: Node, indent: str) -> str:
        label = quote("\n".join(node.lines))
        return f"{indent}{quote(node.id)} [label={label}, {_STYLE[node.kind]}];"

    inside = set(graph.dom0)
    for node in graph.nodes:
        if node.id not in inside:
            out.append(node_line(node, "  "))
    if graph.dom0:
        out.append(f"  subgraph {quote('cluster_dom0')} {{")
        out.append(f'    label={quote("dom0: this host (Xen Domain-0)")}; style="rounded";')
        for node in graph.nodes:
            if node.id in inside:
                out.append(node_line(node, "    "))
        out.append("  }")
    for edge in graph.edges:
        attrs = ""
        if edge.label:
            attrs = f" [label={quote(edge.label)}"
            attrs += ', style="dashed"]' if edge.label == "not seen" else "]"
        out.append(f"  {quote(edge.tail)} -> {quote(edge.head)}{attrs};")
    out.append("}")
    return "\n".join(out) + "\n"


def output_format(path: str) -> Optional[str]:
    """svg, png or dot from the file name; None for anything else."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else None


def render(dot_text: str, fmt: str) -> bytes:
    """The drawing in `fmt` (svg, png; dot is the text itself), made by Graphviz's `dot`."""
    if fmt == "dot":
        return dot_text.encode()
    if shutil.which("dot") is None:
        raise Failed(
            "Graphviz's dot is not installed (Debian package graphviz; ./setup installs it)"
        )
    proc = subprocess.run(["dot", f"-T{fmt}"], input=dot_text.encode(), capture_output=True)
    if proc.returncode != 0:
        raise Failed(f"dot -T{fmt} exited {proc.returncode}: {proc.stderr.decode().strip()}")
    return proc.stdout


def save(runner: Runner, path: Path, data: bytes) -> bool:
    """Write `data` to `path` (absolute) through the runner unless it already holds it; True if it
    changed (or would). A rollback puts back what was there."""
    old = path.read_bytes() if path.is_file() else None
    if old == data:
        return False

    def write(content: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(content)
        os.chmod(str(tmp), 0o644)
        os.replace(str(tmp), str(path))

    def undo() -> None:
        if old is None:
            path.unlink()
        else:
            write(old)

    if not runner.dry_run and not path.parent.is_dir():
        raise Failed(f"cannot write {path}: {path.parent} is not a directory")
    runner.change(f"write {path} ({len(data)} bytes)", lambda: write(data), undo)
    return True
