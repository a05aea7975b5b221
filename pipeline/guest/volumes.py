"""A guest's disk and swap volumes (LVs or sparse files) and what goes on them.

The root filesystem is made straight from the golden tree with `mkfs.ext4 -d`: no mount, no
copy through a loop device, and only the blocks the tree uses are written (the rest of the
volume stays unwritten: sparse in a file, untouched in an LV).
"""

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from pipeline import lvm
from pipeline.config import StorageConfig
from pipeline.errors import Failed
from pipeline.runner import Runner, checked, run_checked

Activate = Callable[[str, str], str]


@dataclass(frozen=True)
class Volume:
    role: str  # "disk" or "swap"
    size: int  # bytes
    path: str  # the block device (/dev/VG/LV) or the image file
    volume_group: Optional[str] = None  # set for LVs
    lv: Optional[str] = None


def plan(storage: StorageConfig, name: str, disk: int, swap: int) -> Tuple[Volume, Volume]:
    """Where guest `name`'s disk and swap live: LVs NAME-disk/NAME-swap or DIR/NAME/{disk,swap}.img."""
    if storage.kind == "lvm":
        vg = storage.volume_group
        return (
            Volume("disk", disk, f"/dev/{vg}/{name}-disk", vg, f"{name}-disk"),
            Volume("swap", swap, f"/dev/{vg}/{name}-swap", vg, f"{name}-swap"),
        )
    folder = Path(storage.dir) / name
    return (
        Volume("disk", disk, str(folder / "disk.img")),
        Volume("swap", swap, str(folder / "swap.img")),
    )


def activate_lv(volume_group: str, name: str) -> str:
    """Activate an LV the real way; its device path. Needs device-mapper in the kernel."""
    if not lvm.device_mapper():
        raise Failed(
            f"cannot activate {volume_group}/{name}: this kernel has no device-mapper"
            " (no device-mapper in /proc/misc), and LVs cannot be activated without it"
        )
    run_checked(["lvchange", "--activate", "y", f"{volume_group}/{name}"])
    return f"/dev/{volume_group}/{name}"


def create(runner: Runner, volumes: Tuple[Volume, ...], activate: Activate) -> Dict[str, str]:
    """Create the volumes; {role: device or file to write}. Each is removed on rollback."""
    paths = {}
    folders: Set[Path] = set()  # made (or, in dry-run, planned) by this call
    for vol in volumes:
        if vol.volume_group is not None and vol.lv is not None:
            lvm.lvcreate(runner, vol.volume_group, vol.lv, vol.size)
            paths[vol.role] = vol.path if runner.dry_run else activate(vol.volume_group, vol.lv)
        else:
            _sparse_file(runner, Path(vol.path), vol.size, folders)
            paths[vol.role] = vol.path
    return paths


def _sparse_file(runner: Runner, path: Path, size: int, folders: Set[Path]) -> None:
    folder = path.parent
    if not folder.is_dir() and folder not in folders:
        folders.add(folder)
        missing = [p for p in reversed(path.parents) if not p.exists()]

        def rmdirs() -> None:
            for made in reversed(missing):
                if made.is_dir() and not any(made.iterdir()):
                    made.rmdir()

        runner.change(
            f"create directory {folder}", lambda: folder.mkdir(parents=True), rmdirs, partial=True
        )

    before = []  # whether the file was there when make() began (O_EXCL then refuses it)

    def make() -> None:
        before.append(path.exists())
        # 0600: the image holds the guest's whole filesystem; a sparse file takes no space yet.
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def undo() -> None:  # also when make() was cut short; never a file it did not create
        if before == [False] and path.exists():
            path.unlink()

    runner.change(f"create sparse file {path} ({size} bytes)", make, undo, partial=True)


def remove(runner: Runner, storage: StorageConfig, name: str) -> None:
    """Remove guest `name`'s volumes (for --force). Not undone: the old guest is being replaced."""
    if storage.kind == "lvm":
        if lvm.vg(storage.volume_group) is None:
            return
        present = {row["lv_name"] for row in lvm.lvs(storage.volume_group)}
        for role in ("disk", "swap"):
            if f"{name}-{role}" in present:
                lvm.lvremove(runner, storage.volume_group, f"{name}-{role}")
        return
    folder = Path(storage.dir) / name
    if folder.exists():
        runner.run(["rm", "-rf", "--one-file-system", str(folder)])


# --- what goes on them ---------------------------------------------------------------------------
_FSTAB_LINE = re.compile(r"^\s*(LABEL|UUID)=(\S+)\s+(\S+)\s+(\S+)")


def fstab_ids(tree: Path) -> Dict[str, Tuple[str, str]]:
    """{'/' or 'swap': ('LABEL' or 'UUID', value)} from the image's /etc/fstab: what mkfs must set."""
    found: Dict[str, Tuple[str, str]] = {}
    fstab = tree / "etc/fstab"
    if fstab.is_file():
        for line in fstab.read_text().splitlines():
            match = _FSTAB_LINE.match(line)
            if not match:
                continue
            kind, value, mountpoint, fstype = match.groups()
            key = "swap" if fstype == "swap" else mountpoint
            found.setdefault(key, (kind, value))
    return found


def _id_args(ident: Optional[Tuple[str, str]], label_flag: str = "-L") -> List[str]:
    if ident is None:
        return []
    kind, value = ident
    return [label_flag, value] if kind == "LABEL" else ["-U", value]


def mke2fs_version() -> Tuple[int, ...]:
    proc = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True)
    match = re.search(r"mke2fs (\d+)\.(\d+)", proc.stdout + proc.stderr)
    return tuple(int(x) for x in match.groups()) if match else (0, 0)


def ext4_features(old_kernel: bool) -> List[str]:
    """-O options so that the guest's kernel and the host's pygrub can read the filesystem.

    e2fsprogs 1.47 turns on orphan_file and metadata_csum_seed by default; kernels before 5.15
    (Ubuntu 18.04's 4.15) refuse to mount a filesystem with them.
    """
    if old_kernel and mke2fs_version() >= (1, 47):
        return ["-O", "^orphan_file,^metadata_csum_seed"]
    return []


def write_root(
    runner: Runner,
    target: str,
    tree: Path,
    ident: Optional[Tuple[str, str]],
    features: List[str],
    say: Callable[[str], None],
) -> None:
    """mkfs.ext4 over the whole volume, filled from `tree`; progress as MiB written."""
    argv = ["mkfs.ext4", "-q", "-F", *_id_args(ident), *features, "-d", str(tree), target]
    if not runner.dry_run:
        say(f"writing the root filesystem onto {target} from {tree}")
    runner.change(
        f"make ext4 on {target} from {tree} ({' '.join(_id_args(ident)) or 'no label'})",
        lambda: _with_progress(argv, say),
    )
    missing = [d for d in MOUNT_POINTS if not (tree / d).is_dir()]
    if missing and not runner.dry_run:
        # A tree packed without them (tar --exclude) cannot boot: systemd freezes when it cannot
        # mount /proc and /sys. mkfs -d copies only what is there, so add them in place.
        say(f"warning: the golden tree lacks /{', /'.join(missing)}: adding them to the filesystem")
        script = "".join(f"mkdir {d}\nsif {d} mode 0{MOUNT_POINTS[d]:o}\n" for d in missing)
        runner.change(
            f"add mount points {', '.join(missing)} on {target}",
            lambda: _debugfs(target, script),
        )


# Directories every Linux root needs as mount points, with their usual modes (and the type bits).
MOUNT_POINTS = {"proc": 0o40555, "sys": 0o40555, "dev": 0o40755, "run": 0o40755, "tmp": 0o41777}


def _debugfs(target: str, script: str) -> None:
    proc = subprocess.run(
        ["debugfs", "-w", "-f", "-", target], input=script, capture_output=True, text=True
    )
    checked(proc)
    if "debugfs:" not in proc.stdout + proc.stderr:
        raise Failed(f"debugfs -w {target} ran no command: {proc.stderr.strip()}")


def _with_progress(argv: List[str], say: Callable[[str], None]) -> None:
    start = time.monotonic()
    # Output to files, not pipes: mkfs writing a long error into a full pipe would stall.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(argv, stdout=out_file, stderr=err_file, stdin=subprocess.DEVNULL)
        try:
            last = start
            while proc.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                if now - last >= 2:
                    last = now
                    say(f"  {_written(proc.pid) >> 20} MiB written ({now - start:.0f} s)")
        except BaseException:
            # Interrupted (SIGTERM, Ctrl-C) or failing: mkfs stops with the task, before the
            # rollback removes the volume it writes.
            proc.kill()
            proc.wait()
            raise
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    checked(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    say(f"  root filesystem written in {time.monotonic() - start:.1f} s")


def _written(pid: int) -> int:
    """Bytes process `pid` has written so far (/proc/PID/io), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def make_swap(runner: Runner, target: str, ident: Optional[Tuple[str, str]]) -> None:
    argv = ["mkswap", *_id_args(ident), target]
    runner.change(f"make swap on {target}", lambda: runner.run(argv))
