"""LVM as its own commands report it (JSON, sizes in bytes), and the changes guests need.

Reads run always (also in dry-run); changes go through the runner so they roll back.
"""

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional

from pipeline.runner import Runner, checked, run_checked

PV_FIELDS = "pv_name,vg_name,pv_size,pv_free,pv_pe_count,pv_pe_alloc_count,pv_uuid"
VG_FIELDS = "vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,pv_count,lv_count"
LV_FIELDS = "lv_name,vg_name,lv_size,lv_path,seg_start_pe,seg_pe_ranges,devices"


def _report(command: str, fields: str, *args: str) -> List[Dict[str, str]]:
    argv = [command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0 and ("not found" in proc.stderr or "Failed to find" in proc.stderr):
        return []
    checked(proc)
    return json.loads(proc.stdout)["report"][0][command[:-1]]


def device_mapper() -> bool:
    """Whether LVs can be activated here (the test machines' kernel has no device-mapper).

    Asks the kernel: LVM's tools create /dev/mapper/control even where no driver answers it.
    """
    try:
        with open("/proc/misc") as fh:
            return any(line.split()[-1:] == ["device-mapper"] for line in fh)
    except OSError:
        return False


def pvs(*names: str) -> List[Dict[str, str]]:
    return _report("pvs", PV_FIELDS, *names)


def vgs(*names: str) -> List[Dict[str, str]]:
    return _report("vgs", VG_FIELDS, *names)


def lvs(volume_group: str) -> List[Dict[str, str]]:
    return _report("lvs", LV_FIELDS, volume_group)


def vg(name: str) -> Optional[Dict[str, str]]:
    found = vgs(name)
    return found[0] if found else None


def lv(volume_group: str, name: str) -> Optional[Dict[str, str]]:
    for row in lvs(volume_group):
        if row["lv_name"] == name:
            return row
    return None


def lvcreate(runner: Runner, volume_group: str, name: str, size: int) -> str:
    """Create VG/NAME of `size` bytes (rounded up to extents); its path. Removed on rollback.

    Without device-mapper the LV is created inactive (metadata only); activating it is the caller's.
    """
    path = f"/dev/{volume_group}/{name}"
    argv = ["lvcreate", "--yes", "--name", name, "--size", f"{size}b", volume_group]
    if not device_mapper():
        argv[1:1] = ["--driverloaded", "n", "--activate", "n", "--zero", "n"]

    def undo() -> None:  # also after an lvcreate that failed or was interrupted half-way
        if lv(volume_group, name) is not None:
            runner.run(["lvremove", "--yes", f"{volume_group}/{name}"])

    runner.change(
        f"create LV {volume_group}/{name} ({size} bytes)",
        lambda: runner.run(argv),
        undo,
        partial=True,
    )
    return path


def pvcreate(runner: Runner, device: str) -> None:
    """Make `device` a PV; removed again on rollback.

    No --yes or --force: pvcreate refuses a device that holds a filesystem or another signature,
    so it never overwrites data (its question gets EOF on stdin, which is a no).
    """

    def undo() -> None:  # also after a pvcreate (or a vgcreate on it) cut short half-way
        if pvs(device):
            # This run made the PV (host.storage refuses a device that already is one), so
            # whatever a killed vgcreate left on it is this run's too: -ff removes that as well.
            _change(["pvremove", "-ff", "--yes", device])

    runner.change(f"create PV {device}", lambda: _change(["pvcreate", device]), undo, partial=True)


def vgcreate(runner: Runner, name: str, devices: List[str]) -> None:
    """Make VG `name` on the PVs `devices`; removed again on rollback."""

    def undo() -> None:  # also after a vgcreate that failed or was interrupted half-way
        # Not `vg(name)` first: metadata a killed vgcreate half-wrote may not report as a VG.
        env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")
        proc = subprocess.run(
            ["vgremove", "--yes", "--force", name], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        if proc.returncode != 0 and "not found" not in proc.stderr:
            checked(proc)  # not found: vgcreate was cut short before it made the VG

    runner.change(
        f"create VG {name} on {', '.join(devices)}",
        lambda: _change(["vgcreate", name, *devices]),
        undo,
        partial=True,
    )


def _change(argv: List[str]) -> str:
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")
    proc = run_checked(argv, stdin=subprocess.DEVNULL, env=env)
    return proc.stdout


def lvremove(runner: Runner, volume_group: str, name: str) -> None:
    runner.change(
        f"remove LV {volume_group}/{name}",
        lambda: runner.run(["lvremove", "--yes", f"{volume_group}/{name}"]),
    )


@dataclass(frozen=True)
class PvFacts:
    """What pvdisplay shows for a PV: its name, VG, size, extent size and extent counts."""

    pv_name: str
    vg_name: str
    pv_size: int  # bytes usable by LVM
    dev_size: int  # bytes of the device; pvdisplay calls this "PV Size"
    pe_size: int  # bytes
    total_pe: int
    free_pe: int
    allocated_pe: int


def pv_facts(volume_group: Optional[str] = None) -> List[PvFacts]:
    """The pvdisplay facts of the PVs in `volume_group` (of all PVs when None)."""
    select = ["--select", f"vg_name={volume_group}"] if volume_group else []
    rows = _report(
        "pvs",
        "pv_name,vg_name,pv_size,dev_size,vg_extent_size,pv_pe_count,pv_pe_alloc_count",
        *select,
    )
    facts = []
    for row in rows:
        total = int(row["pv_pe_count"] or 0)
        used = int(row["pv_pe_alloc_count"] or 0)
        facts.append(
            PvFacts(
                pv_name=row["pv_name"],
                vg_name=row["vg_name"],
                pv_size=int(row["pv_size"]),
                dev_size=int(row["dev_size"]),
                pe_size=int(row["vg_extent_size"] or 0),
                total_pe=total,
                free_pe=total - used,
                allocated_pe=used,
            )
        )
    return facts
