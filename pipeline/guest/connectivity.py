"""guest.check: the lab's "test network connectivity", answered from the host.

The domain runs; its vif (vifDOMID.0, as Xen's vif-bridge script names it) is a port of the
bridge; the guest answers ping on its address; its sshd on port 22 proves the host key that
guest.build recorded in known_hosts (ssh itself checks the key exchange's signature, with
StrictHostKeyChecking=yes); and, with --from-guest, over ssh with the admin's key, the guest
reaches its gateway and the host's default gateway. One line per check, with the fix.

Pings and ssh run inside `netns` when given (`ip netns exec`), as the tests' host namespace.
"""

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipeline import xl
from pipeline.config import Site
from pipeline.errors import Failed
from pipeline.guest import lifecycle
from pipeline.guest.build import STATE_DIR


@dataclass(frozen=True)
class Line:
    check: str
    ok: bool
    detail: str
    fix: Optional[str] = None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed"


def _in_netns(netns: Optional[str], argv: Sequence[str]) -> List[str]:
    return (["ip", "netns", "exec", netns] if netns else []) + list(argv)


def _run(argv: List[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"no answer within {timeout:.0f} s")
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def ping(address: str, netns: Optional[str], count: int = 3) -> subprocess.CompletedProcess:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", address]
    return _run(_in_netns(netns, argv), timeout=count + 5)


def ping_line(check: str, address: str, proc: subprocess.CompletedProcess, fix: str) -> Line:
    got = re.search(r"(\d+) packets transmitted, (\d+) (packets )?received", proc.stdout)
    counts = f" ({got.group(2)}/{got.group(1)} replies)" if got else ""
    if proc.returncode == 0:
        return Line(check, True, f"{address} answers ping{counts}")
    return Line(check, False, f"{address} does not answer ping{counts}", fix)


# ssh: only the key exchange matters for the host key check; no authentication is offered, so
# a good key ends in "Permission denied" from the guest's sshd.
SSH_OPTIONS = [
    "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
    "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
    "-o", "LogLevel=DEBUG1",  # its "Server host key:" line names the key shown
]  # fmt: skip
NO_AUTH = [
    "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=no",
    "-o", "KbdInteractiveAuthentication=no", "-o", "GSSAPIAuthentication=no",
    "-o", "HostbasedAuthentication=no",
]  # fmt: skip


def ssh_argv(
    address: str,
    known_hosts: Path,
    user: str,
    command: Optional[List[str]] = None,
    identity: Optional[str] = None,
) -> List[str]:
    argv = ["ssh", *SSH_OPTIONS, "-o", f"UserKnownHostsFile={known_hosts}"]
    if command is None:
        argv += NO_AUTH
    else:
        argv += ["-o", "IdentitiesOnly=yes"] if identity else []
        argv += ["-i", identity] if identity else []
    argv += ["-p", "22", f"{user}@{address}"]
    return argv + ([] if command is None else ["--", *command])


def host_key_line(
    address: str, known_hosts: Path, proc: subprocess.CompletedProcess, name: str
) -> Line:
    said = proc.stderr
    key = re.search(r"Server host key: (\S+) (\S+)", said)
    shown = f" ({key.group(1)} {key.group(2)})" if key else ""
    check = "ssh host key"
    if "Host key verification failed" in said or "IDENTIFICATION HAS CHANGED" in said:
        return Line(
            check,
            False,
            f"sshd on {address}:22 shows a host key{shown} that is not the one guest.build"
            f" recorded in {known_hosts}",
            "if the guest was rebuilt, its new known_hosts is in the same place: compare the"
            f" fingerprints on its console (invoke guest.console --name {name}); otherwise"
            f" something else answers on {address}",
        )
    if proc.returncode == 0 or "Permission denied" in said:
        return Line(
            check, True, f"sshd on {address}:22 has the host key guest.build recorded{shown}"
        )
    if "Connection refused" in said:
        why = f"nothing listens on {address}:22 (connection refused)"
    elif "timed out" in said or proc.returncode == 124:
        why = f"no answer from {address}:22 (timed out)"
    else:
        plain = [
            line for line in said.splitlines() if line.strip() and not line.startswith("debug")
        ]
        last = plain[-1] if plain else f"ssh exited {proc.returncode}"
        why = f"ssh to {address}:22 failed: {last}"
    return Line(
        check,
        False,
        why,
        f"the guest's sshd: look at its console (invoke guest.console --name {name});"
        " cloud-init restarts sshd once during the first boot",
    )


def _vif_line(name: str, bridge: str, dom: Optional[xl.Domain], netns: Optional[str]) -> Line:
    from netlink import topology

    check = "vif in bridge"
    if dom is None:
        return Line(check, False, "no domain, so no vif", f"invoke guest.start --name {name}")
    vif = f"vif{dom.id}.0"
    topo = topology.read(netns)
    link = topo.link(vif)
    master = topo.bridge(bridge)
    fix = (
        f"check bridge= in /etc/xen/{name}.cfg and that {bridge} exists (invoke host.network);"
        f" xl network-list {name} shows the vif"
    )
    if link is None:
        return Line(check, False, f"there is no {vif} on this host", fix)
    if master is None or link.master is None:
        return Line(check, False, f"{vif} is in no bridge ({bridge} should hold it)", fix)
    master_link = next((x for x in topo.links if x.index == link.master), None)
    if master_link is None or master_link.name != bridge:
        other = master_link.name if master_link else link.master
        return Line(check, False, f"{vif} is a port of {other}, not of {bridge}", fix)
    state = "up" if link.up else "down"
    if not link.up:
        return Line(check, False, f"{vif} is a port of {bridge} but {state}", fix)
    return Line(check, True, f"{vif} is a port of {bridge} ({state})")


def _domain_line(name: str) -> Tuple[Line, Optional[xl.Domain]]:
    check = "domain"
    if not xl.running():
        return Line(check, False, lifecycle.NOT_XEN, "invoke host.check"), None
    dom = lifecycle.domain(name)
    if dom is None:
        return Line(
            check, False, f"{name} is not running", f"invoke guest.start --name {name}"
        ), None
    word = xl.state_word(dom.state)
    if word == "paused":
        return Line(
            check,
            False,
            f"{name} is paused (domain {dom.id})",
            f"invoke guest.unpause --name {name}",
        ), dom
    if xl.leaving(dom.state):
        return (
            Line(
                check,
                False,
                f"{name} is {word} (domain {dom.id})",
                f"invoke guest.start --name {name}",
            ),
            dom,
        )
    return Line(check, True, f"{name} is {word} (domain {dom.id}, {dom.state})"), dom


def evaluate(
    site: Site,
    name: str,
    root: Path,
    netns: Optional[str] = None,
    from_guest: bool = False,
    identity: Optional[str] = None,
) -> List[Line]:
    """Every check's line; none of them stops the others (a guest that is not a domain can still
    answer ping: the stand-in of the tests, or a guest on another host)."""
    guest = lifecycle.guest_of(site, name)
    if guest.ip is None:
        raise Failed(f"guests.{name}.ip is not set: there is no address to check")
    address = str(guest.ip)
    bridge = guest.bridge or site.host.bridge
    lines = []
    line, dom = _domain_line(name)
    lines.append(line)
    lines.append(_vif_line(name, bridge, dom, netns))
    lines.append(
        ping_line(
            "ping",
            address,
            ping(address, netns),
            f"the guest's network: look at its console (invoke guest.console --name {name});"
            " cloud-init sets its address at the first boot",
        )
    )
    known_hosts = root / STATE_DIR.lstrip("/") / name / "known_hosts"
    if not known_hosts.is_file():
        lines.append(
            Line(
                "ssh host key",
                False,
                f"no {known_hosts}",
                f"guest.build records it: invoke guest.build --name {name} --force",
            )
        )
        return lines
    proc = _run(_in_netns(netns, ssh_argv(address, known_hosts, "xenlab-check")), timeout=20)
    key_line = host_key_line(address, known_hosts, proc, name)
    lines.append(key_line)
    if from_guest:
        lines += _from_guest(site, name, guest, address, known_hosts, netns, identity, key_line.ok)
    return lines


def _from_guest(site, name, guest, address, known_hosts, netns, identity, reachable) -> List[Line]:
    from netlink import topology

    gateway = str(guest.gateway or site.host.bridge_interface.ip)
    host_gateway = topology.read(netns).gateway
    targets = [("guest reaches its gateway", gateway)]
    targets.append(
        ("guest reaches the host's gateway", str(host_gateway) if host_gateway else None)
    )
    lines = []
    for check, target in targets:
        if target is None:
            lines.append(Line(check, False, "the host has no default route", "the host's uplink"))
            continue
        if not reachable:
            lines.append(
                Line(check, False, f"not tried: no ssh to {address}", "the ssh host key line")
            )
            continue
        command = ["ping", "-n", "-c", "2", "-W", "2", target]
        proc = _run(
            _in_netns(netns, ssh_argv(address, known_hosts, guest.user, command, identity)), 30
        )
        if proc.returncode == 255:
            plain = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("debug")]
            said = plain[-1] if plain else "ssh failed"
            lines.append(
                Line(
                    check,
                    False,
                    f"cannot log in as {guest.user}@{address}: {said}",
                    f"the admin's key (guests.{name}.ssh_authorized_keys; --identity FILE)",
                )
            )
            continue
        lines.append(
            ping_line(
                check,
                target,
                proc,
                "the guest's route and the host's forwarding (invoke host.check; from the guest:"
                " ip route)",
            )
        )
    return lines


def summary(lines: List[Line]) -> Optional[str]:
    failed = [line.check for line in lines if not line.ok]
    if not failed:
        return None
    return f"{len(failed)} of {len(lines)} checks failed: {', '.join(failed)}"


def as_json(lines: List[Line]) -> Dict[str, Any]:
    return {
        "ok": all(line.ok for line in lines),
        "checks": [dict(asdict(line), status=line.status) for line in lines],
    }
