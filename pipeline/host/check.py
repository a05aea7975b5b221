"""host.check: for each step of the lab, whether it is done on this host, what is missing, what fixes it.

It only reads. `gather` collects the raw facts (files, xl, dmesg, netlink, LVM); `evaluate` turns
them into lines, so the judgement is tested on recorded outputs of a real Xen host.
"""

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipeline import lvm, units, xl
from pipeline.config import HostConfig
from pipeline.errors import Failed
from pipeline.guest import xen_cfg

XEN_TASK = "invoke host.xen"
XEN_FIX = XEN_TASK + ", then reboot into Xen"
NETWORK_FIX = "invoke host.network"
STORAGE_FIX = "invoke host.storage"
NOT_XEN = "not running under Xen"


@dataclass(frozen=True)
class Facts:
    """What the host shows; None where it could not be read (no such file, no xl, no answer)."""

    hypervisor: Optional[str]  # /sys/hypervisor/type
    capabilities: Optional[str]  # /proc/xen/capabilities: 'control_d' in dom0
    xl_info: Optional[str]  # `xl info` output
    xl_list: Optional[str]  # `xl list` output
    dmesg: Optional[str]
    grub_cfg: Optional[str]  # /boot/grub/grub.cfg
    bridge: str
    bridge_exists: bool
    bridge_state: str
    bridge_addresses: List[str]
    expected_address: str  # e.g. 192.0.2.1/28
    forwarding: bool
    volume_group: str
    vg: Optional[Dict[str, str]]  # lvm.vgs row, sizes in bytes
    storage_kind: str = "lvm"  # 'dir': guests' disks are files under storage_dir, no VG
    storage_dir: str = ""
    storage_dir_exists: bool = False
    # /etc/default/xendomains (None: not there, so no Xen tools: the Xen lines say so) and the
    # policy the site asks for (host.xen.on_shutdown)
    xendomains: Optional[str] = None
    on_shutdown: str = "shutdown"


@dataclass(frozen=True)
class Line:
    step: str
    ok: bool
    detail: str  # what holds, or what is missing
    fix: Optional[str]  # the task that makes it hold (None when ok)

    @property
    def status(self) -> str:
        return "ok" if self.ok else "missing"


def _line(step: str, ok: bool, good: str, bad: str, fix: str) -> Line:
    return Line(step, ok, good if ok else bad, None if ok else fix)


def evaluate(facts: Facts) -> List[Line]:
    from pipeline.host import (
        xen,  # its grub.cfg reader; imported here to keep check's imports light
    )

    lines = []
    default, entries = xen.parse_grub_cfg(facts.grub_cfg) if facts.grub_cfg else (None, [])
    if facts.grub_cfg is None:
        bad = "no readable /boot/grub/grub.cfg"
    elif not entries:
        bad = "grub.cfg has no Xen entry"
    else:
        bad = f"GRUB boots {default or 'its first entry'!r}, not {entries[0]!r}"
    lines.append(
        _line("Xen default boot", default in entries, f"GRUB boots {default!r}", bad, XEN_TASK)
    )
    hypervisor = (facts.hypervisor or "").strip()
    dom0 = "control_d" in (facts.capabilities or "")
    if hypervisor == "xen" and dom0:
        lines.append(Line("Xen hypervisor", True, "running under Xen, as dom0", None))
    elif hypervisor == "xen":
        lines.append(Line("Xen hypervisor", False, "under Xen, but as a guest (not dom0)", XEN_FIX))
    else:
        found = f" (/sys/hypervisor/type: {hypervisor})" if hypervisor else ""
        lines.append(Line("Xen hypervisor", False, NOT_XEN + found, XEN_FIX))

    info = xl.parse_info(facts.xl_info) if facts.xl_info else {}
    version = info.get("xen_version")
    lines.append(
        _line(
            "xl info",
            bool(version),
            f"Xen {version}, {info.get('free_memory', '?')} MiB free"
            f" of {info.get('total_memory', '?')} MiB",
            "xl info does not answer (no xl, or no hypervisor)",
            XEN_FIX,
        )
    )
    domains = xl.parse_list(facts.xl_list) if facts.xl_list else []
    domain0 = xl.domain0(domains)
    guests = [d.name for d in domains if d is not domain0]
    lines.append(
        _line(
            "Domain-0 in xl list",
            domain0 is not None,
            f"Domain-0: {domain0.memory_mib} MiB, {domain0.vcpus} vCPUs"
            f"; guests: {', '.join(guests) or 'none'}"
            if domain0
            else "",
            "xl list shows no Domain-0",
            XEN_FIX,
        )
    )
    line = xl.xen_line(facts.dmesg) if facts.dmesg is not None else None
    lines.append(
        _line(
            "Xen in dmesg",
            line is not None,
            line or "",
            "no Xen line in dmesg (the kernel booted on bare hardware)"
            if facts.dmesg is not None
            else "dmesg cannot be read",
            XEN_FIX,
        )
    )
    cap = xl.dom0_mem(info)
    lines.append(
        _line(
            "dom0 memory capped",
            cap is not None,
            f"dom0_mem={cap}",
            "no dom0_mem= on Xen's command line" if info else "unknown: xl info does not answer",
            XEN_FIX,
        )
    )

    if facts.xendomains is not None:
        policy = xen.read_xendomains(facts.xendomains)
        holds = policy.on_shutdown == facts.on_shutdown and policy.auto_dir == xen_cfg.AUTO_DIR
        lines.append(
            Line(
                "xendomains policy",
                holds,
                policy.describe()
                + ("" if holds else f" (the site asks for on_shutdown: {facts.on_shutdown})"),
                None if holds else XEN_TASK,
            )
        )

    up = facts.bridge_exists and facts.bridge_state.startswith("up")
    lines.append(
        _line(
            "bridge",
            up,
            f"{facts.bridge} is {facts.bridge_state}",
            f"{facts.bridge} is {facts.bridge_state}",
            NETWORK_FIX,
        )
    )
    has_address = facts.expected_address in facts.bridge_addresses
    lines.append(
        _line(
            "bridge address",
            has_address,
            f"{facts.bridge} has {facts.expected_address}",
            f"{facts.bridge} lacks {facts.expected_address}"
            f" (has: {', '.join(facts.bridge_addresses) or 'none'})",
            NETWORK_FIX,
        )
    )
    lines.append(
        _line("IPv4 forwarding", facts.forwarding, "on", "off", NETWORK_FIX),
    )
    vg = facts.vg
    if facts.storage_kind == "dir":
        lines.append(
            _line(
                "image directory",
                facts.storage_dir_exists,
                f"{facts.storage_dir} exists",
                f"no directory {facts.storage_dir}",
                f"mkdir -p {facts.storage_dir}",
            )
        )
        return lines
    lines.append(
        _line(
            "volume group",
            vg is not None,
            f"{facts.volume_group}: {units.human(int(vg['vg_free']))} free"
            f" of {units.human(int(vg['vg_size']))}"
            if vg
            else "",
            f"no volume group {facts.volume_group}",
            STORAGE_FIX,
        )
    )
    return lines


def summary(lines: List[Line]) -> Optional[str]:
    """None when every step holds; otherwise what is missing, in one line."""
    missing = [line for line in lines if not line.ok]
    if not missing:
        return None
    head = NOT_XEN + "; " if any(line.detail.startswith(NOT_XEN) for line in missing) else ""
    return f"{head}{len(missing)} of {len(lines)} steps missing: " + ", ".join(
        line.step for line in missing
    )


def as_json(lines: List[Line]) -> Dict[str, Any]:
    return {
        "ok": all(line.ok for line in lines),
        "checks": [dict(asdict(line), status=line.status) for line in lines],
    }


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _dmesg() -> Optional[str]:
    try:
        proc = subprocess.run(["dmesg"], capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def gather(host: HostConfig, netns: Optional[str] = None) -> Facts:
    """Read everything `evaluate` judges. The bridge and forwarding are read inside `netns`."""
    from pyroute2 import IPRoute

    from netlink import namespace, state
    from pipeline.host import xen

    with namespace.inside(netns):
        with IPRoute() as ipr:
            bridge = state.read_bridge(ipr, host.bridge)
    name = host.storage.volume_group
    return Facts(
        hypervisor=_read("/sys/hypervisor/type"),
        capabilities=_read("/proc/xen/capabilities"),
        xl_info=xl.run("info"),
        xl_list=xl.run("list"),
        dmesg=_dmesg(),
        grub_cfg=_read("/boot/grub/grub.cfg"),
        bridge=host.bridge,
        bridge_exists=bridge.exists,
        bridge_state=bridge.state,
        bridge_addresses=list(bridge.addresses),
        expected_address=str(host.bridge_interface),
        forwarding=bridge.forwarding,
        volume_group=name,
        vg=_vg(name),
        storage_kind=host.storage.kind,
        storage_dir=host.storage.dir,
        storage_dir_exists=Path(host.storage.dir).is_dir(),
        xendomains=_read(xen.XENDOMAINS),
        on_shutdown=host.xen.on_shutdown,
    )


def _vg(name: str) -> Optional[Dict[str, str]]:
    try:
        return lvm.vg(name)
    except (OSError, Failed):  # no LVM tools, or they fail: the VG is not there to use
        return None
