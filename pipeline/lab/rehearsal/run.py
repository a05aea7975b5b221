"""One rehearsal's state: its site, its files, and what it started (each stopped by `close`)."""

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from pipeline.config import Site
from pipeline.lab.rehearsal import topology
from pipeline.lab.rehearsal.remote import Ssh
from pipeline.lab.rehearsal.vm import Vm
from pipeline.runner import Runner

SITE_FILE = Path(__file__).resolve().parent / "site.yaml"  # the rehearsal's own site


@dataclass
class Run:
    site: Site
    site_file: Path  # the run's site file (the rehearsal's, with its key): pxe.serve reads it
    work: Path  # this run's files: disk, console, keys, pxe.serve's root
    output: Path  # what is kept: transcript, console, report, drawing
    topo: topology.Topology
    key: Path  # the admin's private key (its .pub is in the site)
    say: Callable[[str], None]
    vm: Optional[Vm] = None
    serve: Optional["subprocess.Popen[bytes]"] = None
    dom0: Optional[Ssh] = None
    guest_known_hosts: Optional[Path] = None
    base_disk: object = None  # disk.BaseDisk, once prepared
    way_shown: int = 0  # how much of pxe.status's way of the host was said already
    started: float = field(default_factory=time.monotonic)
    notes: List[str] = field(default_factory=list)

    @property
    def pxe_root(self) -> Runner:
        """pxe.serve's --root: its boot tree (the wheelhouse) and state directory are under work."""
        return Runner(root=self.work)

    @property
    def state_dir(self) -> Path:
        return self.pxe_root.path(self.site.pxe.state_dir)

    @property
    def tftp_root(self) -> Path:
        return self.pxe_root.path(self.site.pxe.tftp_root)

    @property
    def disk(self) -> Path:
        return self.work / "disk.img"

    @property
    def console(self) -> Path:
        return self.output / "console.log"

    @property
    def serve_log(self) -> Path:
        return self.output / "pxe-serve.log"

    @property
    def mac(self) -> str:
        assert self.site.install.mac
        return self.site.install.mac

    def ssh_guest(self, name: str, user: Optional[str] = None, source: Optional[str] = None) -> Ssh:
        guest = self.site.guests[name]
        assert guest.ip is not None and self.guest_known_hosts is not None
        return Ssh(self.topo.router, user or guest.user, str(guest.ip), self.key,
                   self.guest_known_hosts, source)  # fmt: skip

    def close(self) -> None:
        """Stop what this run started, by PID, and remove its namespaces (links go with them)."""
        if self.vm is not None:
            self.vm.stop()
        if self.serve is not None and self.serve.poll() is None:
            os.kill(self.serve.pid, signal.SIGTERM)
            try:
                self.serve.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.serve.pid, signal.SIGKILL)
                self.serve.wait(timeout=15)
        topology.remove(self.topo)
