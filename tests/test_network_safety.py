"""host.network never cuts the host off its own network (issue 14), on real namespaces.

The first namespace is shaped like this very machine: uplink eth0 192.0.2.2/24, default gateway
192.0.2.1 on a router namespace, and the default site's subnet 192.0.2.0/28 inside that network.
"""

import ipaddress

import pytest

from netlink import links, topology
from pipeline.config import load_site
from pipeline.host import network
from tests.conftest import invoke, sh
from tests.test_host_network import files, pings, snapshot


@pytest.fixture
def like_this_machine(netns, tmp_path):
    """router (192.0.2.1/24) --veth-- eth0 (192.0.2.2/24) host, default via 192.0.2.1."""
    router, host = netns("gw"), netns("uplink")
    sh("ip", "-n", router, "link", "add", "r0", "type", "veth", "peer", "name", "eth0",
       "netns", host)  # fmt: skip
    sh("ip", "-n", router, "addr", "add", "192.0.2.1/24", "dev", "r0")
    sh("ip", "-n", router, "link", "set", "r0", "up")
    sh("ip", "-n", host, "addr", "add", "192.0.2.2/24", "dev", "eth0")
    sh("ip", "-n", host, "link", "set", "eth0", "up")
    sh("ip", "-n", host, "route", "add", "default", "via", "192.0.2.1")
    root = tmp_path / "root"
    root.mkdir()
    assert pings(host, "192.0.2.1")
    return {"host": host, "router": router, "root": root}


def veth_pair(ns: str, name: str) -> None:
    """Link `name` (and its peer NAMEp) up in `ns`: this kernel has no dummy links."""
    sh("ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", name + "p")
    for dev in (name, name + "p"):
        sh("ip", "-n", ns, "link", "set", dev, "up")


def run_default_site(ns: dict, *args, env=None):
    """host.network with invoke.yaml alone (no -f), in the namespace."""
    return invoke("host.network", "--netns", ns["host"], "--root", str(ns["root"]), *args, env=env)


CUT_OFF = [
    "host.subnet = '192.0.2.0/28': overlaps 192.0.2.0/24, connected on eth0 (address 192.0.2.2/24,"
    " route 192.0.2.0/24 dev eth0",
    "host.subnet = '192.0.2.0/28': contains the default gateway 192.0.2.1 (route default via"
    " 192.0.2.1 dev eth0)",
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_the_default_site_on_a_machine_like_this_one_is_refused(like_this_machine, dry_run):
    ns = like_this_machine
    before, before_files = snapshot(ns["host"]), files(ns["root"])
    r = run_default_site(ns, *(["--dry-run"] if dry_run else []), env={"SSH_CONNECTION": ""})
    assert r.returncode == 2, r.stdout + r.stderr
    for line in CUT_OFF:
        assert line in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(ns["host"]) == before and files(ns["root"]) == before_files
    assert sh("ip", "-n", ns["host"], "link", "show", "xenbr0", check=False).returncode != 0
    assert pings(ns["host"], "192.0.2.1"), "the host still reaches its gateway"


def test_a_subnet_clear_of_the_uplink_works_there(like_this_machine):
    """The control: the same machine with a routed subnet of its own gets its bridge."""
    ns = like_this_machine
    moved = {"INVOKE_GUESTS_GUEST-01_IP": "203.0.113.2", "SSH_CONNECTION": ""}
    r = run_default_site(ns, "--subnet", "203.0.113.0/28", env=moved)
    assert r.returncode == 0, r.stdout + r.stderr
    assert pings(ns["host"], "192.0.2.1") and pings(ns["router"], "192.0.2.2")
    again = run_default_site(ns, "--subnet", "203.0.113.0/28", env=moved)
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr


def test_the_ssh_sessions_address_is_never_taken(lab):
    """The session comes from 203.0.113.9 (through the router): a site with 203.0.113.0/28 would
    route the answers into the bridge."""
    moved = {"INVOKE_GUESTS_GUEST-01_IP": "203.0.113.2"}
    session = {**moved, "SSH_CONNECTION": "203.0.113.9 50022 198.51.100.2 22"}
    before = snapshot(lab["host"])
    r = lab["run"]("--subnet", "203.0.113.0/28", env=session)
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        "host.subnet = '203.0.113.0/28': contains 203.0.113.9, the address this SSH session"
        " comes from (SSH_CONNECTION)" in r.stderr
    )
    assert snapshot(lab["host"]) == before
    dry = lab["run"]("--subnet", "203.0.113.0/28", "--dry-run", env=session)
    assert dry.returncode == 2 and "203.0.113.9" in dry.stderr
    # From elsewhere, the same site goes through.
    other = {**moved, "SSH_CONNECTION": "198.51.100.1 50022 198.51.100.2 22"}
    assert lab["run"]("--subnet", "203.0.113.0/28", env=other).returncode == 0


def test_a_routes_next_hop_in_the_subnet_is_refused(lab):
    host = lab["host"]
    sh("ip", "-n", host, "route", "add", "10.9.0.0/16", "via", "203.0.113.5", "dev", "eth0",
       "onlink")  # fmt: skip
    moved = {"INVOKE_GUESTS_GUEST-01_IP": "203.0.113.2", "SSH_CONNECTION": ""}
    r = lab["run"]("--subnet", "203.0.113.0/28", env=moved)
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        "contains the next hop 203.0.113.5 (route 10.9.0.0/16 via 203.0.113.5 dev eth0)" in r.stderr
    )


def test_a_subnet_connected_on_a_second_link_is_refused(lab):
    host = lab["host"]
    veth_pair(host, "mgmt0")
    sh("ip", "-n", host, "addr", "add", "203.0.113.200/24", "dev", "mgmt0")
    moved = {"INVOKE_GUESTS_GUEST-01_IP": "203.0.113.2", "SSH_CONNECTION": ""}
    r = lab["run"]("--subnet", "203.0.113.0/28", env=moved)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "overlaps 203.0.113.0/24, connected on mgmt0 (address 203.0.113.200/24" in r.stderr


def test_a_re_run_on_the_bridge_itself_is_not_refused(lab):
    """The bridge's own subnet, and a session that already comes in over the bridge (from a
    guest), are the bridge's business: the second run is 'no changes', not a refusal."""
    assert lab["run"](env={"SSH_CONNECTION": ""}).returncode == 0
    r = lab["run"](env={"SSH_CONNECTION": "192.0.2.5 40000 192.0.2.1 22"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no changes" in r.stdout


# --- the library function other tasks call (host.provision) ------------------------------------
def host_config(subnet="192.0.2.0/28"):
    return load_site({"host": {"subnet": subnet}}).host


def link(name, *addresses, kind=""):
    return links.Link(
        1, name, kind, True, "UP", None, "", [ipaddress.IPv4Interface(a) for a in addresses]
    )


def route(dst, gateway=None, dev="eth0"):
    return topology.Route(
        ipaddress.IPv4Network(dst),
        ipaddress.IPv4Address(gateway) if gateway else None,
        dev,
        None,
        0,
    )


def test_safety_problems_reads_the_namespace(like_this_machine):
    found = network.safety_problems(host_config(), like_this_machine["host"], ssh_connection="")
    assert [str(p)[: len(line)] for p, line in zip(found, CUT_OFF)] == CUT_OFF
    assert (
        network.safety_problems(host_config("203.0.113.0/28"), like_this_machine["host"], "") == []
    )


def test_multipath_next_hops_are_each_checked(netns):
    ns = netns("ecmp")
    for dev, addr in (("up1", "198.51.100.2/30"), ("up2", "198.51.100.6/30")):
        veth_pair(ns, dev)
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
    sh("ip", "-n", ns, "route", "add", "default", "nexthop", "via", "198.51.100.1", "dev", "up1",
       "nexthop", "via", "203.0.113.9", "dev", "up2", "onlink")  # fmt: skip
    found = network.safety_problems(host_config("203.0.113.0/28"), ns, ssh_connection="")
    assert any("contains the default gateway 203.0.113.9" in p.reason for p in found), found


def test_cut_off_problems_on_plain_data():
    host = host_config()
    assert network.cut_off_problems(host, [link("lo", "127.0.0.1/8")], []) == []
    found = network.cut_off_problems(
        host,
        [link("eth0", "198.51.100.2/30"), link("xenbr0", "192.0.2.1/28", kind="bridge")],
        [route("0.0.0.0/0", "198.51.100.1"), route("192.0.2.0/28", dev="xenbr0"),
         route("192.0.2.64/26", "192.0.2.3", dev="xenbr0")],
        ipaddress.IPv4Address("192.0.2.5"),
    )  # fmt: skip
    assert found == [], "the bridge's own routes and a session over the bridge are fine"
    found = network.cut_off_problems(
        host, [link("eth0", "198.51.100.2/30")], [], ipaddress.IPv4Address("192.0.2.5")
    )
    assert [p.reason.split(",")[0] for p in found] == ["contains 192.0.2.5"]


@pytest.mark.parametrize(
    "text, client",
    [
        ("192.0.2.5 50000 192.0.2.1 22", "192.0.2.5"),
        ("::ffff:192.0.2.5 50000 ::ffff:192.0.2.1 22", "192.0.2.5"),
        ("2001:db8::5 50000 2001:db8::1 22", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_ssh_client_of_ssh_connection(text, client):
    found = network.ssh_client(text)
    assert (str(found) if found else None) == client


# --- --netns "" (an unset variable) is never the caller's namespace -----------------------------
@pytest.mark.parametrize(
    "task",
    [["host.network", "--dry-run"], ["host.check"], ["host.report"], ["host.diagram", "--dry-run"]],
    ids=lambda t: t[0],
)
def test_an_empty_netns_is_bad_input(tmp_path, task):
    root = [] if task[0] == "host.check" else ["--root", str(tmp_path)]
    r = invoke(*task, "--netns", "", *root, env={"SSH_CONNECTION": ""})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--netns = '': is empty" in r.stderr
    assert list(tmp_path.iterdir()) == []
