"""The rehearsal's network, all in namespaces it creates and removes: the upstream router and,
for the install only, the installer's side of the segment.

    router namespace:  bridge (rehearse.gateway/24 and rehearse.outside/24)
                         |- tap        the VM's uplink (qemu opens it)
                         |- veth peer  the installer's NIC while the late setup runs
                       route host.subnet via rehearse.uplink (the host routes it to its guests)
    installer namespace: veth with the host's MAC and rehearse.uplink, default route via the router

pxe.serve runs in the router namespace on the bridge, as it would on the install machine's NIC.
Names carry the run's id, so two rehearsals (or a stale one) never collide; `remove` deletes the
namespaces, and with them every link in them.
"""

import subprocess
from dataclasses import dataclass
from typing import List

from pipeline.config import Site
from pipeline.runner import run_checked

BRIDGE = "xlr-br0"  # names inside the router namespace: its own, so they need no run id
TAP = "xlr-tap0"
INSTALLER_PORT = "xlr-inst0"
INSTALLER_NIC = "eth0"  # inside the installer namespace


@dataclass(frozen=True)
class Topology:
    router: str  # namespace names
    installer: str

    @property
    def namespaces(self) -> List[str]:
        return [self.router, self.installer]


def named(run_id: str) -> Topology:
    return Topology(router=f"xlr-{run_id}", installer=f"xli-{run_id}")


def _ip(*args: str) -> None:
    run_checked(["ip", *args])


def create(topo: Topology, site: Site) -> None:
    """The router namespace with its bridge, tap, addresses and the route to host.subnet."""
    r = site.rehearse
    ns = topo.router
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0")
    _ip("-n", ns, "addr", "add", f"{r.gateway}/{r.uplink.network.prefixlen}", "dev", BRIDGE)
    _ip("-n", ns, "addr", "add", str(r.outside), "dev", BRIDGE)
    _ip("-n", ns, "link", "set", BRIDGE, "up")
    _ip("-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap")
    _ip("-n", ns, "link", "set", TAP, "master", BRIDGE, "up")
    # The host's /28 is routed to the host, as the lab's upstream router does.
    _ip("-n", ns, "route", "add", str(site.host.subnet), "via", str(r.uplink.ip))


def add_installer(topo: Topology, site: Site) -> None:
    """The installer's NIC: the host's MAC and uplink address, as the installed host will have."""
    r = site.rehearse
    ns = topo.installer
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", topo.router, "link", "add", INSTALLER_PORT, "type", "veth", "peer", "name",
        INSTALLER_NIC, "netns", ns)  # fmt: skip
    _ip("-n", topo.router, "link", "set", INSTALLER_PORT, "master", BRIDGE, "up")
    _ip("-n", ns, "link", "set", INSTALLER_NIC, "address", site.install.mac)
    _ip("-n", ns, "addr", "add", str(r.uplink), "dev", INSTALLER_NIC)
    _ip("-n", ns, "link", "set", INSTALLER_NIC, "up")
    _ip("-n", ns, "route", "add", "default", "via", str(r.gateway))


def remove_installer(topo: Topology) -> None:
    """The install is over: its NIC leaves the segment before the VM, with the same MAC and
    address, comes up on it (and the router forgets the old neighbour entry)."""
    _delete(topo.installer)
    subprocess.run(["ip", "-n", topo.router, "neigh", "flush", "dev", BRIDGE],
                   capture_output=True)  # fmt: skip


def _delete(ns: str) -> None:
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def remove(topo: Topology) -> None:
    for ns in topo.namespaces:
        _delete(ns)


def exec_argv(ns: str, argv: List[str]) -> List[str]:
    """`argv` run in namespace `ns` (ip netns exec execs it: the PID is the command's own)."""
    return ["ip", "netns", "exec", ns, *argv]
