"""guest.list: every configured guest and every running domain, one row each, like `xl list`
with the state decoded, and the IP, MAC and autostart of each.

The state, memory, vCPUs and CPU time come from `xl list` (text: the only form with the state
flags); IP and MAC from `xl list -l` (JSON) where it answers, else from /etc/xen/NAME.cfg, else
from the site config (its IP and the MAC xenlab derives from the name).
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipeline import mac as macs
from pipeline import xl
from pipeline.config import Site
from pipeline.guest import lifecycle, xen_cfg


@dataclass(frozen=True)
class Row:
    name: str
    id: Optional[int]
    state: str  # running, blocked, paused, shutdown, crashed, dying, runnable; stopped
    flags: Optional[str]  # xl's six letters, None when it does not run
    memory_mib: Optional[int]
    vcpus: Optional[int]
    cpu_time_s: Optional[float]
    ip: Optional[str]
    mac: Optional[str]
    autostart: bool
    known: str  # 'site' (guests: of the config), 'cfg only' (an /etc/xen cfg), 'dom0', 'unknown'

    def cells(self) -> List[str]:
        def dash(value: Any) -> str:
            return "-" if value is None else str(value)

        return [
            self.name,
            dash(self.id),
            self.state + (f" ({self.flags})" if self.flags else ""),
            dash(self.memory_mib),
            dash(self.vcpus),
            "-" if self.cpu_time_s is None else f"{self.cpu_time_s:.1f}",
            dash(self.ip),
            dash(self.mac),
            "yes" if self.autostart else "no",
            self.known,
        ]


COLUMNS = ["name", "id", "state", "MiB", "vCPUs", "time (s)", "ip", "mac", "autostart", "config"]


def rows(site: Site, root: Path, listing: str, long_json: Optional[str] = None) -> List[Row]:
    """The rows from `xl list` text and, when given, `xl list -l` JSON (unparsable JSON is
    ignored: the cfg and the site still give IP and MAC)."""
    domains = xl.parse_list(listing)
    try:
        configs = {c.name: c for c in xl.parse_list_long(long_json)} if long_json else {}
    except ValueError:
        configs = {}
    by_name = {d.name: d for d in domains}
    names = list(site.guests)
    names += [d.name for d in domains if d.name not in site.guests]
    names += [n for n in xen_cfg.autostart_names(root) if n not in names]
    cfgs = xen_cfg.read_cfgs(root, names)
    found = []
    for name in dict.fromkeys(names):
        dom = by_name.get(name)
        guest = site.guests.get(name)
        ip, mac = _address(name, configs.get(name), cfgs.get(name), guest)
        if dom is not None and (dom.id == 0 or name == "Domain-0"):
            known = "dom0"
        elif guest is not None:
            known = "site"
        elif name in cfgs:
            known = "cfg only"
        else:
            known = "unknown"
        found.append(
            Row(
                name=name,
                id=dom.id if dom else None,
                state=xl.state_word(dom.state) if dom else "stopped",
                flags=dom.state if dom else None,
                memory_mib=dom.memory_mib if dom else (guest.memory >> 20 if guest else None),
                vcpus=dom.vcpus if dom else (guest.vcpus if guest else None),
                cpu_time_s=dom.time_s if dom else None,
                ip=ip,
                mac=mac,
                autostart=xen_cfg.autostart(root, name).on,
                known=known,
            )
        )
    return found


def _address(name: str, config, cfg_text: Optional[str], guest) -> tuple:
    """(ip, mac) from xl list -l, else the cfg's vif, else the site config."""
    if config is not None and config.nics:
        nic = config.nics[0]
        if nic.ip or nic.mac:
            return nic.ip, nic.mac
    if cfg_text:
        vifs = xen_cfg.parse_vifs(cfg_text)
        if vifs:
            return vifs[0].get("ip") or None, (vifs[0].get("mac") or "").lower() or None
    if guest is not None:
        return (str(guest.ip) if guest.ip else None), macs.derive(name)
    return None, None


def read(site: Site, root: Path) -> List[Row]:
    """The live rows: Xen must run here (lifecycle.require_xen)."""
    lifecycle.require_xen()
    listing = xl.call("list")
    if not listing.ok:
        lifecycle.require_xen()  # Xen went away between the two calls: say so
    long = xl.call("list", "-l")
    return rows(site, root, listing.out, long.out if long.ok else None)


def as_json(found: List[Row]) -> List[Dict[str, Any]]:
    return [
        dict(asdict(row), states=xl.decode_state(row.flags) if row.flags else []) for row in found
    ]
