"""NoCloud network-config, version 2: one NIC matched by its MAC, a static address, the gateway, DNS."""

import ipaddress
from typing import Any, Dict, Sequence


def build(
    mac: str,
    interface: ipaddress.IPv4Interface,
    gateway: ipaddress.IPv4Address,
    dns: Sequence[ipaddress.IPv4Address] = (),
) -> Dict[str, Any]:
    """The guest's network as cloud-init's v2 (netplan-like) config.

    The NIC is matched by MAC and renamed eth0, so the name is the same whatever the guest's
    kernel calls it (Xen's netfront and virtio both). The default route is `gateway4`, not a
    `routes:` entry: cloud-init's ifupdown renderer turns routes into `route add` from net-tools,
    which minimal images lack, while `gateway4` becomes ifupdown's own `gateway` line.
    """
    eth0: Dict[str, Any] = {
        "match": {"macaddress": mac.lower()},
        "set-name": "eth0",
        "addresses": [str(interface.with_prefixlen)],
        "gateway4": str(gateway),
    }
    if dns:
        eth0["nameservers"] = {"addresses": [str(a) for a in dns]}
    return {"version": 2, "ethernets": {"eth0": eth0}}
