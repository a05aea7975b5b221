"""What the guests' network looks like right now, read over netlink: the task's closing report."""

from dataclasses import dataclass
from typing import List

from netlink import forwarding, links


@dataclass(frozen=True)
class BridgeState:
    name: str
    exists: bool
    state: str  # 'up', 'up, no carrier', 'down' or 'absent'
    addresses: List[str]
    members: List[str]
    forwarding: bool


def _state(link: links.Link) -> str:
    # A bridge with no ports reports operstate UNKNOWN or DOWN; that is normal until a vif joins.
    if not link.up:
        return "down"
    if link.operstate in ("UP", "UNKNOWN"):
        return "up"
    return "up, no carrier"


def read_bridge(ipr, name: str) -> BridgeState:
    link = links.by_name(ipr, name)
    if link is None:
        return BridgeState(name, False, "absent", [], [], forwarding.enabled())
    state = _state(link)
    return BridgeState(
        name=name,
        exists=True,
        state=state,
        addresses=[str(a) for a in link.addresses],
        members=[m.name for m in links.members(ipr, link.index)],
        forwarding=forwarding.enabled(),
    )
