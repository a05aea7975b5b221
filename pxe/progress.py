"""Where every host is on its way from PXE to a Xen host with guests: `hosts.json` in pxe.state_dir.

pxe.serve writes it: "installing" when the preseed is served, "installed" at the installer's
callback, then what the installed host's `invoke host.provision` reports (POST /progress/<mac>,
with the arming's token, from the host's own address): "provisioning" a step, "rebooting into
Xen", "done" (with its guests' names and addresses) or "failed" at a step (with the last lines of
its log). `pxe.status` reads it. The token stays here after the callback disarmed the MAC; the file
is mode 0600 and replaced atomically, and one that does not parse is refused (arming.read_state).
"""

import json
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from pipeline.runner import Runner
from pxe.arming import read_state

FILE = "hosts.json"
STATES = ("installing", "installed", "provisioning", "rebooting", "done", "failed")
LOG_LINES = 20  # the last lines of a failed step's log that are kept
HISTORY = 40  # the last states and steps kept with their times: pxe.status shows the way so far
_lock = threading.Lock()
_STEP = re.compile(r"^[a-z][a-z0-9_. -]{0,40}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IP = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")


def state_file(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def load(state_dir: Path) -> Dict[str, dict]:
    return read_state(state_file(state_dir), "hosts")


def _write(runner: Runner, state_dir: Path, hosts: Dict[str, dict]) -> None:
    text = json.dumps({"hosts": hosts}, indent=2, sort_keys=True) + "\n"
    runner.write_file(str(state_file(state_dir)), text, mode=0o600, secret=True)


def _stamp(now: Optional[float] = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def record(
    runner: Runner, state_dir: Path, mac: str, now: Optional[float] = None, **fields
) -> dict:
    """Merge `fields` into `mac`'s entry (a new state clears the old step's details)."""
    with _lock:
        hosts = load(state_dir)
        entry = dict(hosts.get(mac, {}))
        if "state" in fields and fields["state"] != entry.get("state"):
            for stale in ("step", "log", "guests"):
                entry.pop(stale, None)
        entry.update({k: v for k, v in fields.items() if v is not None})
        entry["updated"] = _stamp(now)
        mark = {"at": entry["updated"], "state": entry.get("state"), "step": entry.get("step")}
        history = list(entry.get("history") or [])
        if not history or (history[-1].get("state"), history[-1].get("step")) != (
            mark["state"],
            mark["step"],
        ):
            history.append(mark)
        entry["history"] = history[-HISTORY:]
        hosts[mac] = entry
        _write(runner, state_dir, hosts)
        return entry


def printable(text: str, limit: int = 300) -> str:
    """`text` with every control character escaped (\\n, \\x1b...), cut at `limit`: what a
    client sends never makes a log line of its own."""
    out = []
    for ch in str(text)[:limit]:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def parse_report(data: bytes) -> dict:
    """A host's report, checked field by field; ValueError names what is wrong."""
    try:
        report = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not a JSON object") from None
    if not isinstance(report, dict):
        raise ValueError("not a JSON object")
    state = report.get("state")
    if state not in STATES[2:]:
        raise ValueError(f"state must be one of {', '.join(STATES[2:])}")
    clean: dict = {"state": state}
    step = report.get("step")
    if step is not None:
        if not isinstance(step, str) or not _STEP.fullmatch(step):
            raise ValueError("step is not a step name")
        clean["step"] = step
    log = report.get("log")
    if log is not None:
        if not isinstance(log, list) or not all(isinstance(line, str) for line in log):
            raise ValueError("log must be a list of lines")
        clean["log"] = [printable(line, 500) for line in log[-LOG_LINES:]]
    guests = report.get("guests")
    if guests is not None:
        if not isinstance(guests, list) or not all(
            isinstance(g, dict)
            and _NAME.fullmatch(str(g.get("name", "")))
            and (g.get("ip") is None or _IP.fullmatch(str(g.get("ip"))))
            for g in guests
        ):
            raise ValueError("guests must be a list of {name, ip}")
        clean["guests"] = [{"name": g["name"], "ip": g.get("ip")} for g in guests]
    return clean


def check_report(
    state_dir: Path, mac: str, token: str, client: str, lease: Optional[str]
) -> Optional[str]:
    """Why a progress report for `mac` from `client` with `token` is refused, or None. The host's
    own address is the one its callback came from, or its current lease (full DHCP)."""
    entry = load(state_dir).get(mac)
    if entry is None or not entry.get("token"):
        return "no install of this MAC is known"
    if not token or not secrets.compare_digest(str(entry["token"]), token):
        return "wrong or missing token"
    if client not in (entry.get("address"), lease):
        return f"not from the host's address ({entry.get('address') or 'unknown'})"
    return None


def way(entry: dict) -> List[str]:
    """Each state and step the host went through, with its time: 'HH:MM:SS provisioning xen'."""
    return [f"{mark.get('at', '')[11:19]} {describe(mark)}" for mark in entry.get("history") or []]


def describe(entry: dict) -> str:
    """One cell of pxe.status: the state in words."""
    state = entry.get("state", "-")
    step = entry.get("step")
    if state == "provisioning":
        return f"provisioning {step}" if step else "provisioning"
    if state == "rebooting":
        return "rebooting into Xen"
    if state == "done":
        guests = entry.get("guests") or []
        shown = ", ".join(f"{g['name']} {g.get('ip') or '-'}" for g in guests)
        return f"done ({shown})" if shown else "done"
    if state == "failed":
        return f"failed at {step}" if step else "failed"
    return state


def last_lines(entry: dict) -> List[str]:
    return list(entry.get("log") or []) if entry.get("state") == "failed" else []
