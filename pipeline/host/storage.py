"""host.storage: the guests' volume group on space the install left free (fdisk, pvcreate, vgcreate).

On a whole disk: one new Linux LVM partition in the largest free region, then the PV and the VG on
it (a blank disk, with no table and no signature, gets a GPT holding just that partition). On a
partition: the PV and VG on it, if it is empty. Every refusal happens before anything
changes; what this run made is removed again when a later step fails. An existing partition,
filesystem or PV that is not this VG's is never touched.
"""

import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipeline import lvm, units
from pipeline.config import StorageConfig
from pipeline.errors import BadInput
from pipeline.host import partitions
from pipeline.runner import Runner

DEVICE = "host.storage.device"
SIZE = "host.storage.size"
VOLUME_GROUP = "host.storage.volume_group"
EXTENDED = {"5", "f", "85"}  # msdos extended partition types: free space inside is for logicals


@dataclass(frozen=True)
class Result:
    device: str
    pv: str  # the PV's device (the new or given partition); planned in dry-run
    volume_group: str
    changed: bool
    facts: List[lvm.PvFacts]  # pvdisplay's facts for the VG's PVs (empty in dry-run)

    def as_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["physical_volumes"] = data.pop("facts")
        return data


def _real(path: str) -> str:
    return os.path.realpath(path)


def _disk_of(device: str) -> str:
    """The kernel name of the whole disk a block device belongs to (itself for a whole disk)."""
    name = Path(_real(device)).name
    sys_path = partitions.SYS_BLOCK / name
    if (sys_path / "partition").exists():
        return Path(os.path.realpath(str(sys_path))).parent.name
    return name


def _on_device(pv_name: str, device: str) -> bool:
    """Whether PV `pv_name` is `device` itself or one of its partitions."""
    if not os.path.exists(pv_name):
        return False
    if _real(pv_name) == _real(device):
        return True
    return not partitions.is_partition(device) and _disk_of(pv_name) == _disk_of(device)


def _check_device(device: Optional[str]) -> str:
    if not device:
        raise BadInput(DEVICE, device, "is required: the disk (or empty partition) for the PV")
    try:
        mode = os.stat(device).st_mode
    except OSError as exc:
        raise BadInput(DEVICE, device, f"cannot be read: {exc.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise BadInput(DEVICE, device, "is not a block device")
    return device


def _existing(config: StorageConfig, device: str) -> Optional[List[str]]:
    """The VG's PVs when it already exists on `device` (a second run); BadInput when elsewhere."""
    name = config.volume_group
    if lvm.vg(name) is None:
        return None
    pvs = [p["pv_name"] for p in lvm.pvs() if p["vg_name"] == name]
    elsewhere = [p for p in pvs if not _on_device(p, device)]
    if elsewhere or not pvs:
        raise BadInput(
            VOLUME_GROUP,
            name,
            f"already exists on {', '.join(pvs) or 'other devices'}, not on {device}",
        )
    return pvs


def _foreign_pv(device: str) -> None:
    for row in lvm.pvs():
        if not os.path.exists(row["pv_name"]) or _real(row["pv_name"]) != _real(device):
            continue
        owner = f"of VG {row['vg_name']}" if row["vg_name"] else "in no VG"
        raise BadInput(DEVICE, device, f"is already a PV ({owner}); host.storage leaves it alone")


def _plan_partition(config: StorageConfig, device: str):
    """(table, region, sectors) for the new partition; BadInput when there is no room."""
    table = partitions.read_table(device)
    if table is None:
        found = partitions.signatures(device)
        if found:
            raise BadInput(
                DEVICE,
                device,
                f"has no partition table but holds {found.get('TYPE') or found}; it is not empty",
            )
        table = partitions.blank_table(device)  # a blank disk: a GPT with just our partition
    if table.label not in partitions.LVM_TYPE:
        raise BadInput(DEVICE, device, f"has a {table.label} partition table (gpt or dos only)")
    extended = [p for p in table.partitions if p.type.lower() in EXTENDED]
    regions = [
        r
        for r in partitions.free_regions(table)
        if not any(e.start <= r.start < e.start + e.size for e in extended)
    ]
    if not regions:
        raise BadInput(DEVICE, device, "has no free region of at least 1 MiB")
    if partitions.primary_slots_left(table) <= 0:
        raise BadInput(DEVICE, device, "its msdos table has no free primary partition slot")
    region = regions[0]
    if config.size is None:
        return table, region, region.size
    per = partitions.ALIGN
    wanted = -(-config.size // per) * per // table.sector_size
    if wanted > region.size:
        raise BadInput(
            SIZE,
            units.human(config.size),
            f"is larger than the largest free region of {device} ({units.human(region.bytes)})",
        )
    return table, region, wanted


def _image_dir(config: StorageConfig, runner: Runner) -> Result:
    """kind 'dir': no LVM, the guests' disks are files; only their directory is made."""
    target = runner.path(config.dir)
    if not target.is_dir():
        missing = [p for p in reversed(target.parents) if not p.exists()] + [target]

        def undo() -> None:  # also after a mkdir cut short: only the empty folders it made
            for made in reversed(missing):
                if made.is_dir() and not any(made.iterdir()):
                    made.rmdir()

        runner.change(
            f"create directory {target} for the guests' disk images",
            lambda: target.mkdir(parents=True, mode=0o700),
            undo,
            partial=True,
        )
    return Result(str(target), "", "", bool(runner.changes), [])


def owner_name(volume_group: str) -> str:
    """The GPT name host.storage gives the partition it makes for `volume_group` (at most 36)."""
    return f"xenlab-{volume_group}"[:36]


def _left_over(config: StorageConfig, device: str) -> Optional[partitions.Partition]:
    """The partition an earlier run made for this VG and did not finish (killed with SIGKILL, the
    power gone): a Linux LVM partition of this disk with host.storage's GPT name for the VG, blank
    or a PV in no VG. None when there is none (then a new partition is made)."""
    table = partitions.read_table(device)
    if table is None or table.label != "gpt":
        return None
    for part in table.partitions:
        if part.name != owner_name(config.volume_group) or part.type != partitions.LVM_TYPE["gpt"]:
            continue
        if not os.path.exists(part.node):
            # Killed between sfdisk and partx: the kernel has not seen it yet (harmless to tell:
            # the table on the disk is what it is).
            partitions.reread(device)
            partitions.wait_for_node(part.node)
        found = partitions.signatures(part.node)
        rows = [
            r
            for r in lvm.pvs()
            if os.path.exists(r["pv_name"]) and _real(r["pv_name"]) == _real(part.node)
        ]
        if not found or (found.get("TYPE") == "LVM2_member" and rows and not rows[0]["vg_name"]):
            return part
    return None


def _adopt(config: StorageConfig, device: str, runner: Runner) -> str:
    """Finish what an interrupted run started on its own partition: the PV, then the VG."""
    part = _left_over(config, device)
    assert part is not None
    runner.say(
        f"{part.node} was made by an earlier host.storage for {config.volume_group} that did not"
        " finish (its GPT name says so): finishing it"
    )
    with runner.transaction():
        if not partitions.signatures(part.node):
            lvm.pvcreate(runner, part.node)
        lvm.vgcreate(runner, config.volume_group, [part.node])
    return part.node


def configure(config: StorageConfig, runner: Runner) -> Result:
    if config.kind == "dir":
        return _image_dir(config, runner)
    device = _check_device(config.device)
    name = config.volume_group
    pvs = _existing(config, device)
    if pvs is not None:
        return Result(device, pvs[0], name, False, lvm.pv_facts(name))

    _foreign_pv(device)
    if partitions.is_partition(device):
        found = partitions.signatures(device)
        if found:
            raise BadInput(
                DEVICE, device, f"holds a {found.get('TYPE', 'data')} signature; it is not empty"
            )
        if config.size is not None:
            # The site's size is for a new partition; an existing one is used whole.
            runner.say(f"{SIZE} does not apply to the existing partition {device}: all of it")
        with runner.transaction():
            lvm.pvcreate(runner, device)
            lvm.vgcreate(runner, name, [device])
        pv = device
    elif _left_over(config, device) is not None:
        pv = _adopt(config, device, runner)
    else:
        table, region, sectors = _plan_partition(config, device)
        with runner.transaction():
            pv = partitions.append(runner, table, region, sectors, owner_name(name))
            lvm.pvcreate(runner, pv)
            lvm.vgcreate(runner, name, [pv])
    facts = [] if runner.dry_run else lvm.pv_facts(name)
    return Result(device, pv, name, True, facts)
