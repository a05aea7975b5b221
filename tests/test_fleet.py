"""fleet.*: the same tasks on several Xen hosts over SSH, with Fabric.

Fast: the inventory's checks (bad input is exit 2 naming the field and the value, before any
connection), the cross-host checks, the remote command lines, the install script, the status row
from recorded JSON, the host-key policies.

Slow: three hosts as three network namespaces, each running a real OpenSSH server (`sshd -D -e
-f` with the test's own config and host key) inside a private mount namespace in which the
host's /etc/xenlab, /opt/xenlab, /var/lib/xenlab, /etc/netplan and /etc/sysctl.d are per-host
folders; each namespace is joined to this one by a veth pair (10.213.N.1 here, 10.213.N.2 the
host) and has no other route, so no package index is reachable from a host. The test's key is
authorised for root; its known_hosts is a temporary HOME's.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from ruamel.yaml import YAML

from bench.processes import stop
from pipeline.config import load_site
from pipeline.errors import BadInput
from pipeline.fleet import connect, deploy, inventory, status
from pipeline.fleet import run as remote
from pipeline.runner import Runner
from pxe import wheelhouse
from tests.chroots import cached_dir
from tests.conftest import CACHE, REPO, invoke, ip_json, sh

NAMES = ("h1", "h2", "h3")
PER_HOST = ("/etc/xenlab", "/opt/xenlab", "/var/lib/xenlab", "/etc/netplan", "/etc/sysctl.d")
SSHD_CONFIG = """ListenAddress {address}
Port 22
HostKey {key}
PidFile none
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""


def dump(path: Path, data) -> Path:
    with open(str(path), "w") as fh:
        YAML().dump(data, fh)
    return path


def host_site(index: int, guests: Optional[Dict[str, dict]] = None, subnet=None) -> dict:
    """A host's own site: its routed /28 (10.214.N.0/28), dir storage, Debian 12 (this machine's
    Python: the three hosts share it)."""
    return {
        "host": {"subnet": subnet or f"10.214.{index}.0/28",
                 "storage": {"kind": "dir", "dir": "/var/lib/xenlab/guests"}},
        "install": {"profile": "debian-12"},
        "guests": guests or {},
    }  # fmt: skip


# --- three hosts: namespaces, veths, sshd in a private mount namespace ---------------------------
@dataclass
class Host:
    name: str
    index: int
    ns: str
    address: str
    folder: Path  # the per-host folders and sshd's files
    site: Path
    proc: Optional[subprocess.Popen] = None

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def mounted(self, path: str) -> Path:
        """Where the host's `path` (one of PER_HOST) really is."""
        return self.folder / path.strip("/").replace("/", "-")

    def connections(self) -> int:
        return self.log.read_text(errors="replace").count("Connection from ")


class Hosts:
    """Three hosts and a controller HOME (key, known_hosts); close() removes all of it."""

    def __init__(self, work: Path, count: int = 3):
        self.work = work
        self.tag = uuid.uuid4().hex[:5]
        self.hosts: List[Host] = []
        self.made_dirs: List[str] = []
        self.home = work / "home"
        self.count = count

    def start(self) -> "Hosts":
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519"))
        (self.work / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
        for target in PER_HOST:
            if not os.path.isdir(target):
                os.makedirs(target)
                self.made_dirs.append(target)
        known = []
        for i, name in enumerate(NAMES[: self.count], start=1):
            ns = f"xl-fleet{i}-{self.tag}"
            sh("ip", "netns", "add", ns)
            host = Host(name, i, ns, f"10.213.{i}.2", self.work / name, self.work / f"{name}.yaml")
            self.hosts.append(host)
            veth = f"xlf{i}{self.tag}"
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "addr", "add", f"10.213.{i}.1/30", "dev", veth)
            sh("ip", "link", "set", veth, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{host.address}/30", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            host.folder.mkdir()
            for target in PER_HOST:
                host.mounted(target).mkdir()
            key = host.folder / "ssh_host_ed25519_key"
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
            (host.folder / "sshd_config").write_text(
                SSHD_CONFIG.format(
                    address=host.address, key=key, authorized=self.work / "authorized_keys"
                )
            )
            known.append(f"{host.address} {key.with_suffix('.pub').read_text().split(' ')[0]} "
                         f"{key.with_suffix('.pub').read_text().split(' ')[1]}")  # fmt: skip
            dump(host.site, host_site(i))
            self.start_sshd(host)
        (ssh / "known_hosts").write_text("\n".join(known) + "\n")
        return self

    def start_sshd(self, host: Host) -> None:
        binds = " && ".join(f"mount --bind {host.mounted(t)} {t}" for t in PER_HOST)
        script = f"{binds} && exec /usr/sbin/sshd -D -e -f {host.folder / 'sshd_config'}"
        with open(str(host.log), "a") as log:
            host.proc = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, "unshare", "-m", "--propagation", "private",
                 "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert host.proc.poll() is None, host.log.read_text()
            try:
                socket.create_connection((host.address, 22), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"sshd of {host.name} does not listen: {host.log.read_text()}")
        # that probe is a connection too: wait until sshd has logged it, so counts start from here
        time.sleep(0.3)

    def stop_sshd(self, host: Host) -> None:
        if host.proc is not None:
            stop(host.proc)  # by its PID: SIGTERM, then SIGKILL

    def close(self) -> None:
        for host in self.hosts:
            self.stop_sshd(host)
            # the sessions sshd forked live in the namespace: end them by PID, then the namespace
            pids = sh("ip", "netns", "pids", host.ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            sh("ip", "netns", "del", host.ns, check=False)
        for target in reversed(self.made_dirs):
            try:
                os.rmdir(target)
            except OSError:
                pass

    def fleet_file(self, path: Path, **fleet) -> Path:
        hosts = {h.name: {"address": h.address, "user": "root", "site": str(h.site)}
                 for h in self.hosts}  # fmt: skip
        return dump(path, {"fleet": {"hosts": hosts, "connect_timeout": 5, **fleet}})

    def invoke(self, fleet_file: Path, *args: str, home: Optional[Path] = None):
        return invoke("-f", str(fleet_file), *args, env={"HOME": str(home or self.home)})


def wheelhouse_dir() -> Path:
    """The wheelhouse for the debian-12 target (this machine's Python 3.11, which the three
    hosts share), built once per content of the source and cached as test_wheelhouse's inputs
    are: under XENLAB_CACHE, renamed into place only when complete."""
    digest = hashlib.sha256(wheelhouse._app_tarball(REPO))
    for name in (*wheelhouse.PACKAGES, "pyproject.toml"):
        paths = [REPO / name] if (REPO / name).is_file() else sorted((REPO / name).rglob("*"))
        for path in paths:
            rel = path.relative_to(REPO).as_posix()
            if path.is_file() and not wheelhouse._SKIP.search(rel):
                digest.update(rel.encode() + b"\0" + path.read_bytes())
    entry = CACHE / "fleet-wheelhouse" / f"debian-12-{digest.hexdigest()[:16]}"

    def build(tmp: Path) -> None:
        wheelhouse.place(Runner(), tmp, wheelhouse.make("debian-12", print))

    return cached_dir(entry, build) / wheelhouse.DIR


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    lab = Hosts(tmp_path_factory.mktemp("fleet"))
    try:
        yield lab.start()
    finally:
        lab.close()


@pytest.fixture(scope="module")
def deployed(hosts, tmp_path_factory):
    """fleet.deploy run once for the module (the deploy test asserts what it did)."""
    house = wheelhouse_dir()
    fleet_file = hosts.fleet_file(hosts.work / "fleet.yaml")
    for host in hosts.hosts:  # the package index is unreachable from every host
        probe = sh("ip", "netns", "exec", host.ns, "python3", "-c",
                   "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/', timeout=3)",
                   check=False)  # fmt: skip
        assert probe.returncode != 0
    started = time.monotonic()
    first = hosts.invoke(fleet_file, "fleet.deploy", "--wheelhouse", str(house))
    seconds = time.monotonic() - started
    print(f"\nfleet.deploy on three hosts: {seconds:.1f} s")
    return {"file": fleet_file, "house": house, "first": first}


# --- slow: the three hosts ------------------------------------------------------------------------
@pytest.mark.slow
def test_deploy_installs_xenlab_on_every_host_from_the_wheelhouse_then_says_no_changes(
    hosts, deployed
):
    first = deployed["first"]
    assert first.returncode == 0, first.stdout + first.stderr
    for host in hosts.hosts:
        assert f"=== {host.name}: deployed (exit 0" in first.stdout, first.stdout
        venv = host.mounted("/opt/xenlab") / ".venv"
        assert (venv / "bin/invoke").is_file()
        assert (host.mounted("/opt/xenlab") / "tasks.py").is_file()
        assert (host.mounted("/etc/xenlab") / "site.yaml").read_bytes() == host.site.read_bytes()
        assert (
            os.readlink(str(host.mounted("/opt/xenlab") / "invoke.yaml")) == "/etc/xenlab/site.yaml"
        )
        assert (host.mounted("/var/lib/xenlab") / "deployed").is_file()
    # nothing landed in this machine's own folders (the per-host mounts took it all)
    for target in PER_HOST[:3]:
        assert not os.listdir(target), target
    again = hosts.invoke(deployed["file"], "fleet.deploy", "--wheelhouse", str(deployed["house"]))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(": no changes (exit 0") == 3, again.stdout
    # one host's site file changes: that host is deployed again, the others have nothing to do
    first = hosts.hosts[0]
    first.site.write_text(first.site.read_text() + "# edited\n")
    third = hosts.invoke(deployed["file"], "fleet.deploy", "--wheelhouse", str(deployed["house"]))
    assert third.returncode == 0, third.stdout + third.stderr
    assert "=== h1: deployed (exit 0" in third.stdout
    assert third.stdout.count(": no changes (exit 0") == 2, third.stdout
    assert (first.mounted("/etc/xenlab") / "site.yaml").read_text().endswith("# edited\n")


@pytest.mark.slow
def test_run_host_network_makes_each_hosts_bridge_with_its_own_subnet(hosts, deployed):
    r = hosts.invoke(deployed["file"], "fleet.run", "host.network")
    assert r.returncode == 0, r.stdout + r.stderr
    for host in hosts.hosts:
        assert f"=== {host.name}: ok (exit 0" in r.stdout
        (bridge,) = ip_json(host.ns, "addr", "show", "xenbr0")
        addresses = [f"{a['local']}/{a['prefixlen']}" for a in bridge["addr_info"]
                     if a["family"] == "inet"]  # fmt: skip
        assert addresses == [f"10.214.{host.index}.1/28"], bridge
        netplan = host.mounted("/etc/netplan") / "01-netcfg.yaml"
        assert f"10.214.{host.index}.1/28" in netplan.read_text()
    assert "fleet.run host.network" in r.stdout  # the summary table
    again = hosts.invoke(deployed["file"], "fleet.run", "host.network")
    assert again.returncode == 0 and again.stdout.count("no changes") >= 3, again.stdout


@pytest.mark.slow
def test_status_shows_the_three_hosts(hosts, deployed):
    r = hosts.invoke(deployed["file"], "fleet.run", "host.network")
    assert r.returncode == 0, r.stdout + r.stderr
    r = hosts.invoke(deployed["file"], "fleet.status", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)
    assert [row["host"] for row in rows] == list(NAMES)
    for row, host in zip(rows, hosts.hosts):
        assert row["status"] == "checked"
        assert row["bridge"] == f"xenbr0 10.214.{host.index}.1/28"
        assert row["xen"] == "no"  # these hosts run no hypervisor
        assert row["guests_running"] is None and row["guests_configured"] == 0
        assert {c["step"] for c in row["check"]["checks"]} >= {"bridge", "IPv4 forwarding"}
    table = hosts.invoke(deployed["file"], "fleet.status")
    assert table.returncode == 0
    for host in hosts.hosts:
        assert host.name in table.stdout and f"10.214.{host.index}.1/28" in table.stdout


@pytest.mark.slow
def test_run_hands_the_tasks_flags_over_and_a_hosts_bad_input_is_exit_2(hosts, deployed):
    r = hosts.invoke(deployed["file"], "fleet.run", "host.network", "--hosts", "h2", "--",
                     "--subnet", "0.0.0.0/0")  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "=== h2: bad input (exit 2" in r.stdout and "=== h1" not in r.stdout
    assert "host.subnet (--subnet) = '0.0.0.0/0'" in r.stdout, r.stdout


@pytest.mark.slow
def test_provision_shows_each_hosts_progress_as_it_goes(hosts, deployed):
    r = hosts.invoke(deployed["file"], "fleet.provision", "--dry-run")
    # each host's steps as they come, after its name; these hosts have no GRUB to make Xen the
    # default boot, so each refuses at step xen (bad input: exit 2) and the fleet says so
    assert r.returncode == 2, r.stdout + r.stderr
    for host in hosts.hosts:
        assert f"{host.name} | step storage: would change" in r.stdout, r.stdout
        assert f"{host.name} | step xen: failed: host.xen = '/': has no update-grub" in r.stdout
    assert "fleet.provision" in r.stdout and "h1 (bad input)" in r.stderr


@pytest.mark.slow
def test_a_host_whose_sshd_is_stopped_is_unreachable_and_the_others_succeed(hosts, deployed):
    down = hosts.hosts[2]
    hosts.stop_sshd(down)
    try:
        r = hosts.invoke(deployed["file"], "fleet.run", "host.network")
    finally:
        hosts.start_sshd(down)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"=== {down.name}: unreachable (exit -" in r.stdout, r.stdout
    for host in hosts.hosts[:2]:
        assert f"=== {host.name}: ok (exit 0" in r.stdout
    assert f"{down.name} (unreachable)" in r.stderr


@pytest.mark.slow
def test_an_unknown_host_key_is_refused_unless_accept_new_host_keys(hosts, deployed, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "id_ed25519.pub"):
        (home / ".ssh" / name).write_bytes((hosts.home / ".ssh" / name).read_bytes())
    (home / ".ssh" / name).chmod(0o600)
    refuse = hosts.fleet_file(tmp_path / "refuse.yaml")
    before = [h.connections() for h in hosts.hosts]
    r = hosts.invoke(refuse, "fleet.status", home=home)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("host key refused") == 3, r.stdout
    assert not (home / ".ssh/known_hosts").exists()
    # refused after the key exchange, before any login: sshd saw a connection, no session
    assert all(h.connections() > n for h, n in zip(hosts.hosts, before))

    accept = hosts.fleet_file(tmp_path / "accept.yaml", accept_new_host_keys=True)
    r = hosts.invoke(accept, "fleet.status", "--json", home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["status"] for row in json.loads(r.stdout)] == ["checked"] * 3
    learnt = (home / ".ssh/known_hosts").read_text()
    for host in hosts.hosts:
        public = (host.folder / "ssh_host_ed25519_key.pub").read_text().split()[1]
        assert f"{host.address} ssh-ed25519 {public}" in learnt

    # a known host whose key changed is refused even so: only new hosts are accepted
    other = tmp_path / "other_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    first = hosts.hosts[0]
    lines = [
        f"{first.address} {other.with_suffix('.pub').read_text().split()[0]} "
        f"{other.with_suffix('.pub').read_text().split()[1]}"
        if line.startswith(first.address + " ") else line
        for line in learnt.splitlines()
    ]  # fmt: skip
    (home / ".ssh/known_hosts").write_text("\n".join(lines) + "\n")
    r = hosts.invoke(accept, "fleet.status", home=home)
    assert r.returncode == 1
    assert "h1 (host key refused)" in r.stderr, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, words",
    [
        ({"h2": {"subnet": "10.214.1.8/29"}}, "fleet.hosts.h2.site: host.subnet = '10.214.1.8/29'"),
        (
            {"h1": {"guests": {"web": {"ip": "10.214.1.5"}}},
             "h3": {"guests": {"web": {"ip": "10.214.3.5"}}}},
            "fleet.hosts.h3.site: guests.web = 'web': is also a guest of fleet.hosts.h1",
        ),
    ],
    ids=["overlapping-subnets", "duplicate-guest"],
)  # fmt: skip
def test_bad_fleet_is_exit_2_before_any_connection(hosts, tmp_path, change, words):
    fleet_hosts = {}
    for host in hosts.hosts:
        extra = change.get(host.name, {})
        site = dump(tmp_path / f"{host.name}.yaml",
                    host_site(host.index, extra.get("guests"), extra.get("subnet")))  # fmt: skip
        fleet_hosts[host.name] = {"address": host.address, "site": str(site)}
    fleet_file = dump(tmp_path / "fleet.yaml", {"fleet": {"hosts": fleet_hosts}})
    time.sleep(0.2)
    before = [h.connections() for h in hosts.hosts]
    for task in (["fleet.run", "host.check"], ["fleet.deploy"], ["fleet.status"]):
        r = hosts.invoke(fleet_file, *task)
        assert r.returncode == 2, (task, r.stdout, r.stderr)
        assert words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    time.sleep(0.5)  # sshd logs a connection as it accepts it
    assert [h.connections() for h in hosts.hosts] == before


# --- fast: the inventory's checks, through the task as a user types it ---------------------------
def fleet_case(tmp_path, fleet: dict, sites: Dict[str, dict]) -> Path:
    """A fleet file whose hosts are on loopback addresses (nothing listens: a connection that
    should not be made fails at once), and their site files."""
    for name, site in sites.items():
        dump(tmp_path / f"{name}.yaml", site)
    return dump(tmp_path / "fleet.yaml", {"fleet": fleet})


def loop_hosts(tmp_path, count=3) -> Dict[str, dict]:
    return {f"h{i}": {"address": f"127.0.0.{20 + i}", "site": str(tmp_path / f"h{i}.yaml")}
            for i in range(1, count + 1)}  # fmt: skip


BAD_FLEETS = [
    # (fleet section over loop_hosts, per-host site changes, task args, words)
    ({}, {}, ["fleet.run", "host.check", "--hosts", "h1,nope"], "--hosts = 'h1,nope': names 'nope'"),
    ({}, {}, ["fleet.run", "no.such-task"], "TASK = 'no.such-task'"),
    ({}, {}, ["fleet.run", "fleet.status"], "TASK = 'fleet.status'"),
    ({"parallel": 0}, {}, ["fleet.status"], "fleet.parallel = 0"),
    ({"connect_timeout": 0}, {}, ["fleet.status"], "fleet.connect_timeout = 0"),
    ({"hosts": {"h1": {"address": "10.0.0.300"}}}, {}, ["fleet.status"],
     "fleet.hosts.h1.address = '10.0.0.300'"),
    ({"hosts": {"h1": {"address": "a b"}}}, {}, ["fleet.status"], "fleet.hosts.h1.address = 'a b'"),
    ({"hosts": {"h1": {"user": "Root;x"}}}, {}, ["fleet.status"], "fleet.hosts.h1.user = 'Root;x'"),
    ({"hosts": {"h1": {"port": 0}}}, {}, ["fleet.status"], "fleet.hosts.h1.port = 0"),
    ({"hosts": {"h1": {"site": "../x.yaml"}}}, {}, ["fleet.status"], "fleet.hosts.h1.site = '../x.yaml'"),
    ({"hosts": {"Bad_Name": {"address": "127.0.0.9", "site": "x.yaml"}}}, {}, ["fleet.status"],
     "fleet.hosts.Bad_Name = 'Bad_Name'"),
    ({"hosts": {"h1": {"sit": "x.yaml"}}}, {}, ["fleet.status"], "fleet.hosts.h1.sit"),
    ({"hosts": {"h2": {"address": "127.0.0.21"}}}, {}, ["fleet.status"],
     "fleet.hosts.h2.address = '127.0.0.21': is fleet.hosts.h1's"),
    ({"accept_new_host_keys": "perhaps"}, {}, ["fleet.status"], "fleet.accept_new_host_keys"),
    ({}, {"h2": {"host": {"subnet": "10.214.1.0/27"}}}, ["fleet.status"],
     "fleet.hosts.h2.site: host.subnet = '10.214.1.0/27': overlaps fleet.hosts.h1's"),
    ({}, {"h3": {"host": {"subnet": "10.214.3.0/33"}}}, ["fleet.status"],
     "fleet.hosts.h3.site: host.subnet = '10.214.3.0/33'"),
    ({}, {"h1": {"guests": {"web": {"ip": "10.214.1.5"}}},
          "h2": {"guests": {"web": {"ip": "10.214.2.5"}}}}, ["fleet.deploy"],
     "fleet.hosts.h2.site: guests.web = 'web': is also a guest of fleet.hosts.h1"),
    ({}, {"h1": {"guests": {"Web": {"ip": "10.214.1.5"}}}}, ["fleet.deploy"],
     "fleet.hosts.h1.site: guests.Web"),
    ({}, {"h1": {"bogus": 1}}, ["fleet.run", "host.check", "--hosts", "h2"], None),
]  # fmt: skip


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(base[key], value) if isinstance(base.get(key), dict) else value
    return out


@pytest.mark.parametrize("fleet, changes, args, words", BAD_FLEETS)
def test_bad_inventory_is_exit_2_naming_the_field_and_value(tmp_path, fleet, changes, args, words):
    sites = {f"h{i}": _merge(host_site(i), changes.get(f"h{i}", {})) for i in (1, 2, 3)}
    fleet_file = fleet_case(tmp_path, _merge({"hosts": loop_hosts(tmp_path)}, fleet), sites)
    started = time.monotonic()
    r = invoke("-f", str(fleet_file), *args, env={"HOME": str(tmp_path)})
    if words is None:  # a section the site model does not know is ignored: h2's check runs
        assert r.returncode == 1 and "h2 (unreachable)" in r.stderr, r.stdout + r.stderr
        return
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert time.monotonic() - started < 20


def test_a_missing_site_file_is_named(tmp_path):
    fleet_file = dump(tmp_path / "fleet.yaml", {"fleet": {"hosts": loop_hosts(tmp_path, 1)}})
    r = invoke("-f", str(fleet_file), "fleet.status", env={"HOME": str(tmp_path)})
    assert r.returncode == 2
    assert f"fleet.hosts.h1.site = '{tmp_path / 'h1.yaml'}': cannot be read" in r.stderr, r.stderr


def test_an_empty_fleet_is_bad_input():
    r = invoke("fleet.status")
    assert r.returncode == 2 and "fleet.hosts = {}: is empty" in r.stderr


# --- fast: the pieces, data in and data out -------------------------------------------------------
def sites_of(**subnets) -> Dict[str, object]:
    return {name: load_site(host_site(1, subnet=net)) for name, net in subnets.items()}


def test_across_finds_overlaps_and_duplicates():
    assert inventory.across(sites_of(a="10.214.1.0/28", b="10.214.2.0/28")) == []
    (problem,) = inventory.across(sites_of(a="10.214.0.0/23", b="10.214.1.16/28"))
    assert problem.field == "fleet.hosts.b.site: host.subnet" and problem.value == "10.214.1.16/28"
    a = load_site(host_site(1, {"g1": {"ip": "10.214.1.2"}, "g2": {"ip": "10.214.1.3"}}))
    b = load_site(host_site(2, {"g1": {"ip": "10.214.2.2"}}))
    found = inventory.across({"a": a, "b": b})
    assert [(p.field, p.value) for p in found] == [("fleet.hosts.b.site: guests.g1", "g1")]
    # the same address on two hosts (possible only where their subnets overlap: both are said)
    c = load_site(host_site(1, {"g3": {"ip": "10.214.1.3"}}, subnet="10.214.1.0/28"))
    fields = [p.field for p in inventory.across({"a": a, "c": c})]
    assert fields == ["fleet.hosts.c.site: host.subnet", "fleet.hosts.c.site: guests.g3.ip"]


def test_selection_keeps_the_fleets_order_and_refuses_unknown_names(tmp_path):
    for i in (1, 2, 3):
        dump(tmp_path / f"h{i}.yaml", host_site(i))
    config = load_site(
        {"host": {"subnet": "192.0.2.0/28"}, "fleet": {"hosts": loop_hosts(tmp_path)}}
    )
    fleet = inventory.load(config.fleet, "h3,h1")
    assert [m.name for m in fleet.members] == ["h1", "h3"] and fleet.parallel == 2
    assert fleet.members[0].site.host.subnet.compressed == "10.214.1.0/28"
    with pytest.raises(BadInput) as caught:
        inventory.load(config.fleet, "h1,")
    assert caught.value.problems[0].field == "--hosts"


def member(user="root", profile="debian-12") -> inventory.Member:
    site = load_site(_merge(host_site(1), {"install": {"profile": profile}}))
    return inventory.Member("h1", "127.0.0.21", user, None, Path("h1.yaml"), b"host: {}\n", site)


def test_the_remote_line_runs_the_deployed_invoke_as_root_quoted():
    line = remote.invoke_line(member(), "guest.start", ["--name", "it's"])
    assert line == (
        "env COLUMNS=120 /opt/xenlab/.venv/bin/invoke --search-root /opt/xenlab guest.start"
        " --name 'it'\"'\"'s'"
    )
    assert remote.invoke_line(member("admin"), "host.check").startswith("sudo -n sh -c ")


def test_exit_codes_and_blocks():
    ok = remote.HostResult("a", "ok", 0, "fine\n", 1.25)
    bad = remote.HostResult("b", "bad input", 2, "bad input:\n  x = 1: no\n", 0.5)
    down = remote.HostResult("c", "unreachable", None, "refused", 0.1)
    assert remote.exit_code([ok]) == 0
    assert remote.exit_code([ok, down]) == 1
    assert remote.exit_code([ok, down, bad]) == 2
    assert remote.block(ok) == ["=== a: ok (exit 0, 1.2 s)", "  fine"]
    assert remote.block(down)[0] == "=== c: unreachable (exit -, 0.1 s)"
    assert remote.summary_rows([bad]) == [["b", "bad input", "2", "0.5"]]


def test_lines_streams_whole_lines_with_the_host():
    said = []
    stream = remote.Lines("h1", said.append)
    stream.write("step storage: no ")
    stream.write("changes\nstep xen")
    stream.write(": changed\n")
    assert said == ["h1 | step storage: no changes", "h1 | step xen: changed"]


def test_one_hosts_exception_does_not_stop_the_others():
    fleet = inventory.Fleet([member(), member()], 2, 5, False)
    calls = []

    def work(m):
        calls.append(m)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return remote.HostResult(m.name, "ok", 0, "", 0.0)

    results = remote.on_hosts(fleet, work)
    assert sorted(r.status for r in results) == ["failed", "ok"]


def test_the_install_script_is_valid_sh_and_quotes_every_value(tmp_path):
    house = deploy.Bundle(
        tmp_path, ["SHA256SUMS"], "xenlab==0.1.0", "pip-25.0.1-py3-none-any.whl", b""
    )
    script = deploy.install_script(house, member(), "/tmp/xenlab-deploy.ab'c", "f" * 64)
    assert sh("sh", "-n", "-c", script).returncode == 0
    assert "stage='/tmp/xenlab-deploy.ab'\"'\"'c'" in script
    assert "--no-index --find-links" in script and "python3 -m venv" in script
    bionic = deploy.install_script(house, member(profile="ubuntu-18.04"), "/tmp/x", "f" * 64)
    assert "python3.8 -m venv" in bionic and "python3.8-venv" in bionic


def test_the_digest_follows_the_wheelhouse_and_the_site_file(tmp_path):
    house = deploy.Bundle(tmp_path, [], "xenlab==0.1.0", "pip.whl", b"sums")
    one = deploy.digest(house, member())
    assert one == deploy.digest(house, member())
    other = member()
    assert (
        deploy.digest(house, inventory.Member(*[*vars(other).values()][:5], b"x", other.site))
        != one
    )
    assert deploy.digest(deploy.Bundle(tmp_path, [], "x", "p", b"other"), member()) != one


def test_a_folder_that_is_no_wheelhouse_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="holds no SHA256SUMS"):
        deploy.bundle(tmp_path)
    (tmp_path / "a.whl").write_bytes(b"a")
    (tmp_path / "SHA256SUMS").write_bytes(wheelhouse.sums({"a.whl": b"a"}))
    with pytest.raises(BadInput, match="lacks xenlab's wheel"):
        deploy.bundle(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("x  missing.whl\n")
    with pytest.raises(BadInput, match="names no file"):
        deploy.bundle(tmp_path)


CHECK = {
    "ok": False,
    "checks": [
        {"step": "Xen hypervisor", "ok": False, "detail": "not running under Xen"},
        {"step": "xl info", "ok": False, "detail": "xl info does not answer"},
        {"step": "bridge", "ok": True, "detail": "xenbr0 is up"},
        {"step": "bridge address", "ok": True, "detail": "xenbr0 has 10.214.1.1/28"},
        {
            "step": "volume group",
            "ok": True,
            "detail": "VolumeGroupXen: 80.0 GiB free of 100.0 GiB",
        },
    ],
}
GUESTS = [
    {"name": "Domain-0", "known": "dom0", "state": "running"},
    {"name": "g1", "known": "site", "state": "blocked"},
    {"name": "g2", "known": "site", "state": "stopped"},
]


def test_the_status_row_from_recorded_json():
    m = member()
    row = status.row(m, CHECK, GUESTS)
    assert row.cells() == ["h1", "checked", "no", "xenbr0 10.214.1.1/28", "80.0 GiB", "1/0"]
    xen = dict(CHECK, checks=[dict(c, ok=True, detail="Xen 4.17.0, 900 MiB free of 4096 MiB")
                              if c["step"] in ("Xen hypervisor", "xl info") else c
                              for c in CHECK["checks"]])  # fmt: skip
    assert status.row(m, xen, None).cells()[2:] == ["Xen 4.17.0", "xenbr0 10.214.1.1/28",
                                                    "80.0 GiB", "-/0"]  # fmt: skip
    assert status.row(m, None, None).status == "host.check did not answer"


def test_host_key_policies(tmp_path):
    import paramiko

    assert isinstance(connect.policy(False), paramiko.RejectPolicy)
    policy = connect.AcceptNew(str(tmp_path / "ssh" / "known_hosts"))
    key = paramiko.Ed25519Key.from_private_key_file(str(_keyfile(tmp_path)))
    client = paramiko.SSHClient()
    client._transport = types.SimpleNamespace(_log=lambda *_: None)  # as during a handshake
    policy.missing_host_key(client, "10.213.9.2", key)
    line = (tmp_path / "ssh" / "known_hosts").read_text()
    assert (
        line.startswith("10.213.9.2 ssh-ed25519 ")
        and oct((tmp_path / "ssh" / "known_hosts").stat().st_mode)[-3:] == "600"
    )
    assert client.get_host_keys().lookup("10.213.9.2") is not None
    status_, detail = connect.why_not(
        paramiko.SSHException("Server '10.213.9.2' not found in known_hosts")
    )
    assert status_ == "host key refused" and "accept_new_host_keys" in detail
    assert connect.why_not(ConnectionRefusedError(111, "refused"))[0] == "unreachable"
    assert connect.why_not(ValueError("mine")) is None


def _keyfile(tmp_path) -> Path:
    key = tmp_path / "key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    return key


def test_known_hosts_files_are_the_ssh_configs(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.write_text("")
    other.write_text("")
    config = {
        "userknownhostsfile": f"{mine} {tmp_path / 'missing'}",
        "globalknownhostsfile": "none",
    }
    assert connect.known_hosts_files(config) == [mine]
    assert connect.known_hosts_files({"globalknownhostsfile": [str(other)]})[-1] == other
