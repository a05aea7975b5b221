"""Xen's `xl` as data: the domain list and host info, parsed from the text xl prints.

Parsing is separate from running so it can be tested on recorded output (this machine has no Xen).
"""

import re
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


# The lines a dom0 kernel prints when it boots on Xen (arch/x86/xen: xen_banner, the hypervisor
# detection); the first is the most telling, as it names Xen's version.
_XEN_MARKERS = (
    "Xen version:",
    "Booting paravirtualized kernel on Xen",
    "Hypervisor detected: Xen",
)


def xen_line(dmesg: str) -> Optional[str]:
    """The line of `dmesg` output that shows the kernel booted on Xen, without its timestamp."""
    lines = [_untimed(line) for line in dmesg.splitlines()]
    for marker in _XEN_MARKERS:
        for line in lines:
            if marker in line:
                return line
    return None


def _untimed(line: str) -> str:
    if line.startswith("[") and "]" in line:
        return line.split("]", 1)[1].strip()
    return line.strip()


def domain0(domains: List[Domain]) -> Optional[Domain]:
    for domain in domains:
        if domain.id == 0 or domain.name == "Domain-0":
            return domain
    return None


def dom0_mem(info: Dict[str, str]) -> Optional[str]:
    """The dom0_mem= setting on Xen's command line (`xl info`'s xen_commandline), if any."""
    for word in info.get("xen_commandline", "").split():
        if word.startswith("dom0_mem="):
            return word[len("dom0_mem=") :]
    return None


def parse_network_list(text: str) -> Dict[int, str]:
    """`xl network-list DOMAIN`: {device index: MAC}."""
    found = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].isdigit() and re.match(r"^[0-9a-f:]{17}$", words[2], re.I):
            found[int(words[0])] = words[2].lower()
    return found
