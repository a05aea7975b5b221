"""`host.network`: the routed bridge for the guests, live over netlink and persisted for the next boot."""

from dataclasses import dataclass
from typing import Optional

from pyroute2 import IPRoute, NetlinkError

from netlink import bridge, forwarding, links, namespace, netplan, state, sysctl
from pipeline.config import HostConfig
from pipeline.errors import BadInput, Failed
from pipeline.runner import Runner


@dataclass(frozen=True)
class Files:
    netplan: str
    sysctl: str


def configure(host: HostConfig, runner: Runner, netns: Optional[str] = None) -> state.BridgeState:
    """Make the bridge, its address and forwarding as `host` says; the resulting state.

    All checks come first: bad input raises BadInput before anything changes. A failure after
    that rolls back what this run changed.
    """
    iface = host.bridge_interface
    files = _files(host, runner)
    with namespace.inside(netns):
        with IPRoute() as ipr:
            _preflight(ipr, host)
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


def _preflight(ipr, host: HostConfig) -> None:
    existing = links.by_name(ipr, host.bridge)
    if existing is not None and existing.kind != "bridge":
        raise BadInput(
            "host.bridge",
            host.bridge,
            f"exists and is a {existing.kind or 'plain'} link, not a bridge",
        )
    holder = links.holder_of(ipr, host.bridge_interface.ip)
    if holder is not None and holder != host.bridge:
        raise BadInput("host.address", str(host.bridge_interface.ip), f"is already on {holder}")
