"""`host.network`: the routed bridge for the guests, live over netlink and persisted for the next boot."""

import ipaddress
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from pyroute2 import IPRoute, NetlinkError

from netlink import bridge, forwarding, links, namespace, netplan, state, sysctl, topology
from pipeline.config import HostConfig
from pipeline.errors import BadInput, Failed, Problem
from pipeline.runner import Runner

SUBNET = "host.subnet"


@dataclass(frozen=True)
class Files:
    netplan: str
    sysctl: str


def configure(host: HostConfig, runner: Runner, netns: Optional[str] = None) -> state.BridgeState:
    """Make the bridge, its address and forwarding as `host` says; the resulting state.

    All checks come first: bad input raises BadInput before anything changes, and so does a
    subnet that would cut the host off its own network (see `safety_problems`). A failure after
    that rolls back what this run changed.
    """
    iface = host.bridge_interface
    files = _files(host, runner)
    problems = safety_problems(host, netns)
    with namespace.inside(netns):
        with IPRoute() as ipr:
            problems += _preflight(ipr, host)
            if problems:
                raise BadInput.of(problems)
            try:
                with runner.transaction():
                    bridge.ensure(ipr, runner, host.bridge)
                    bridge.ensure_address(ipr, runner, host.bridge, iface)
                    forwarding.ensure(runner)
                    runner.write_file(host.netplan_file, files.netplan, mode=0o600)
                    runner.write_file(host.sysctl_file, files.sysctl, mode=0o644)
            except NetlinkError as exc:
                raise Failed(f"netlink refused a change: {exc}") from None
            return state.read_bridge(ipr, host.bridge)


def _files(host: HostConfig, runner: Runner) -> Files:
    path = runner.path(host.netplan_file)
    old = path.read_text() if path.is_file() else None
    try:
        text = netplan.merge_bridge(old, host.bridge, host.bridge_interface)
    except ValueError as exc:
        raise BadInput("host.netplan_file", str(path), str(exc)) from None
    return Files(netplan=text, sysctl=sysctl.render({forwarding.SYSCTL_KEY: 1}))


def _preflight(ipr, host: HostConfig) -> List[Problem]:
    problems = []
    existing = links.by_name(ipr, host.bridge)
    if existing is not None and existing.kind != "bridge":
        problems.append(
            Problem(
                "host.bridge",
                host.bridge,
                f"exists and is a {existing.kind or 'plain'} link, not a bridge",
            )
        )
    holder = links.holder_of(ipr, host.bridge_interface.ip)
    if holder is not None and holder != host.bridge:
        problems.append(
            Problem("host.address", str(host.bridge_interface.ip), f"is already on {holder}")
        )
    return problems


# --- never cut the host off its own network ------------------------------------------------------
def safety_problems(
    host: HostConfig, netns: Optional[str] = None, ssh_connection: Optional[str] = None
) -> List[Problem]:
    """Why putting `host.subnet` on the bridge would cut this host (in `netns`) off its network.

    The bridge's address brings a connected route for the whole subnet, which takes every address
    in it away from the link that reaches it now. So the subnet may not overlap a network connected
    on another link, may not contain the default gateway or the next hop of any route, nor the
    address the current SSH session comes from (`ssh_connection`, default $SSH_CONNECTION). Each
    problem names the link, the route and the address. Reads only (also for --dry-run); every
    task that applies the site's network calls this first and refuses (exit 2) when it says so.
    """
    if ssh_connection is None:
        ssh_connection = os.environ.get("SSH_CONNECTION", "")
    topo = topology.read(netns)
    return cut_off_problems(host, topo.links, topo.routes, ssh_client(ssh_connection))


def ssh_client(ssh_connection: str) -> Optional[ipaddress.IPv4Address]:
    """The client address of $SSH_CONNECTION ('CLIENT PORT SERVER PORT'), if it is IPv4."""
    words = (ssh_connection or "").split()
    if not words:
        return None
    text = words[0]
    if text.lower().startswith("::ffff:"):  # an IPv4 client on an IPv6 socket
        text = text[7:]
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def cut_off_problems(
    host: HostConfig,
    all_links: Sequence[links.Link],
    routes: Sequence[topology.Route],
    client: Optional[ipaddress.IPv4Address] = None,
) -> List[Problem]:
    """`safety_problems` on data already read: the links with their addresses, the main table."""
    net = host.subnet
    value = str(net)
    problems: List[Problem] = []
    cut = "the bridge would take it over and cut the host off"

    def found(reason: str) -> None:
        if all(p.reason != reason for p in problems):
            problems.append(Problem(SUBNET, value, reason))

    connected_on = set()  # (link, network) pairs already named through the link's address
    for link in all_links:
        if link.name == host.bridge:
            continue  # a re-run: the bridge's own subnet (or an old one it is leaving)
        for address in link.addresses:
            if address.network.overlaps(net):
                connected = next(
                    (
                        r
                        for r in routes
                        if r.dev == link.name and r.gateway is None and r.dst == address.network
                    ),
                    None,
                )
                route = f", route {connected}" if connected else ""
                connected_on.add((link.name, address.network))
                found(
                    f"overlaps {address.network}, connected on {link.name} (address {address}"
                    f"{route}): {cut} from {link.name}"
                )
    for route in routes:
        if route.dev == host.bridge:
            continue  # routes through the bridge (to a guest) are the bridge's own business
        named = (route.dev, route.dst) in connected_on
        if route.gateway is None and not route.is_default and route.dst.overlaps(net) and not named:
            found(f"overlaps {route.dst}, routed on {route.dev} (route {route}): {cut} from it")
        if route.gateway is not None and route.gateway in net:
            what = "the default gateway" if route.is_default else "the next hop"
            found(
                f"contains {what} {route.gateway} (route {route}): the host would look for"
                f" {route.gateway} on the bridge and lose {'every route out' if route.is_default else 'that route'}"
            )
    if client is not None and client in net:
        via_bridge = any(
            client in a.network for link in all_links if link.name == host.bridge
            for a in link.addresses
        )  # fmt: skip
        if not via_bridge:
            found(
                f"contains {client}, the address this SSH session comes from (SSH_CONNECTION):"
                " the session would be cut off"
            )
    return problems
