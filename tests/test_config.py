"""The site config: invoke.yaml, -f files, INVOKE_* variables and flags, validated with readable errors."""

import ipaddress

import pytest
from invoke import Config
from ruamel.yaml import YAML

from pipeline.config import load_site
from pipeline.errors import BadInput
from pipeline.guest import checks
from tests.conftest import REPO, invoke, ip_json

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcIRqNcmYzCKyRlQhYiqbUzXqiYF3Y7mAGwB54Tt3Ko test@xenlab"
# Real keys (ssh-keygen; the private halves were thrown away): the checks decode the blob.
RSA = (
    "AAAAB3NzaC1yc2EAAAADAQABAAAAgQDc0AVc/o3QeOyWd1wj5GOsEUpsqrte"
    "LOcdLlejq86+hyoGHKAT66GsBxIxaR/kvjMVyuZfF7B5awzrhHHIpXhjy5GOkt9cWZmB6+D9GnCP/kcBDK9nsU/36LUgYm/Yk72SlC/bA11lnQmPMs/HvZoKD0wIDjjxoHoE5LY8TQSmpQ=="
)
ECDSA = (
    "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJRtlGv2lpaHlGUD8K"
    "wli5DWrs0XxmYzX1KocrWINzhJFnB3p0wCMazuIxkdLY1CIj/OwxLMhd28lJz6Alk4vvA="
)


def site(**host):
    return {"host": {"subnet": "192.0.2.0/28", **host}}


def with_section(section: str, values: dict) -> dict:
    """The minimal site with `values` at the dotted `section` (e.g. 'guests.g1')."""
    data = site()
    node = data
    for part in section.split("."):
        node = node.setdefault(part, {})
    node.update(values)
    return data


def refused(data: dict, flags=None) -> BadInput:
    with pytest.raises(BadInput) as exc:
        load_site(data, flags)
    return exc.value


def assert_names(err: BadInput, field: str, value, words: str) -> None:
    """The first problem is `field` = `value` for a reason with `words`, and the message says so."""
    problem = err.problems[0]
    assert (problem.field, problem.value) == (field, value)
    assert words in problem.reason
    assert f"{field} = {value!r}" in str(err)


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
    assert_names(refused(site(**host)), field, value, words)


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
    # invoke.yaml's guest-01 moves with the subnet (Site checks every guest's address)
    site_file.write_text(
        "host:\n  subnet: 198.51.100.16/28\nguests:\n  guest-01:\n    ip: 198.51.100.18\n"
    )
    r = invoke("-f", str(site_file), "host.network", "--dry-run", "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "198.51.100.17/28" in r.stdout
    r = invoke(
        "host.network",
        "--dry-run",
        "--root",
        str(tmp_path),
        env={
            "INVOKE_HOST_SUBNET": "203.0.113.0/29",
            "INVOKE_HOST_BRIDGE": "xenbr7",
            "INVOKE_GUESTS_GUEST-01_IP": "203.0.113.2",
        },
    )
    assert r.returncode == 0, r.stderr
    assert "add address 203.0.113.1/29 to xenbr7" in r.stdout


def test_shipped_site_uses_documentation_addresses():
    c = Config(project_location=str(REPO))
    c.load_project()
    net = load_site(c).host.subnet
    docs = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    assert any(net.subnet_of(d) for d in docs)


# --- one validator per kind of value, in every section that has such a field -------------------
USER = [
    ("install", "user", "Admin"),
    ("install", "user", "root"),
    ("guests.g1", "user", "ad min"),
    ("guests.g1", "user", "root"),
]


@pytest.mark.parametrize("section, field, value", USER)
def test_a_bad_user_name_is_refused(section, field, value):
    err = refused(with_section(section, {field: value}))
    assert_names(err, f"{section}.{field}", value, "is not a user name other than root")


MIRRORS = [
    ("install", "mirror"),
    ("install", "installer_url"),
    ("images", "mirror"),
    ("images", "security_mirror"),
    ("images", "ubuntu_mirror"),
]
BAD_URLS = [
    "ftp://mirror.example/debian",
    "http://mirror example/debian",
    "http://user:secret@mirror.example/debian",
    "http://mirror.example/debian?suite=x",
    "http://mirror.example:99999/debian",
    "http://mirror.example/deb'ian",
]


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("section, field", MIRRORS)
def test_a_bad_mirror_url_is_refused(section, field, url):
    err = refused(with_section(section, {field: url}))
    assert_names(err, f"{section}.{field}", url, "is not an http:// or https:// URL")


def test_the_mirror_message_gives_ubuntus_archive_as_the_example():
    from pipeline.apt_sources import UBUNTU_ARCHIVE

    err = refused(with_section("images", {"mirror": "ftp://x"}))
    assert f"such as {UBUNTU_ARCHIVE}" in err.problems[0].reason


@pytest.mark.parametrize("section, field", MIRRORS)
def test_a_good_mirror_url_is_kept_without_its_trailing_slash(section, field):
    s = load_site(with_section(section, {field: "https://mirror.example.net:3142/ubuntu/"}))
    assert getattr(getattr(s, section), field) == "https://mirror.example.net:3142/ubuntu"


BAD_KEYS = [
    "ssh-ed25519",  # no key
    "ssh-ed25519 %%%% me@laptop",  # not base64
    "ssh-foo AAAAC3NzaC1lZDI1NTE5 me@laptop",  # not a key type
    "AAAAC3NzaC1lZDI1NTE5AAAAIHcIRqNcmYzCKyRlQhYiqbUzXqiYF3Y7mAGwB54Tt3Ko",  # no type
    KEY + "\n" + KEY,  # two lines
    KEY.replace("test@xenlab", 'test"@xenlab'),  # a quote
]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize("section", ["install", "guests.g1"])
def test_a_bad_ssh_key_is_refused(section, key):
    err = refused(with_section(section, {"ssh_authorized_keys": [KEY, key]}))
    assert_names(err, f"{section}.ssh_authorized_keys.1", key, "is not one OpenSSH public key")


@pytest.mark.parametrize("section", ["install", "guests.g1"])
def test_good_ssh_keys_are_accepted(section):
    keys = [
        KEY,
        "ssh-rsa " + RSA + " admin@lab",
        "ecdsa-sha2-nistp256 " + ECDSA,
    ]
    s = load_site(with_section(section, {"ssh_authorized_keys": keys}))
    node = s.install if section == "install" else s.guests["g1"]
    assert node.ssh_authorized_keys == keys


@pytest.mark.parametrize("name", ["Xen-Host", "xen_host", "-xen", "xen.lab", "a" * 64])
def test_a_bad_install_hostname_is_refused(name):
    err = refused(with_section("install", {"hostname": name}))
    assert_names(err, "install.hostname", name, "is not a host name")


@pytest.mark.parametrize("name", ["Guest-01", "bad_name", "guest-", "a" * 64])
def test_a_guest_name_that_is_no_host_name_is_refused(name):
    err = refused(with_section(f"guests.{name}", {"ip": "192.0.2.2"}))
    assert_names(err, f"guests.{name}", name, "is not a host name")


def test_guest_build_checks_its_name_with_the_same_rule(tmp_path):
    name = "a" * 64  # 63 is the limit of an RFC 1123 label
    with pytest.raises(BadInput) as exc:
        checks.check(load_site(site()), name, tmp_path, tmp_path, checks.HostFacts(1 << 30, 1, ""))
    config_says = refused(with_section(f"guests.{name}", {})).problems[0].reason
    assert exc.value.problems[0] == ("--name", name, config_says)


PATHS = [
    ("host", "netplan_file"),
    ("host", "sysctl_file"),
    ("host.storage", "dir"),
    ("install", "cache_dir"),
    ("pxe", "tftp_root"),
    ("pxe", "state_dir"),
    ("images", "cache_dir"),
]


@pytest.mark.parametrize(
    "path", ["relative/x.conf", "/srv/../x.conf", "/srv/x y.conf", "/srv/$x.conf"]
)
@pytest.mark.parametrize("section, field", PATHS)
def test_a_bad_path_is_refused(section, field, path):
    err = refused(with_section(section, {field: path}))
    assert_names(err, f"{section}.{field}", path, "must be an absolute path")


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/", "is / itself"),
        ("/etc", "is /etc, a system folder"),
        ("/usr/", "is /usr, a system folder"),
        ("//var/.", "is /var, a system folder"),
        ("/srv", "is /srv, a system folder"),
        ("relative/path", "must be an absolute path"),
        ("/var/../etc", "must be an absolute path"),
    ],
)
def test_storage_dir_is_not_a_system_folder(path, reason):
    err = refused(with_section("host.storage", {"dir": path}))
    assert_names(err, "host.storage.dir", path, reason)


@pytest.mark.parametrize(
    "path, kept",
    [("/var/lib/xenlab/volumes", "/var/lib/xenlab/volumes"), ("/srv/xen/", "/srv/xen")],
)
def test_storage_dir_below_a_system_folder_is_accepted(path, kept):
    assert load_site(with_section("host.storage", {"dir": path})).host.storage.dir == kept


# --- Site: every guest's address fits the host, for every task ---------------------------------
@pytest.mark.parametrize(
    "ip, host, reason",
    [
        ("198.51.100.7", {}, "is outside 192.0.2.0/28"),
        ("192.0.2.0", {}, "is the network address of 192.0.2.0/28"),
        ("192.0.2.15", {}, "is the broadcast address of 192.0.2.0/28"),
        ("192.0.2.1", {}, "is the bridge's address"),
        ("192.0.2.9", {"address": "192.0.2.9"}, "is the bridge's address"),
    ],
)
def test_a_guest_ip_that_does_not_fit_the_host_is_refused(ip, host, reason):
    data = site(**host)
    data["guests"] = {"g1": {"ip": ip}}
    assert_names(refused(data), "guests.g1.ip", ip, reason)


def test_two_guests_with_one_ip_are_refused():
    data = site()
    data["guests"] = {
        "g1": {"ip": "192.0.2.5"},
        "g2": {"ip": "192.0.2.6"},
        "g3": {"ip": "192.0.2.5"},
    }
    err = refused(data)
    assert err.problems == [("guests.g3.ip", "192.0.2.5", "is guests.g1's already")]


def test_every_guest_problem_is_reported_at_once():
    data = site()
    data["guests"] = {"g1": {"ip": "192.0.2.0"}, "g2": {"ip": "198.51.100.1"}}
    assert [p.field for p in refused(data).problems] == ["guests.g1.ip", "guests.g2.ip"]


def test_a_guest_ip_from_a_flag_names_the_flag():
    data = site()
    data["guests"] = {"g1": {"ip": "192.0.2.5"}}
    err = refused(data, {"guests.g1.ip": ("--ip", "192.0.2.15")})
    assert_names(err, "guests.g1.ip (--ip)", "192.0.2.15", "broadcast address")


def test_a_guest_without_an_ip_is_left_to_guest_build():
    data = site()
    data["guests"] = {"g1": {"memory": "512M"}}
    assert load_site(data).guests["g1"].ip is None


@pytest.mark.parametrize(
    "site_data, message",
    [
        (
            {"guests": {"guest-01": {"ip": "198.51.100.7"}}},
            "guests.guest-01.ip = '198.51.100.7': is outside 192.0.2.0/28",
        ),
        ({"host": {"storage": {"dir": "/etc/"}}}, "host.storage.dir = '/etc/': is /etc"),
        (
            {"guests": {"guest-01": {"ssh_authorized_keys": ["ssh-ed25519 %%%%"]}}},
            "guests.guest-01.ssh_authorized_keys.0 = 'ssh-ed25519 %%%%'",
        ),
    ],
)
def test_a_bad_site_file_stops_any_task_with_exit_2(tmp_path, netns, site_data, message):
    """host.network, which never reads guests or storage, still refuses the site and changes nothing."""
    ns = netns("cfg")
    root = tmp_path / "root"
    root.mkdir()
    site_file = tmp_path / "site.yaml"
    YAML().dump({"host": {"subnet": "192.0.2.0/28"}, **site_data}, site_file)
    before = ip_json(ns, "link", "show")
    r = invoke("-f", str(site_file), "host.network", "--netns", ns, "--root", str(root))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert ip_json(ns, "link", "show") == before
    assert list(root.iterdir()) == []


def test_the_same_site_file_made_good_runs(tmp_path, netns):
    """The control for the test above: with the guest moved inside the subnet, host.network works."""
    ns = netns("cfg")
    root = tmp_path / "root"
    root.mkdir()
    site_file = tmp_path / "site.yaml"
    YAML().dump(
        {"host": {"subnet": "192.0.2.0/28"}, "guests": {"guest-01": {"ip": "192.0.2.7"}}}, site_file
    )
    r = invoke("-f", str(site_file), "host.network", "--netns", ns, "--root", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [link["ifname"] for link in ip_json(ns, "link", "show", "xenbr0")] == ["xenbr0"]
    assert (root / "etc/netplan/01-netcfg.yaml").is_file()


@pytest.mark.parametrize(
    "section, field, good",
    [
        ("install", "user", "admin"),
        ("guests.g1", "user", "admin"),
        ("install", "hostname", "xenhost"),
        ("install", "mirror", "http://mirror.example/ubuntu"),
        ("images", "mirror", "http://mirror.example/debian"),
        ("host", "bridge", "xenbr0"),
        ("guests.g1", "bridge", "xenbr0"),
        ("pxe", "interface", "eth0"),
        ("host.storage", "dir", "/srv/xen"),
        ("pxe", "tftp_root", "/srv/xenlab/tftp"),
        ("host.storage", "device", "/dev/sdb"),
        ("host.storage", "volume_group", "VolumeGroupXen"),
        ("host.xen", "package", "xen-hypervisor-4.9-amd64"),
    ],
)
def test_a_value_with_a_trailing_newline_is_refused(section, field, good):
    load_site(with_section(section, {field: good}))
    err = refused(with_section(section, {field: good + "\n"}))
    assert err.problems[0][:2] == (f"{section}.{field}", good + "\n")


def test_every_profile_name_has_an_installer_and_an_image_profile():
    from typing import get_args

    from pipeline.config import ProfileName
    from pipeline.guest import profiles as image_profiles
    from pxe import profiles as installer_profiles

    names = set(get_args(ProfileName))
    assert names == set(image_profiles.PROFILES) == set(installer_profiles.PROFILES)
