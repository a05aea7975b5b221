"""fleet.status: host.check and guest.list of every host, as one row per host.

Each host runs its own `host.check --json` and `guest.list --json` (one connection); `row` makes
the row from their JSON and the host's site (data in, data out), so it is tested on recorded
outputs. guest.list needs Xen running: where it does not answer, the running count is unknown.
"""

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

from pipeline.fleet import run as fleet_run
from pipeline.fleet.inventory import Fleet, Member

COLUMNS = ["host", "status", "Xen", "bridge", "VG free", "guests running/configured"]
_VG_FREE = re.compile(r": (.+) free of ")


@dataclass
class Row:
    host: str
    status: str  # "checked" (host.check answered), or why not: unreachable, host key refused...
    all_ok: bool  # host.check: every step holds
    xen: str
    bridge: str
    vg_free: str
    guests_running: Optional[int]  # None: guest.list did not answer (no Xen)
    guests_configured: int
    check: Optional[Dict[str, Any]] = None  # host.check --json
    guests: Optional[List[Dict[str, Any]]] = None  # guest.list --json

    def cells(self) -> List[str]:
        running = "-" if self.guests_running is None else str(self.guests_running)
        return [self.host, self.status, self.xen, self.bridge, self.vg_free,
                f"{running}/{self.guests_configured}"]  # fmt: skip


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def row(member: Member, check: Optional[Dict[str, Any]], guests: Optional[list]) -> Row:
    """The row of a host from its host.check and guest.list JSON (None: it did not answer)."""
    configured = len(member.site.guests)
    if not isinstance(check, dict) or not isinstance(check.get("checks"), list):
        return Row(member.name, "host.check did not answer", False, "-", "-", "-", None, configured)
    lines = {c.get("step"): c for c in check["checks"] if isinstance(c, dict)}

    def ok(step: str) -> bool:
        return bool(lines.get(step, {}).get("ok"))

    def detail(step: str) -> str:
        return str(lines.get(step, {}).get("detail", ""))

    xen = detail("xl info").split(",")[0] if ok("xl info") and ok("Xen hypervisor") else "no"
    host = member.site.host
    if ok("bridge") and ok("bridge address"):
        bridge = f"{host.bridge} {host.bridge_interface}"
    else:
        bridge = f"{host.bridge} missing"
    if "image directory" in lines:
        vg_free = f"dir {host.storage.dir}" if ok("image directory") else "no image dir"
    else:
        found = _VG_FREE.search(detail("volume group")) if ok("volume group") else None
        vg_free = found.group(1) if found else "no VG"
    running = None
    if isinstance(guests, list):
        running = sum(
            1 for g in guests
            if isinstance(g, dict) and g.get("known") != "dom0" and g.get("state") != "stopped"
        )  # fmt: skip
    return Row(member.name, "checked", bool(check.get("ok")), xen, bridge, vg_free, running,
               configured, check, guests)  # fmt: skip


def status_one(fleet: Fleet, member: Member) -> fleet_run.HostResult:
    def work(conn) -> Tuple[str, Optional[int], str, Any]:
        outputs = []
        for task in ("host.check", "guest.list"):
            line = fleet_run.invoke_line(member, task, ["--json"])
            result = conn.run(line, hide=True, warn=True, in_stream=False)
            outputs.append((result.exited, _parse(result.stdout), result.stderr))
        (check_code, check, why), (_, guests, _) = outputs
        found = row(member, check, guests)
        return ("ok" if check is not None else "failed"), check_code, why, found

    return fleet_run.on_connection(fleet, member, work)


def status(fleet: Fleet) -> List[fleet_run.HostResult]:
    """Every host's status; each result's data is its Row (a host never reached: why not)."""
    results = fleet_run.on_hosts(fleet, lambda m: status_one(fleet, m))
    for member, result in zip(fleet.members, results):
        if result.data is None:
            configured = len(member.site.guests)
            result.data = Row(member.name, result.status, False, "-", "-", "-", None, configured)
    return results


def exit_code(results: List[fleet_run.HostResult]) -> int:
    """0 when every host answered (whatever its checks say), else 1."""
    return 0 if all(isinstance(r.data, Row) and r.data.status == "checked" for r in results) else 1


def as_json(results: List[fleet_run.HostResult]) -> List[Dict[str, Any]]:
    return [dict(asdict(r.data), seconds=round(r.seconds, 3)) for r in results]
