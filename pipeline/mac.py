"""Guest MAC addresses in Xen's OUI, derived from the guest's name so they never change.

00:16:3E is the block the IEEE assigned to XenSource; Xen draws its random vif MACs from it, so
xenlab's fixed ones stay recognisable as Xen guests. The last three octets come from a hash of the
name: the same guest gets the same MAC on every rebuild (ARP caches and DHCP reservations survive),
and two names collide only with a probability of about n^2 / 2^25, which guest.build checks.
"""

import hashlib
import re
from typing import Dict, Iterable

XEN_OUI = "00:16:3e"
_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


def normalise(value: object) -> str:
    """'34-17-EB-F0-DC-E3', '3417.ebf0.dce3' or '3417ebf0dce3' -> '34:17:eb:f0:dc:e3'.

    ValueError otherwise: the one form every file, menu and log line of xenlab uses.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 (Invoke's loader) reads 52:54:00:12:34:02 unquoted as a base-60 number.
        raise ValueError('is a number, not a MAC: quote it in YAML ("52:54:00:12:34:02")')
    text = value.strip().lower().replace(".", "") if isinstance(value, str) else ""
    if not _MAC.match(text):
        raise ValueError("is not a MAC address (six hex pairs, e.g. 34:17:eb:f0:dc:e3)")
    digits = re.sub(r"[:-]", "", text)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


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
