"""ssh from the router namespace, the way the lab's author checks a host from a laptop: the
admin's key only, the host key known in advance (StrictHostKeyChecking=yes), no user config.
"""

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from pipeline.errors import Failed
from pipeline.lab.rehearsal import topology
from pxe.preseed import APP_DIR

# xenlab on the installed host, as its late setup put it there.
INVOKE = f"cd {APP_DIR} && sudo -n {APP_DIR}/.venv/bin/invoke"


@dataclass(frozen=True)
class Ssh:
    netns: str
    user: str
    address: str
    key: Path
    known_hosts: Path
    source: Optional[str] = None  # the local address to connect from (ssh -b)

    def argv(self, command: str, *extra: str) -> List[str]:
        opts = [
            "-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6", "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.source:
            opts += ["-b", self.source]
        return topology.exec_argv(
            self.netns, ["ssh", *opts, *extra, f"{self.user}@{self.address}", command]
        )

    def run(self, command: str, timeout: float = 300, *extra: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                self.argv(command, *extra), stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124, "", f"timed out after {timeout} s")

    def out(self, command: str, timeout: float = 300) -> str:
        """stdout of `command`; Failed with what it said when it exits non-zero."""
        proc = self.run(command, timeout)
        if proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip())[-3000:]
            raise Failed(f"ssh {self.user}@{self.address} {command!r} exited {proc.returncode}:"
                         f"\n{said}")  # fmt: skip
        return proc.stdout

    def up(self) -> bool:
        return self.run("true", timeout=40).returncode == 0

    def invoke(self, task: str, *args: str, timeout: float = 600) -> str:
        return self.out(" ".join([INVOKE, task, *(shlex.quote(a) for a in args)]), timeout)


def ping(
    netns: str, address: str, count: int = 1, wait: int = 2, source: Optional[str] = None
) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(wait)]
    if source:
        argv += ["-I", source]
    proc = subprocess.run(topology.exec_argv(netns, [*argv, address]), capture_output=True)
    return proc.returncode == 0
