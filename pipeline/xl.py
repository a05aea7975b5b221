"""Xen's `xl` as data: the domain list and host info, parsed from the text xl prints.

Parsing is separate from running so it can be tested on recorded output (this machine has no Xen).
"""

import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass(frozen=True)
class Domain:
    name: str
    id: int
    memory_mib: int
    vcpus: int
    state: str
    time_s: float


def parse_list(text: str) -> List[Domain]:
    """`xl list` output: a header line, then one line per domain (Domain-0 first)."""
    domains = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 6 or words[0] == "Name":
            continue
        # The name may hold no spaces in Xen, so the last five columns are fixed.
        name, dom_id, mem, vcpus, state, seconds = words[0], *words[-5:]
        try:
            domains.append(Domain(name, int(dom_id), int(mem), int(vcpus), state, float(seconds)))
        except ValueError:
            continue
    return domains


def parse_info(text: str) -> Dict[str, str]:
    """`xl info` output: 'key : value' lines."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def run(*args: str) -> Optional[str]:
    """stdout of `xl ARGS`, or None where there is no xl or it cannot reach a hypervisor."""
    if shutil.which("xl") is None:
        return None
    proc = subprocess.run(["xl", *args], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None
