"""The rehearsal's VM: qemu under software emulation (the recipes: /dev/kvm here boots no ordinary
kernel), booted by its own BIOS and GRUB from the host disk, its NIC on the router's tap, its
serial console in a file. It reboots itself (no -no-reboot): the host reboots into Xen and later
once more to prove its guests come back. Stopped by its PID.
"""

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from pipeline.errors import Failed
from pipeline.lab.rehearsal import topology


@dataclass
class Vm:
    proc: "subprocess.Popen[bytes]"
    console: Path
    boot_mark: int = 0  # where the console's current boot starts (a reboot moves it)

    def text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def mark(self) -> int:
        """Where the console is now: later waits look only at what comes after it."""
        return len(self.text())

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> "re.Match[str]":
        """Wait until the console shows `pattern` (after offset `since`); Failed if it does not."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = rx.search(self.text(), since)
            if found:
                return found
            if self.proc.poll() is not None:
                raise Failed(f"the VM exited ({self.proc.returncode}) before its console showed"
                             f" {pattern!r}")  # fmt: skip
            if time.monotonic() > deadline:
                raise Failed(f"the VM's console did not show {pattern!r} within {timeout:.0f} s")
            time.sleep(1)

    def tail(self, lines: int = 40) -> List[str]:
        return self.text().splitlines()[-lines:]

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def argv(disk: Path, console: Path, mac: str, memory_mib: int, cpus: int) -> List[str]:
    return [
        "qemu-system-x86_64",
        "-accel", "tcg,thread=multi",
        "-cpu", "qemu64",
        "-m", str(memory_mib),
        "-smp", str(cpus),
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{console}",
        "-drive", f"file={disk},format=raw,if=virtio,cache=unsafe",
        "-netdev", f"tap,id=n0,ifname={topology.TAP},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
    ]  # fmt: skip


def start(
    router: str, disk: Path, console: Path, mac: str, memory_mib: int, cpus: int,
    log: Optional[Path] = None,
) -> Vm:  # fmt: skip
    """Power the VM on in the router namespace, where its tap is."""
    console.write_bytes(b"")
    out = open(str(log), "ab") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            topology.exec_argv(router, argv(disk, console, mac, memory_mib, cpus)),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the rehearsal, which stops qemu itself
        )  # fmt: skip
    finally:
        if log:
            out.close()
    return Vm(proc, console)


def poll(what: str, check: Callable[[], bool], timeout: float, every: float = 2.0) -> None:
    """Until `check()` holds; Failed naming `what` if it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
