"""Merging the bridge into a netplan file keeps what is there; netplan itself accepts the result."""

import ipaddress
import shutil
import subprocess

import pytest
from ruamel.yaml import YAML

from netlink.netplan import merge_bridge

IFACE = ipaddress.IPv4Interface("192.0.2.1/28")

# The shape of Ubuntu 18.04's installer-written file, with the uplink and comments.
UBUNTU = """\
# This file describes the network interfaces available on your system
# For more information, see netplan(5).
network:
    version: 2
    renderer: networkd
    ethernets:
        eno1:   # the uplink to the router
            dhcp4: no
            addresses: [ 198.51.100.10/24 ]
            gateway4: 198.51.100.1
            nameservers:
                search: [ example.net ]
                addresses:
                    - 198.51.100.53
"""


def load(text):
    return YAML(typ="safe").load(text)


def test_merge_keeps_uplink_comments_and_order():
    out = merge_bridge(UBUNTU, "xenbr0", IFACE)
    assert out.startswith(UBUNTU.splitlines()[0] + "\n" + UBUNTU.splitlines()[1] + "\n")
    assert "# the uplink to the router" in out
    before, after = load(UBUNTU)["network"], load(out)["network"]
    assert after["ethernets"] == before["ethernets"]
    assert list(after) == ["version", "renderer", "ethernets", "bridges"]
    assert after["bridges"]["xenbr0"] == {
        "interfaces": [],
        "addresses": ["192.0.2.1/28"],
        "parameters": {"stp": False, "forward-delay": 0},
        "optional": True,
    }
    # The file's own four-space indentation is kept for the lines it did not touch.
    assert "\n            gateway4: 198.51.100.1\n" in out
    assert "\n    bridges:\n        xenbr0:\n" in out


def test_merge_is_stable():
    once = merge_bridge(UBUNTU, "xenbr0", IFACE)
    assert merge_bridge(once, "xenbr0", IFACE) == once


def test_merge_into_nothing_makes_a_minimal_file():
    for nothing in (None, "", "\n"):
        out = load(merge_bridge(nothing, "xenbr0", IFACE))
        assert list(out["network"]) == ["version", "bridges"]
        assert out["network"]["version"] == 2
        assert out["network"]["bridges"]["xenbr0"]["addresses"] == ["192.0.2.1/28"]


def test_new_subnet_replaces_the_old_address_and_keeps_other_keys():
    text = merge_bridge(UBUNTU, "xenbr0", IFACE).replace(
        "            optional: true\n", "            optional: true\n            mtu: 9000\n"
    )
    out = load(merge_bridge(text, "xenbr0", ipaddress.IPv4Interface("203.0.113.9/29")))
    entry = out["network"]["bridges"]["xenbr0"]
    assert entry["addresses"] == ["203.0.113.9/29"]
    assert entry["mtu"] == 9000


def test_other_bridges_are_left_alone():
    text = "network:\n  version: 2\n  bridges:\n    br-lan:\n      interfaces: [eno2]\n      dhcp4: true\n"
    out = load(merge_bridge(text, "xenbr0", IFACE))
    assert out["network"]["bridges"]["br-lan"] == {"interfaces": ["eno2"], "dhcp4": True}


@pytest.mark.parametrize(
    "text, words",
    [
        ("network: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "top level is not a mapping"),
        ("network: 3\n", "'network' key that is not a mapping"),
        ("network:\n  bridges: [a]\n", "'network.bridges' key"),
    ],
)
def test_unusable_files_are_refused(text, words):
    with pytest.raises(ValueError, match=words):
        merge_bridge(text, "xenbr0", IFACE)


@pytest.mark.skipif(shutil.which("netplan") is None, reason="netplan.io is not installed")
@pytest.mark.parametrize("existing", [None, UBUNTU])
def test_netplan_generate_accepts_the_result(tmp_path, existing):
    conf = tmp_path / "etc/netplan/01-netcfg.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text(merge_bridge(existing, "xenbr0", IFACE))
    conf.chmod(0o600)
    proc = subprocess.run(
        ["netplan", "generate", "--root-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    netdev = (tmp_path / "run/systemd/network/10-netplan-xenbr0.netdev").read_text()
    network = (tmp_path / "run/systemd/network/10-netplan-xenbr0.network").read_text()
    assert "Kind=bridge" in netdev and "STP=false" in netdev
    assert "Address=192.0.2.1/28" in network
    assert "ConfigureWithoutCarrier=yes" in network
    if existing:
        uplink = (tmp_path / "run/systemd/network/10-netplan-eno1.network").read_text()
        assert "Address=198.51.100.10/24" in uplink and "Gateway=198.51.100.1" in uplink
