"""Partition tables as sfdisk reports them, their free regions, and one new partition in one of them.

Reads run always (also in dry-run). The one change, a new partition appended to the table, goes
through the runner and is deleted again on rollback. Nothing here rewrites an existing partition:
sfdisk is only ever asked to append, and pvcreate later refuses a device that holds a signature.
"""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pipeline import units
from pipeline.errors import Failed
from pipeline.runner import Runner, checked, run_checked

ALIGN = 1 << 20  # partitions start and end on MiB boundaries, as fdisk and the installers do
# The "Linux LVM" partition type of each table format.
LVM_TYPE = {"gpt": "E6D6D379-F507-44C2-A23C-238F2A3DF928", "dos": "8e"}
SYS_BLOCK = Path("/sys/class/block")


@dataclass(frozen=True)
class Partition:
    node: str
    number: int
    start: int  # sectors
    size: int  # sectors
    type: str
    name: str = ""  # the GPT partition name (msdos tables have none)


@dataclass(frozen=True)
class Table:
    device: str
    label: str  # 'gpt' or 'dos'
    sector_size: int  # bytes
    partitions: List[Partition]
    new: bool = False  # not on the disk yet: a blank disk gets this (GPT) label with the partition


@dataclass(frozen=True)
class Region:
    """Free space: `start` and `size` in sectors, already aligned to ALIGN."""

    start: int
    size: int
    sector_size: int

    @property
    def bytes(self) -> int:
        return self.size * self.sector_size


def _run(argv: Sequence[str], stdin: str = "") -> str:
    # stdin is never the user's terminal: a tool that wants to ask gets EOF and says no.
    proc = run_checked(argv, input=stdin)
    return proc.stdout


def _number(node: str) -> int:
    digits = ""
    for ch in reversed(node):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits)


def parse_table(text: str) -> Table:
    """`sfdisk --json DEV` output."""
    pt = json.loads(text)["partitiontable"]
    parts = [
        Partition(
            p["node"],
            _number(p["node"]),
            int(p["start"]),
            int(p["size"]),
            p["type"],
            p.get("name", ""),
        )  # fmt: skip
        for p in pt.get("partitions", [])
    ]
    # sfdisk before 2.35 (Ubuntu 18.04 has 2.31) does not say; 0 then, read_table asks the kernel.
    return Table(pt["device"], pt["label"], int(pt.get("sectorsize", 0)), parts)


def parse_free(text: str, sector_size: int) -> List[Region]:
    """`sfdisk --list-free DEV` output: the unpartitioned areas, aligned to ALIGN (too small: left out)."""
    regions = []
    per = ALIGN // sector_size
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not all(w.isdigit() for w in words[:3]):
            continue
        start, end = int(words[0]), int(words[1])
        first = -(-start // per) * per  # round up
        last = ((end + 1) // per) * per  # exclusive, rounded down
        if last - first >= per:
            regions.append(Region(first, last - first, sector_size))
    return regions


def is_partition(device: str) -> bool:
    return (SYS_BLOCK / Path(device).name / "partition").exists()


def read_table(device: str) -> Optional[Table]:
    """The partition table of `device`, or None when it has none."""
    proc = subprocess.run(["sfdisk", "--json", device], capture_output=True, text=True)
    if proc.returncode != 0:
        if "does not contain a recognized partition table" in proc.stderr:
            return None
        checked(proc)
    if not proc.stdout.strip():
        return None
    table = parse_table(proc.stdout)
    if not table.sector_size:
        table = Table(table.device, table.label, logical_sector_size(device), table.partitions)
    return table


def logical_sector_size(device: str) -> int:
    path = SYS_BLOCK / Path(device).name / "queue" / "logical_block_size"
    return int(path.read_text()) if path.exists() else 512


def blank_table(device: str) -> Table:
    """The GPT a blank disk (no table, no signature) gets, with the new partition."""
    return Table(device, "gpt", logical_sector_size(device), [], new=True)


def free_regions(table: Table) -> List[Region]:
    """The table's free regions, largest first."""
    if table.new:
        # All of it but the first and the last MiB (room for the GPT and its backup).
        size = int((SYS_BLOCK / Path(os.path.realpath(table.device)).name / "size").read_text())
        per = ALIGN // table.sector_size
        end = (size * 512 // table.sector_size) // per * per - per
        return [Region(per, end - per, table.sector_size)] if end > 2 * per else []
    text = _run(["sfdisk", "--list-free", table.device])
    return sorted(parse_free(text, table.sector_size), key=lambda r: (-r.size, r.start))


def signatures(device: str) -> Dict[str, str]:
    """What blkid finds on `device` itself (filesystem, PV, RAID, partition table); {} when none."""
    proc = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True)
    if proc.returncode == 2:  # nothing found
        return {}
    checked(proc)
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {k: v for k, v in found.items() if k in ("TYPE", "PTTYPE", "USAGE")}


def partition_node(device: str, number: int) -> str:
    """/dev/sdb + 2 -> /dev/sdb2; /dev/loop0 or /dev/nvme0n1 + 2 -> ...p2 (as the kernel names them)."""
    sep = "p" if device[-1].isdigit() else ""
    return f"{device}{sep}{number}"


def reread(device: str) -> None:
    """Tell the kernel about the table's partitions (no udev may be around to do it)."""
    # partx -u adds, updates and removes partitions to match the table, whatever the kernel saw.
    _run(["partx", "-u", device])


def wait_for_node(node: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(node):
        if time.monotonic() > deadline:
            raise Failed(f"{node} did not appear after the partition table was re-read")
        time.sleep(0.1)


def append(
    runner: Runner, table: Table, region: Region, size_sectors: int, name: Optional[str] = None
) -> str:
    """A new Linux LVM partition at the start of `region`, `size_sectors` long; its device node.

    `name` is the GPT partition name (a plain word; msdos tables have no names).

    Deleted again on rollback, also when this step itself was cut short. sfdisk only appends: the
    existing entries are written back as read.
    """
    device = table.device
    number = _next_number(table)
    node = partition_node(device, number)
    line = f"start={region.start}, size={size_sectors}, type={LVM_TYPE[table.label]}"
    line += f', name="{name}"\n' if name and table.label == "gpt" else "\n"

    # Never wipe: whatever is in the free space stays, and pvcreate then refuses it.
    argv = ["sfdisk", "--no-reread", "--wipe", "never", "--wipe-partitions", "never"]
    if table.new:
        line = f"label: {table.label}\n" + line
    else:
        argv.append("--append")

    def do() -> None:
        _run(argv + [device], stdin=line)
        reread(device)
        wait_for_node(node)

    def undo() -> None:
        # Registered before sfdisk runs, so it also runs when sfdisk, partx or the wait for the
        # node failed or was interrupted: it removes only what is there of this run's partition.
        now = read_table(device)
        if table.new:  # back to blank: the label this run wrote goes (PMBR, GPT and its backup)
            if now is not None or signatures(device):
                _run(["wipefs", "--all", "--quiet", device])
            # wipefs had the kernel re-read the (now absent) table; partx -u would find none.
            subprocess.run(["partx", "-d", device], capture_output=True)
            return
        if now is not None and any(
            p.number == number and p.start == region.start for p in now.partitions
        ):
            _run(["sfdisk", "--delete", "--no-reread", device, str(number)])
        reread(device)

    size = units.human(region.sector_size * size_sectors)
    label = f"a new {table.label} label on blank {device} with " if table.new else ""
    runner.change(
        f"create {label}partition {node} (Linux LVM, {size} at sector {region.start} of {device})",
        do,
        undo,
        partial=True,
    )
    return node


def _next_number(table: Table) -> int:
    """The number sfdisk --append gives the new partition: the first unused one."""
    used = {p.number for p in table.partitions}
    number = 1
    while number in used:
        number += 1
    return number


def primary_slots_left(table: Table) -> int:
    """How many more primary partitions an msdos table takes (GPT: plenty)."""
    if table.label != "dos":
        return 128 - len(table.partitions)
    return 4 - len([p for p in table.partitions if p.number <= 4])
