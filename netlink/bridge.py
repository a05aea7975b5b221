"""The guests' bridge (xenbr0): created with no member interfaces, since guests are routed, not switched."""

import ipaddress

from netlink import links
from pipeline.runner import Runner


def ensure(ipr, runner: Runner, name: str) -> None:
    """A bridge called `name` exists and is up. STP off and no forward delay: it has no uplink port."""
    link = links.by_name(ipr, name)
    if link is None:
        runner.change(
            f"create bridge {name} (stp off, forward delay 0)",
            lambda: ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0),
            lambda: ipr.link("del", index=_index(ipr, name)),
        )
    if link is None or not link.up:
        runner.change(
            f"set {name} up",
            lambda: ipr.link("set", index=_index(ipr, name), state="up"),
            lambda: ipr.link("set", index=_index(ipr, name), state="down"),
        )


def ensure_address(ipr, runner: Runner, name: str, want: ipaddress.IPv4Interface) -> None:
    """`want` is the bridge's only IPv4 address; others (an old subnet's) are removed."""
    link = links.by_name(ipr, name)
    have = link.addresses if link else []
    for old in have:
        if old != want:
            runner.change(
                f"remove address {old} from {name}",
                lambda old=old: _addr(ipr, "del", name, old),
                lambda old=old: _addr(ipr, "add", name, old),
            )
    if want not in have:
        runner.change(
            f"add address {want} to {name}",
            lambda: _addr(ipr, "add", name, want),
            lambda: _addr(ipr, "del", name, want),
        )


def _index(ipr, name: str) -> int:
    return ipr.link_lookup(ifname=name)[0]


def _addr(ipr, op: str, name: str, iface: ipaddress.IPv4Interface) -> None:
    ipr.addr(
        op,
        index=_index(ipr, name),
        address=str(iface.ip),
        prefixlen=iface.network.prefixlen,
        broadcast=str(iface.network.broadcast_address),
    )
