"""Guest MAC addresses in Xen's OUI, derived from the guest's name so they never change.

00:16:3E is the block the IEEE assigned to XenSource; Xen draws its random vif MACs from it, so
xenlab's fixed ones stay recognisable as Xen guests. The last three octets come from a hash of the
name: the same guest gets the same MAC on every rebuild (ARP caches and DHCP reservations survive),
and two names collide only with a probability of about n^2 / 2^25, which guest.build checks.
"""

import hashlib
from typing import Dict, Iterable

XEN_OUI = "00:16:3e"


def derive(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    # Keep the fourth octet below 0x80, as xapi and virt-manager do for the Xen MACs they draw.
    tail = bytes([digest[0] & 0x7F, digest[1], digest[2]])
    return XEN_OUI + ":" + ":".join(f"{b:02x}" for b in tail)


def collisions(names: Iterable[str]) -> Dict[str, list]:
    """{mac: [names]} for every MAC that more than one name derives."""
    by_mac: Dict[str, list] = {}
    for name in names:
        by_mac.setdefault(derive(name), []).append(name)
    return {mac: found for mac, found in by_mac.items() if len(found) > 1}
