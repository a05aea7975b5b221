"""The site config: invoke.yaml, -f files, INVOKE_* variables and flags, validated with readable errors."""

import ipaddress

import pytest
from invoke import Config

from pipeline.config import load_site
from pipeline.errors import BadInput
from tests.conftest import REPO, invoke


def site(**host):
    return {"host": {"subnet": "192.0.2.0/28", **host}}


def test_defaults_are_the_lab():
    s = load_site(site())
    assert s.host.bridge == "xenbr0"
    assert str(s.host.bridge_interface) == "192.0.2.1/28"
    assert s.host.netplan_file == "/etc/netplan/01-netcfg.yaml"


def test_flags_override_config():
    s = load_site(
        site(bridge="xenbr0"),
        {"host.bridge": ("--bridge", "xenbr9"), "host.address": ("--address", "192.0.2.9")},
    )
    assert s.host.bridge == "xenbr9"
    assert s.host.address == ipaddress.IPv4Address("192.0.2.9")


def test_unset_flags_leave_config_alone():
    s = load_site(site(bridge="brx"), {"host.bridge": ("--bridge", None)})
    assert s.host.bridge == "brx"


@pytest.mark.parametrize(
    "host, field, value, words",
    [
        ({"address": "192.0.2.0"}, "host.address", "192.0.2.0", "network address"),
        ({"address": "192.0.2.15"}, "host.address", "192.0.2.15", "broadcast address"),
        ({"address": "198.51.100.1"}, "host.address", "198.51.100.1", "outside 192.0.2.0/28"),
        ({"address": "192.0.2.300"}, "host.address", "192.0.2.300", "not an IPv4 address"),
        ({"bridge": "a" * 16}, "host.bridge", "a" * 16, "at most 15"),
        ({"bridge": "br 0"}, "host.bridge", "br 0", "not an interface name"),
        ({"subnet": "192.0.2.1/28"}, "host.subnet", "192.0.2.1/28", "host bits set"),
        (
            {"netplan_file": "etc/netplan/x.yaml"},
            "host.netplan_file",
            "etc/netplan/x.yaml",
            "absolute",
        ),
        ({"sysctl_file": "/etc/sysctl.d/x"}, "host.sysctl_file", "/etc/sysctl.d/x", "end in .conf"),
        ({"brigde": "xenbr0"}, "host.brigde", "xenbr0", "not a known setting"),
    ],
)
def test_errors_name_field_and_value(host, field, value, words):
    with pytest.raises(BadInput) as exc:
        load_site(site(**host))
    problem = exc.value.problems[0]
    assert (problem.field, problem.value) == (field, value)
    assert words in problem.reason
    assert field in str(exc.value) and repr(value) in str(exc.value)


def test_missing_subnet_is_reported():
    with pytest.raises(BadInput, match=r"host.subnet = None: is required"):
        load_site({"host": {}})


def test_error_from_a_flag_names_the_flag():
    with pytest.raises(BadInput, match=r"host.subnet \(--subnet\) = '192.0.2.3/28'"):
        load_site(site(), {"host.subnet": ("--subnet", "192.0.2.3/28")})


def test_invoke_config_proxy_is_read():
    c = Config(overrides={"host": {"subnet": "198.51.100.0/29", "bridge": "xenbr1"}})
    s = load_site(c)
    assert str(s.host.bridge_interface) == "198.51.100.1/29"


def test_site_file_and_environment_reach_the_task(tmp_path):
    """-f FILE and INVOKE_HOST_* go through Invoke's own config system to the model."""
    site_file = tmp_path / "site.yaml"
    site_file.write_text("host:\n  subnet: 198.51.100.16/28\n")
    r = invoke("-f", str(site_file), "host.network", "--dry-run", "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "198.51.100.17/28" in r.stdout
    r = invoke(
        "host.network",
        "--dry-run",
        "--root",
        str(tmp_path),
        env={"INVOKE_HOST_SUBNET": "203.0.113.0/29", "INVOKE_HOST_BRIDGE": "xenbr7"},
    )
    assert r.returncode == 0, r.stderr
    assert "add address 203.0.113.1/29 to xenbr7" in r.stdout


def test_shipped_site_uses_documentation_addresses():
    c = Config(project_location=str(REPO))
    c.load_project()
    net = load_site(c).host.subnet
    docs = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    assert any(net.subnet_of(d) for d in docs)
