"""Time `invoke host.storage` against the lab's hand way (fdisk, pvcreate, vgcreate), one run each.

    .venv/bin/python bench/storage.py

Each way gets its own fresh 300G sparse disk behind a loop device, with the lab's GPT (a 20G
first partition, the rest free), and makes a 100G partition, the PV and the VG on it. Everything
made is removed at the end. Prints wall-clock seconds of each and the ratio xenlab / by hand.
"""

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")


def sh(*argv: str, stdin: str = "") -> str:
    return subprocess.run(
        argv, input=stdin, check=True, capture_output=True, text=True, env=ENV
    ).stdout


def disk(work: Path, name: str) -> str:
    image = work / f"{name}.img"
    sh("truncate", "-s", "300G", str(image))
    device = sh("losetup", "-fP", "--show", str(image)).strip()
    sh("sfdisk", "-q", device, stdin="label: gpt\nsize=20G, type=L\n")
    sh("partx", "-u", device)
    return device


def by_hand(device: str, vg: str) -> None:
    """The lab's notes: fdisk n (partition 2, default start, +100G), t (Linux LVM), w; then
    partprobe (here partx, no udev), pvcreate, vgcreate."""
    sh("fdisk", device, stdin="n\n2\n\n+100G\nt\n2\nlvm\nw\n")
    sh("partx", "-u", device)
    sh("pvcreate", device + "p2")
    sh("vgcreate", vg, device + "p2")


def xenlab(device: str, vg: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "invoke", "host.storage", "--device", device, "--size", "100G",
         "--volume-group", vg],
        cwd=str(REPO), check=True, capture_output=True, env=ENV,
    )  # fmt: skip


def timed(fn: Callable[[str, str], None], device: str, vg: str) -> float:
    start = time.perf_counter()
    fn(device, vg)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="xenlab-bench-") as tmp:
        work = Path(tmp)
        made = []
        try:
            results = {}
            for name, fn in (("by hand", by_hand), ("xenlab", xenlab)):
                device = disk(work, name.replace(" ", "-"))
                vg = f"XlBench{uuid.uuid4().hex[:6]}"
                made.append((device, vg))
                results[name] = timed(fn, device, vg)
                assert sh("vgs", "--noheadings", "-o", "pv_count", vg).strip() == "1"
        finally:
            for device, vg in made:
                subprocess.run(["vgremove", "-ff", "-y", vg], capture_output=True, env=ENV)
                subprocess.run(
                    ["pvremove", "-ff", "-y", device + "p2"], capture_output=True, env=ENV
                )
                subprocess.run(["losetup", "-d", device], capture_output=True)
    for name, seconds in results.items():
        print(f"{name:8s} {seconds:6.2f} s")
    print(f"ratio xenlab / by hand: {results['xenlab'] / results['by hand']:.1f}")


if __name__ == "__main__":
    main()
