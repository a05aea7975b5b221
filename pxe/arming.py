"""Which hosts get the automated install: MACs armed in `armed.json` in pxe.state_dir.

Only an armed MAC gets the installer and its preseed, and only once: the installer's
late_command calls back and the server disarms it. Every other PXE client boots its disk.
The file is replaced atomically, so the server (which reads it on every request) never sees
half of it, and `invoke pxe.arm` takes effect while the server runs.
"""

import json
import threading
import time
from pathlib import Path
from typing import Dict, Optional

from pipeline import mac as macs
from pipeline.errors import BadInput
from pipeline.runner import Runner

FILE = "armed.json"
_lock = threading.Lock()  # the server's own callbacks, one at a time


def normalise_mac(value: object, field: str = "--mac") -> str:
    """pipeline.mac.normalise, with bad input named after `field` (exit 2)."""
    try:
        return macs.normalise(value)
    except ValueError as exc:
        raise BadInput(field, value, str(exc)) from None


def state_file(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def load(state_dir: Path) -> Dict[str, dict]:
    """{mac: {"armed_at": ISO time}}; empty when nothing was armed (or the file is unreadable)."""
    path = state_file(state_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    armed = data.get("armed") if isinstance(data, dict) else None
    return armed if isinstance(armed, dict) else {}


def is_armed(state_dir: Path, mac: str) -> bool:
    return mac in load(state_dir)


def _dump(armed: Dict[str, dict]) -> str:
    return json.dumps({"armed": armed}, indent=2, sort_keys=True) + "\n"


def _write(runner: Runner, state_dir: Path, armed: Dict[str, dict]) -> bool:
    # Through the runner: --dry-run shows it, --root relocates it, the write is atomic.
    return runner.write_file(str(state_file(state_dir)), _dump(armed), mode=0o600)


def arm(runner: Runner, state_dir: Path, mac: str, now: Optional[float] = None) -> bool:
    """Arm `mac`; False when it already was (no change)."""
    armed = load(runner.path(str(state_dir)))
    if mac in armed:
        return False
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    armed[mac] = {"armed_at": stamp}
    return _write(runner, state_dir, armed)


def disarm(runner: Runner, state_dir: Path, mac: str) -> bool:
    """Disarm `mac`; False when it was not armed (no change)."""
    with _lock:
        armed = load(runner.path(str(state_dir)))
        if armed.pop(mac, None) is None:
            return False
        return _write(runner, state_dir, armed)
