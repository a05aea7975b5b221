"""What the live lab is: the network (netlink, in a namespace if asked), xl's domains, /etc/xen
and the site's guests, each guest matched to its bridge port. Read-only; the diagram and the
report are views of it.
"""

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from netlink import topology
from netlink.topology import Topology
from pipeline import mac as xen_mac
from pipeline import xl
from pipeline.guest import xen_cfg


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
            macs[dom.name] = xl.parse_network_list(xl.run("network-list", dom.name) or "")
    return XenState(domains, macs)


def find_guests(
    topo: Topology,
    site_guests: Mapping[str, object],
    default_bridge: str,
    xen: Optional[XenState] = None,
    cfgs: Optional[Mapping[str, str]] = None,
    autostarts: Optional[Mapping[str, xen_cfg.Autostart]] = None,
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
        vif_cfg = (xen_cfg.parse_vifs(cfgs[name]) or [{}])[0] if name in cfgs else {}
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
    autostarts: Dict[str, xen_cfg.Autostart]


def read_lab(
    site_guests: Mapping[str, object], bridge: str, root: Path, netns: Optional[str]
) -> Lab:
    """Read the network (in `netns`), xl's domains, and /etc/xen under `root`."""
    topo = topology.read(netns)
    xen = read_xen()
    names = list(site_guests) + xen_cfg.autostart_names(root)
    names += [d.name for d in (xen.domains if xen else []) if d.id != 0]
    names = list(dict.fromkeys(names))
    cfgs = xen_cfg.read_cfgs(root, names)
    autostarts = {name: xen_cfg.autostart(root, name) for name in names}
    guests = find_guests(topo, site_guests, bridge, xen, cfgs, autostarts)
    return Lab(topo, xen, guests, autostarts)
