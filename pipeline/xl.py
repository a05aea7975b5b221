"""Xen's `xl` as data: the domain list (text and `xl list -l` JSON), host info, xentop, uptime.

Parsing is separate from running so it can be tested on recorded output (this machine has no Xen).
Every xl command goes through `call`, which finds `xl` on PATH: a test points PATH at a stand-in.
"""

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


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


@dataclass(frozen=True)
class Answer:
    """What one xl command did: its exit code and output (code 127: there is no xl)."""

    code: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def call(*args: str, timeout: Optional[float] = None) -> Answer:
    """Run `xl ARGS` (found on PATH) and say what it did; the one way xenlab asks xl anything.

    `timeout` seconds, then code 124 as timeout(1) gives (xl shutdown -w can wait forever)."""
    if shutil.which("xl") is None:
        return Answer(127, "", "xl is not installed (Xen's tools: invoke host.xen)")
    try:
        proc = subprocess.run(["xl", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Answer(124, _text(exc.stdout), _text(exc.stderr) or f"timed out after {timeout} s")
    return Answer(proc.returncode, proc.stdout, proc.stderr)


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def run(*args: str) -> Optional[str]:
    """stdout of `xl ARGS`, or None where there is no xl or it cannot reach a hypervisor."""
    answer = call(*args)
    return answer.out if answer.ok else None


def running() -> bool:
    """Whether Xen answers here: `xl info` works only in a dom0 of a running hypervisor."""
    return call("info").ok


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


# --- the state column --------------------------------------------------------------------------
# `xl list` prints six fixed positions (tools/xl/xl_info.c, list_domains): r running, b blocked,
# p paused, s shutdown, then the shutdown reason (- poweroff, r reboot, s suspend, c crash,
# w watchdog, S soft reset; only set while s is), then d dying. xentop prints its own order
# (d s b c p r, tools/xentop/xentop.c): parse_xentop maps it onto xl's.
FLAGS = {"r": "running", "b": "blocked", "p": "paused", "s": "shutdown", "d": "dying"}
SHUTDOWN_REASONS = {
    "-": "poweroff",
    "r": "reboot",
    "s": "suspend",
    "c": "crash",
    "w": "watchdog",
    "S": "soft-reset",
}


def decode_state(flags: str) -> List[str]:
    """Every state xl's six-letter column sets, in xl's order, e.g. '--ps--' -> ['paused',
    'shutdown (poweroff)']; a crash is 'crashed'."""
    flags = (flags + "------")[:6]
    found = [FLAGS[letter] for letter, at in zip("rbp", flags[:3]) if at == letter]
    if flags[3] == "s":
        reason = SHUTDOWN_REASONS.get(flags[4], f"reason {flags[4]!r}")
        found.append("crashed" if reason == "crash" else f"shutdown ({reason})")
    if flags[5] == "d":
        found.append("dying")
    return found


def state_word(flags: str) -> str:
    """One word for a person, the most telling state first: a domain that is going away is
    dying or shut down whatever else it says; 'runnable' when it waits for a CPU (no flag)."""
    states = decode_state(flags)
    for word in ("dying", "crashed", "shutdown", "paused", "running", "blocked"):
        if any(s.split()[0] == word for s in states):
            return word
    return "runnable"


def leaving(flags: str) -> bool:
    """The domain is on its way out (shut down or dying): it will vanish by itself."""
    return state_word(flags) in ("dying", "shutdown", "crashed")


def find(domains: Sequence[Domain], name: str) -> Optional[Domain]:
    return next((d for d in domains if d.name == name), None)


# --- xl list -l: the domain configurations as JSON --------------------------------------------
@dataclass(frozen=True)
class DiskInfo:
    vdev: str
    target: str  # pdev_path: the LV, file or device dom0 serves
    writable: bool
    cdrom: bool


@dataclass(frozen=True)
class NicInfo:
    devid: int
    mac: Optional[str]
    ip: Optional[str]
    bridge: Optional[str]


@dataclass(frozen=True)
class DomainConfig:
    """The parts of one `xl list -l` entry (libxl_domain_config) a person asks about."""

    domid: Optional[int]
    name: str
    type: str  # pv, pvh, hvm
    max_memkb: Optional[int]
    vcpus: Optional[int]
    kernel: Optional[str]
    bootloader: Optional[str]
    disks: List[DiskInfo] = field(default_factory=list)
    nics: List[NicInfo] = field(default_factory=list)

    @property
    def boot(self) -> str:
        """How it boots: pygrub, pvgrub (GRUB's Xen image as the kernel), pvh, or the kernel."""
        if self.bootloader:
            return os_basename(self.bootloader)
        if self.type == "pvh":
            return "pvh"
        if self.kernel and "grub" in os_basename(self.kernel):
            return "pvgrub"
        return f"kernel {self.kernel}" if self.kernel else "-"


def os_basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def parse_list_long(text: str) -> List[DomainConfig]:
    """`xl list -l` (JSON, xl's default output_format): [{"domid": N, "config": {...}}].

    libxl leaves out fields at their defaults, so every field is optional; Domain-0 is often
    missing (xl skips a domain whose configuration it cannot retrieve). ValueError when the text
    is not that JSON (e.g. xl.conf asks for output_format="sxp")."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("xl list -l did not print JSON") from None
    if not isinstance(data, list):
        raise ValueError("xl list -l did not print a JSON list")
    found = []
    for entry in data:
        config = entry.get("config") or {}
        c_info = config.get("c_info") or {}
        b_info = config.get("b_info") or {}
        kind = c_info.get("type") or "pv"
        union = b_info.get(f"type.{kind}") or {}
        avail = b_info.get("avail_vcpus")
        vcpus = len(avail) if isinstance(avail, list) and avail else b_info.get("max_vcpus")
        found.append(
            DomainConfig(
                domid=entry.get("domid"),
                name=c_info.get("name") or "",
                type=kind,
                max_memkb=b_info.get("max_memkb"),
                vcpus=vcpus,
                # 4.9 keeps kernel in type.pv; later releases in b_info itself.
                kernel=b_info.get("kernel") or union.get("kernel"),
                bootloader=union.get("bootloader") or b_info.get("bootloader"),
                disks=[
                    DiskInfo(
                        vdev=d.get("vdev") or "",
                        target=d.get("pdev_path") or d.get("target") or "",
                        writable=bool(d.get("readwrite", 0)),
                        cdrom=bool(d.get("is_cdrom", 0)),
                    )
                    for d in config.get("disks") or []
                ],
                nics=[
                    NicInfo(
                        devid=int(n.get("devid", i)),
                        mac=(n.get("mac") or "").lower() or None,
                        ip=n.get("ip"),
                        bridge=n.get("bridge"),
                    )
                    for i, n in enumerate(config.get("nics") or [])
                ],
            )
        )
    return found


# --- xentop -b ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Top:
    """One domain row of `xentop -b`."""

    name: str  # cut to 10 characters unless xentop ran with -f
    state: str  # in xl's order and letters (see FLAGS), so decode_state reads it
    cpu_s: int
    cpu_pct: float
    mem_kib: int
    maxmem_kib: Optional[int]  # None: no limit
    vcpus: int
    nets: int
    net_tx_kib: int
    net_rx_kib: int
    vbds: int


def _xentop_state(letters: str) -> str:
    """xentop's d s b c p r positions -> xl's r b p s REASON d (a crash: shutdown, reason c)."""
    d, s, b, c, p, r = (letters + "------")[:6]
    crashed = c == "c"
    return "".join(
        [
            "r" if r == "r" else "-",
            "b" if b == "b" else "-",
            "p" if p == "p" else "-",
            "s" if s == "s" or crashed else "-",
            "c" if crashed else "-",
            "d" if d == "d" else "-",
        ]
    )


def parse_xentop(text: str) -> List[Top]:
    """`xentop -b -i N`: a header line, then a row a domain, for each of the N iterations. The
    last iteration's rows (CPU(%) needs two samples: the first iteration's is 0.0)."""
    rows: List[Top] = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "NAME":
            rows = []  # a new iteration starts
            continue
        # MAXMEM(k) "no limit" and MAXMEM(%) "n/a" for a domain without a cap (Domain-0)
        if len(words) > 8 and words[6:8] == ["no", "limit"]:
            words[6:8] = ["-1"]
        try:
            rows.append(
                Top(
                    name=words[0],
                    state=_xentop_state(words[1]),
                    cpu_s=int(words[2]),
                    cpu_pct=float(words[3]),
                    mem_kib=int(words[4]),
                    maxmem_kib=None if words[6] == "-1" else int(words[6]),
                    vcpus=int(words[8]),
                    nets=int(words[9]),
                    net_tx_kib=int(words[10]),
                    net_rx_kib=int(words[11]),
                    vbds=int(words[12]),
                )
            )
        except (IndexError, ValueError):
            continue
    return rows


# --- xl uptime ---------------------------------------------------------------------------------
def parse_uptime(text: str) -> Dict[str, int]:
    """`xl uptime [NAME]`: {name: seconds}; xl prints 'H:MM:SS' or 'D day(s), H:MM:SS'."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^(\S+)\s+\d+\s+(?:(\d+) days?,\s*)?(\d+):(\d\d):(\d\d)\s*$", line)
        if match:
            name, days, hours, minutes, seconds = match.groups()
            found[name] = (
                int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
            )
    return found


# --- waiting for a domain to be gone -----------------------------------------------------------
def wait_gone(
    name: str,
    timeout: float,
    ask: Callable[..., Answer] = call,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = 0.5,
) -> bool:
    """Poll until `xl list NAME` fails (the domain is gone), at most `timeout` seconds; whether
    it went. After `xl shutdown -w` returns, or `xl destroy`, the domain lingers 3.5 to 10 s
    (shut down, then dying, then listed as '(null)'); an `xl create` of the same name in that
    window fails with "already exists"."""
    deadline = clock() + timeout
    while True:
        if not ask("list", name).ok:
            return True
        if clock() >= deadline:
            return False
        sleep(interval)


# --- the hypervisor's version ------------------------------------------------------------------
def info_version(info: Dict[str, str]) -> Optional[Tuple[int, int]]:
    """(major, minor) from `xl info`'s xen_major and xen_minor."""
    try:
        return int(info["xen_major"]), int(info["xen_minor"])
    except (KeyError, ValueError):
        return None


def package_version(names: Sequence[str]) -> Optional[Tuple[int, int]]:
    """(major, minor) of the newest installed hypervisor package among `names` (dpkg's package
    names: xen-hypervisor-4.9-amd64, xen-hypervisor-4.17-amd64)."""
    found = []
    for name in names:
        match = re.match(r"^xen-hypervisor-(\d+)\.(\d+)-", name)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return max(found) if found else None


def installed_hypervisors(admindir: str = "/var/lib/dpkg") -> List[str]:
    """The xen-hypervisor-* packages dpkg has installed."""
    try:
        proc = subprocess.run(
            ["dpkg-query", f"--admindir={admindir}", "-W", "-f=${Package} ${Status}\n",
             "xen-hypervisor-*"],
            capture_output=True, text=True,
        )  # fmt: skip
    except OSError:
        return []
    return [
        line.split()[0]
        for line in proc.stdout.splitlines()
        if line.strip().endswith(" ok installed")
    ]


def host_version() -> Tuple[Optional[Tuple[int, int]], str]:
    """(major, minor) of this host's Xen and where it was read: `xl info` when Xen runs, else the
    installed hypervisor package (Xen installed, not booted yet); (None, why) when neither."""
    answer = call("info")
    if answer.ok:
        version = info_version(parse_info(answer.out))
        if version:
            return version, "xl info"
    version = package_version(installed_hypervisors())
    if version:
        return version, "the installed xen-hypervisor package"
    return None, "no xl info answer and no xen-hypervisor package installed"
