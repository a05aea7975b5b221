"""`invoke host.network` on real namespaces: a router, the host, and a guest on a vif-like veth.

router (198.51.100.1/30) --veth-- eth0 (198.51.100.2/30) host xenbr0 (192.0.2.1/28)
                                                          \\-- vif1.0 --veth-- eth0 guest (192.0.2.2/28)
"""

import shutil
import subprocess

import pytest

from tests.conftest import attach_guest, invoke, ip_json, sh


def forwarding(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()


def pings(ns: str, address: str) -> bool:
    return sh("ip", "netns", "exec", ns, "ping", "-c1", "-W2", address, check=False).returncode == 0


def snapshot(ns: str) -> dict:
    """What host.network may touch in a namespace, as ip -j reports it (not carrier or counters,
    which move on their own while veths come up)."""
    links = {}
    for link in ip_json(ns, "-d", "link", "show"):
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        links[link["ifname"]] = {
            "kind": info.get("info_kind"),
            "admin_up": "UP" in link["flags"],
            "master": link.get("master"),
            "mac": link.get("address"),
            "mtu": link.get("mtu"),
            "bridge": {k: data.get(k) for k in ("stp_state", "forward_delay")}
            if info.get("info_kind") == "bridge"
            else None,
        }
    addrs = {
        a["ifname"]: sorted(
            (i["local"], i["prefixlen"], i.get("broadcast")) for i in a["addr_info"]
        )
        for a in ip_json(ns, "-4", "addr", "show")
    }
    return {"links": links, "addrs": addrs, "forwarding": forwarding(ns)}


def files(root) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_bridge_address_forwarding_and_routed_guest(lab):
    host, router = lab["host"], lab["router"]
    assert forwarding(host) == "0"
    r = lab["run"]()
    assert r.returncode == 0, r.stderr

    (br,) = ip_json(host, "-d", "addr", "show", "xenbr0")
    assert br["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in br["flags"]
    v4 = [(a["local"], a["prefixlen"]) for a in br["addr_info"] if a["family"] == "inet"]
    assert v4 == [("192.0.2.1", 28)]
    assert br["linkinfo"]["info_data"]["stp_state"] == 0
    assert ip_json(host, "link", "show", "master", "xenbr0") == []
    assert forwarding(host) == "1"
    assert "xenbr0" in r.stdout and "192.0.2.1/28" in r.stdout

    guest = attach_guest(lab)
    assert pings(router, "192.0.2.1")
    assert pings(router, "192.0.2.2"), "the router reaches the guest through the host's forwarding"
    assert pings(guest, "198.51.100.1"), "the guest reaches the router through its gateway"

    # The persisted state: netplan accepts it, sysctl.d turns forwarding on at boot.
    plan = lab["root"] / "etc/netplan/01-netcfg.yaml"
    assert plan.stat().st_mode & 0o777 == 0o600
    if shutil.which("netplan"):
        gen = subprocess.run(
            ["netplan", "generate", "--root-dir", str(lab["root"])], capture_output=True, text=True
        )
        assert gen.returncode == 0, gen.stderr
        assert (
            "Address=192.0.2.1/28"
            in (lab["root"] / "run/systemd/network/10-netplan-xenbr0.network").read_text()
        )
    sysctl = (lab["root"] / "etc/sysctl.d/60-xenlab-forwarding.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in sysctl

    # Idempotent: the second run says so and nothing moves. The guest's vif stays a member.
    before, before_files = snapshot(host), files(lab["root"])
    again = lab["run"]()
    assert again.returncode == 0, again.stderr
    assert "no changes" in again.stdout
    assert snapshot(host) == before
    assert files(lab["root"]) == before_files
    assert "vif1.0" in again.stdout

    # Forwarding turned off behind its back: the guest is cut off, and a re-run repairs exactly that.
    sh("ip", "netns", "exec", host, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
    assert not pings(router, "192.0.2.2")
    repair = lab["run"]()
    assert repair.returncode == 0, repair.stderr
    assert "enable IPv4 forwarding" in repair.stdout and "create bridge" not in repair.stdout
    assert pings(router, "192.0.2.2")


def test_dry_run_changes_nothing(lab):
    host = lab["host"]
    before = snapshot(host)
    r = lab["run"]("--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would create bridge xenbr0" in r.stdout
    assert "would add address 192.0.2.1/28 to xenbr0" in r.stdout
    assert "+      addresses: [192.0.2.1/28]" in r.stdout
    assert snapshot(host) == before
    assert files(lab["root"]) == {}


def test_changed_subnet_moves_the_address(lab):
    host = lab["host"]
    assert lab["run"]().returncode == 0
    # The site's guest moves with its subnet: a guest outside host.subnet is refused by every task.
    moved = {"INVOKE_GUESTS_GUEST-01_IP": "203.0.113.2"}
    r = lab["run"]("--subnet", "203.0.113.0/29", "--address", "203.0.113.6", env=moved)
    assert r.returncode == 0, r.stderr
    (br,) = ip_json(host, "-4", "addr", "show", "xenbr0")
    assert [(a["local"], a["prefixlen"]) for a in br["addr_info"]] == [("203.0.113.6", 29)]
    assert "203.0.113.6/29" in (lab["root"] / "etc/netplan/01-netcfg.yaml").read_text()
    assert "192.0.2.1/28" not in (lab["root"] / "etc/netplan/01-netcfg.yaml").read_text()


@pytest.mark.parametrize(
    "args, field, value",
    [
        (["--address", "198.51.100.77"], "host.address", "198.51.100.77"),
        (["--address", "192.0.2.0"], "host.address", "192.0.2.0"),
        (["--address", "192.0.2.15"], "host.address", "192.0.2.15"),
        (["--bridge", "xenbr0-far-too-long"], "host.bridge", "xenbr0-far-too-long"),
        (["--subnet", "192.0.2.8/28"], "host.subnet", "192.0.2.8/28"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(lab, args, field, value):
    before, before_files = snapshot(lab["host"]), files(lab["root"])
    r = lab["run"](*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert field in r.stderr and repr(value) in r.stderr
    assert snapshot(lab["host"]) == before
    assert files(lab["root"]) == before_files


def test_missing_namespace_exits_2(lab, tmp_path):
    r = invoke(
        "-f",
        str(lab["site"]),
        "host.network",
        "--netns",
        "xl-no-such-ns",
        "--root",
        str(lab["root"]),
    )
    assert r.returncode == 2
    assert "--netns = 'xl-no-such-ns'" in r.stderr and "no such network namespace" in r.stderr
    assert not (tmp_path / "run/netns/xl-no-such-ns").exists()
    assert "xl-no-such-ns" not in sh("ip", "netns", "list").stdout
    assert files(lab["root"]) == {}


def test_name_taken_by_another_kind_of_link_exits_2(lab):
    sh("ip", "-n", lab["host"], "link", "add", "xenbr0", "type", "veth", "peer", "name", "other")
    before = snapshot(lab["host"])
    r = lab["run"]()
    assert r.returncode == 2
    assert "host.bridge = 'xenbr0': exists and is a veth link, not a bridge" in r.stderr
    assert snapshot(lab["host"]) == before


def test_address_already_on_another_link_exits_2(lab):
    moved = {"INVOKE_GUESTS_GUEST-01_IP": "198.51.100.1"}
    r = lab["run"]("--subnet", "198.51.100.0/30", "--address", "198.51.100.2", env=moved)
    assert r.returncode == 2
    assert "is already on eth0" in r.stderr
    assert sh("ip", "-n", lab["host"], "link", "show", "xenbr0", check=False).returncode != 0


def test_failure_half_way_rolls_back(lab):
    """The sysctl.d file cannot be written: the bridge, address and forwarding made before go again."""
    (lab["root"] / "etc").mkdir()
    (lab["root"] / "etc/sysctl.d").write_text("a file where a folder should be\n")
    before = snapshot(lab["host"])
    r = lab["run"]()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot write" in r.stderr and "sysctl.d" in r.stderr
    assert "rolled back: create bridge xenbr0" in r.stdout
    assert snapshot(lab["host"]) == before
    assert sorted(files(lab["root"])) == ["etc/sysctl.d"]
    assert not (lab["root"] / "etc/netplan").exists()


def test_report_shows_members(lab):
    """The closing table shows members: a guest attached after the first run appears in the second."""
    assert lab["run"]().returncode == 0
    attach_guest(lab)
    out = lab["run"]().stdout
    row = [line for line in out.splitlines() if "xenbr0" in line][-1]
    assert "vif1.0" in row and "192.0.2.1/28" in row and row.rstrip(" │").endswith("on")
