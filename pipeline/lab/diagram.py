"""The lab as a drawing: a graph built only from what pipeline.lab.read found (netlink, xl,
/etc/xen, the site's guests), written as Graphviz DOT and rendered by `dot`.

Internet - upstream router (the default gateway) - uplink NIC - dom0 (routing, forwarding)
- bridge - vif (bridge port) - guest (eth0 address, MAC). Nothing in a label is written for the
lab: every name, address and MAC comes from the state passed in.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from netlink.topology import Topology
from pipeline.errors import Failed
from pipeline.lab.read import Guest, XenState
from pipeline.runner import Runner, run_checked

FORMATS = ("svg", "png", "dot")


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
    proc = run_checked(["dot", f"-T{fmt}"], input=dot_text.encode(), text=False)
    return proc.stdout


def save(runner: Runner, path: Path, data: bytes) -> bool:
    """Write `data` to `path` (absolute: where the user asked, whatever --root says) through the
    runner unless it already holds it; True if it changed (or would). A rollback puts back what
    was there."""
    return runner.write_bytes(str(path), data, 0o644, under_root=False)
