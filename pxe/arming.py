"""Which hosts get the automated install: MACs armed in `armed.json` in pxe.state_dir.

Only an armed MAC gets the installer and its preseed, and only once per arming: the first fetch
is recorded (when, to which address) and a second one is refused (410) and recorded too, so
`pxe.status` shows it. Each arming has a random token that only the served preseed carries; the
installer's callback must bring it back (from the address the preseed went to) to disarm the MAC,
and the installed host's progress reports must bring it too (pxe/progress.py keeps it then).

The file is replaced atomically, so the server (which reads it on every request) never sees half
of it, and `invoke pxe.arm` takes effect while the server runs. A file that does not parse (a
crash, a full disk) is never taken for "nothing armed" and never rewritten: Failed names it.
"""

import json
import secrets
import threading
import time
from pathlib import Path
from typing import Dict, Optional

from pipeline import mac as macs
from pipeline.errors import BadInput, Failed
from pipeline.runner import Runner

FILE = "armed.json"
_lock = threading.Lock()  # the server's own changes (serve, callback), one at a time


def normalise_mac(value: object, field: str = "--mac") -> str:
    """pipeline.mac.normalise, with bad input named after `field` (exit 2)."""
    try:
        return macs.normalise(value)
    except ValueError as exc:
        raise BadInput(field, value, str(exc)) from None


def state_file(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def read_state(path: Path, key: str) -> Dict[str, dict]:
    """`{key: {mac: {...}}}` of a JSON state file: {} when the file does not exist; Failed (exit
    1, naming the file) when it cannot be read or does not parse as such a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise Failed(f"cannot read the state file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Failed(
            f"the state file {path} does not parse ({exc}); it is left as it is: repair or"
            " remove it (its other entries would be lost otherwise)"
        ) from None
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise Failed(
            f"the state file {path} is not a {{{key!r}: {{MAC: {{...}}}}}} mapping; it is left"
            " as it is: repair or remove it"
        )
    return entries


def load(state_dir: Path) -> Dict[str, dict]:
    """{mac: {"armed_at": ISO time, "token": ..., "served_to": ..., ...}}; Failed when damaged."""
    return read_state(state_file(state_dir), "armed")


def is_armed(state_dir: Path, mac: str) -> bool:
    return mac in load(state_dir)


def _dump(armed: Dict[str, dict]) -> str:
    return json.dumps({"armed": armed}, indent=2, sort_keys=True) + "\n"


def _write(runner: Runner, state_dir: Path, armed: Dict[str, dict]) -> bool:
    # Through the runner: --dry-run shows it (secret: the tokens are not shown), --root
    # relocates it, the write is atomic (a temporary file renamed into place), mode 0600.
    return runner.write_file(str(state_file(state_dir)), _dump(armed), mode=0o600, secret=True)


def _stamp(now: Optional[float] = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def new_token() -> str:
    """A per-arming secret: 32 random bytes, URL-safe (letters, digits, '-', '_')."""
    return secrets.token_urlsafe(32)


def arm(runner: Runner, state_dir: Path, mac: str, now: Optional[float] = None) -> bool:
    """Arm `mac` with a new token; False when it already was and its preseed was not served yet
    (no change). An arming whose preseed was served already is replaced by a fresh one."""
    with _lock:
        armed = load(runner.path(str(state_dir)))
        entry = armed.get(mac)
        if entry is not None and not entry.get("served_at"):
            return False
        armed[mac] = {"armed_at": _stamp(now), "token": new_token()}
        return _write(runner, state_dir, armed)


def disarm(runner: Runner, state_dir: Path, mac: str) -> bool:
    """Disarm `mac`; False when it was not armed (no change)."""
    with _lock:
        armed = load(runner.path(str(state_dir)))
        if armed.pop(mac, None) is None:
            return False
        return _write(runner, state_dir, armed)


def token_of(state_dir: Path, mac: str) -> Optional[str]:
    entry = load(state_dir).get(mac)
    return entry.get("token") if entry else None


def claim_preseed(
    runner: Runner, state_dir: Path, mac: str, client: str, now: Optional[float] = None
) -> Optional[dict]:
    """Record that `mac`'s preseed goes to `client` now. None when it may (the first fetch of
    this arming); else the arming's entry as it was, with this refused fetch recorded in it."""
    with _lock:
        armed = load(state_dir)
        entry = armed.get(mac)
        if entry is None:
            return {}
        if not entry.get("served_at"):
            entry.update(served_at=_stamp(now), served_to=client)
            _write(runner, state_dir, armed)
            return None
        refused = list(entry.get("refused", []))[-9:]
        refused.append({"at": _stamp(now), "from": client})
        entry["refused"] = refused
        _write(runner, state_dir, armed)
        return entry


def check_callback(state_dir: Path, mac: str, token: str, client: str) -> Optional[str]:
    """Why the install's callback for `mac` from `client` with `token` is refused, or None."""
    entry = load(state_dir).get(mac)
    if entry is None:
        return "not armed"
    if not token or not secrets.compare_digest(str(entry.get("token", "")), token):
        return "wrong or missing token"
    if entry.get("served_to") != client:
        return f"the preseed went to {entry.get('served_to') or 'nobody yet'}"
    return None
