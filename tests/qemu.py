"""Boot a VM under software emulation for a test: on a tap in a test namespace, console to a file.

The VM is started with its own PID and killed by that PID when the test ends (see `vm` in conftest).
"""

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from tests.conftest import sh


@dataclass
class Vm:
    proc: subprocess.Popen
    console: Path

    def output(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Wait until the console shows `pattern` (a regex); fail with the console's tail if not."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            match = rx.search(self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        tail = self.output()[-3000:]
        state = (
            f"exited {self.proc.returncode}" if self.proc.poll() is not None else "still running"
        )
        raise AssertionError(f"VM console never showed {pattern!r} ({state}); last output:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def add_bridge(netns: str, bridge: str, *addresses: str) -> str:
    """A bridge in `netns` as the VM's segment: no STP, no forward delay, the addresses, up."""
    sh("ip", "-n", netns, "link", "add", bridge, "type", "bridge",
       "forward_delay", "0", "stp_state", "0")  # fmt: skip
    for address in addresses:
        sh("ip", "-n", netns, "addr", "add", address, "dev", bridge)
    sh("ip", "-n", netns, "link", "set", bridge, "up")
    return bridge


def add_tap(netns: str, bridge: str, tap: str) -> str:
    """A tap device in `netns`, enslaved to `bridge`, up."""
    sh("ip", "-n", netns, "tuntap", "add", "dev", tap, "mode", "tap")
    sh("ip", "-n", netns, "link", "set", tap, "master", bridge, "up")
    return tap


def start(
    console: Path,
    args: List[str],
    netns: Optional[str] = None,
    memory: int = 1024,
) -> Vm:
    """qemu-system-x86_64 under TCG (the /dev/kvm here boots no ordinary kernel), serial to `console`."""
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg,thread=multi",
        "-cpu", "qemu64",
        "-m", str(memory),
        "-smp", "2",
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-serial", f"file:{console}",
        *args,
    ]  # fmt: skip
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return Vm(proc=proc, console=console)
