"""The bad-input sweep of issue 14: every input here is refused with exit 2, a message naming it,
no traceback, and nothing changed (a namespace, --root and storage under tmp).

Rerun: .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_bad_input_sweep.py
(`-rA` lists each case). The table in the report is `count_by_task()` of CASES.
"""

from collections import Counter

import pytest
from ruamel.yaml import YAML

from tests.conftest import invoke, ip_json
from tests.test_config import KEY

NL = "guest-01\n"
# (task, arguments, environment, site file text appended, words the message must have)
CASES = [
    # --- host.network ---
    ("host.network", ["--subnet", "0.0.0.0/0"], {}, "", "every IPv4 address"),
    ("host.network", ["--subnet", "224.0.0.0/4"], {}, "", "multicast"),
    ("host.network", ["--subnet", "240.0.0.0/4"], {}, "", "class E"),
    ("host.network", ["--subnet", "0.0.0.0/8"], {}, "", "'this network'"),
    ("host.network", ["--subnet", "127.0.0.0/8"], {}, "", "loopback"),
    ("host.network", ["--subnet", "169.254.0.0/16"], {}, "", "link-local"),
    ("host.network", ["--subnet", "10.0.0.0/8"], {}, "", "wider than a subnet"),
    ("host.network", ["--subnet", "192.0.2.0/31"], {}, "", "no room"),
    ("host.network", ["--subnet", "192.0.2.1/28"], {}, "", "host bits set"),
    ("host.network", ["--subnet", "192.0.2.0"], {}, "", "needs a prefix length"),
    ("host.network", ["--subnet", "2001:db8::/64"], {}, "", "only IPv4"),
    ("host.network", ["--subnet", "192.0.2.0/28\n"], {}, "", "control characters"),
    ("host.network", ["--address", "192.0.2.0"], {}, "", "network address"),
    ("host.network", ["--address", "192.0.2.15"], {}, "", "broadcast address"),
    ("host.network", ["--address", "198.51.100.1"], {}, "", "outside"),
    ("host.network", ["--address", "192.0.2.1 "], {}, "", "control characters"),
    ("host.network", ["--bridge", "all"], {}, "", "the kernel reserves"),
    ("host.network", ["--bridge", "default"], {}, "", "the kernel reserves"),
    ("host.network", ["--bridge", "."], {}, "", "not an interface name"),
    ("host.network", ["--bridge", ".."], {}, "", "not an interface name"),
    ("host.network", ["--bridge", "br/0"], {}, "", "not an interface name"),
    ("host.network", ["--bridge", "br 0"], {}, "", "not an interface name"),
    ("host.network", ["--bridge", "br:0"], {}, "", "not an interface name"),
    ("host.network", ["--bridge", "xenbr9\n"], {}, "", "not an interface name"),
    ("host.network", ["--bridge", "br;x"], {}, "", "not an interface name"),
    ("host.network", ["--bridge", "a" * 16], {}, "", "at most 15"),
    ("host.network", ["--bridge", ""], {}, "", "not an interface name"),
    ("host.network", ["--netns", ""], {}, "", "--netns = '': is empty"),
    ("host.network", ["--netns", "xl-no-such-ns"], {}, "", "no such network namespace"),
    ("host.network", ["--netns", "../x"], {}, "", "no such network namespace"),
    ("host.network", ["--root", "/nonexistent/root"], {}, "", "is not a directory"),
    ("host.network", [], {"INVOKE_HOST_NETPLAN_FILE": "etc/x.yaml"}, "", "absolute path"),
    ("host.network", [], {"INVOKE_HOST_SYSCTL_FILE": "/etc/sysctl.d/x"}, "", "end in .conf"),
    ("host.network", [], {"INVOKE_HOST_NETPLAN_FILE": "/etc/a b.yaml"}, "", "absolute path"),
    ("host.network", [], {"INVOKE_HOST_BRIDGE": "xenbr0\r"}, "", "not an interface name"),
    ("host.network", [], {"SSH_CONNECTION": "192.0.2.9 5 192.0.2.1 22"}, "", "SSH session"),
    ("host.network", [], {}, "host:\n  brigde: xenbr0\n", "not a known setting"),
    ("host.network", [], {}, "guests:\n  guest-01:\n    ip: 198.51.100.7\n", "outside"),
    ("host.network", [], {}, "host:\n  storage:\n    dir: /etc\n", "system folder"),
    ("host.network", [], {}, "host:\n  storage:\n    dir: tmp/x\n", "absolute path"),
    ("host.network", [], {}, 'host:\n  storage:\n    dir: "/srv/x\'y"\n', "absolute path"),
    # --- the config files and variables Invoke loads (any task; host.network here) ---
    ("-f missing", ["-f", "typo.yaml"], {}, None, "-f = 'typo.yaml': does not exist"),
    ("-f missing", [], {"INVOKE_RUNTIME_CONFIG": "/nonexistent.yaml"}, None, "does not exist"),
    ("-f YAML", [], {}, "host:\n  subnet: [oops\n", "is not valid YAML (line"),
    ("-f YAML", [], {}, "host: {subnet: 192.0.2.0/28\n", "is not valid YAML"),
    ("-f YAML", [], {}, "\thost: x\n", "is not valid YAML"),
    ("-f section", [], {}, "host: xenbr0\n", "host = 'xenbr0': must be a mapping"),
    ("-f section", [], {}, "guests: [guest-01]\n", "guests = ['guest-01']: must be a mapping"),
    ("-f section", [], {}, "host:\n  storage: lvm\n", "host.storage = 'lvm': must be a mapping"),
    ("-f section", [], {}, "install: null\nhost: 5\n", "must be a mapping"),
    ("-f top", [], {}, "- host\n- guests\n", "holds a list, not a mapping of sections"),
    ("-f top", [], {}, "just text\n", "holds a str, not a mapping"),
    ("INVOKE_*", [], {"INVOKE_PXE_HTTP_PORT": "eighty"}, None, "INVOKE_PXE_HTTP_PORT = 'eighty'"),
    ("INVOKE_*", [], {"INVOKE_PXE_LEASE_TIME": "1h"}, None, "sets pxe.lease_time"),
    ("INVOKE_*", [], {"INVOKE_INSTALL_PACKAGES": "vim"}, None, "sets install.packages, a list"),
    ("INVOKE_*", [], {"INVOKE_GUESTS_GUEST-01_VCPUS": "two"}, None, "guests.guest-01.vcpus"),
    ("INVOKE_*", [], {"INVOKE_GUESTS_GUEST-01_SSH_ALLOW_FROM": "x"}, None, "a list"),
    ("INVOKE_*", [], {"INVOKE_HOST_SUBNET": "192.0.2.0/33"}, None, "host.subnet"),
    ("INVOKE_*", [], {"INVOKE_HOST_SUBNTE": "203.0.113.0/28"}, None, "names no setting"),
    ("INVOKE_*", [], {"INVOKE_GUESTS_T-GUST_IP": "192.0.2.9"}, None, "names no setting"),
    # --- host.storage (never a real disk: the device is refused before it is opened for writes) ---
    ("host.storage", ["--device", "/dev/null"], {}, None, "is not a block device"),
    ("host.storage", ["--device", "/dev/nonexistent9"], {}, None, "cannot be read"),
    ("host.storage", ["--device", "sda"], {}, None, "block device path"),
    ("host.storage", ["--device", "/dev/../etc/passwd"], {}, None, "block device path"),
    ("host.storage", ["--device", "/dev/sda\n"], {}, None, "block device path"),
    ("host.storage", ["--device", "/dev/sd a"], {}, None, "block device path"),
    ("host.storage", ["--device", "/dev/null", "--size", "lots"], {}, None, "host.storage.size"),
    ("host.storage", ["--device", "/dev/null", "--size", "-1G"], {}, None, "host.storage.size"),
    ("host.storage", ["--device", "/dev/null", "--volume-group", "-vg"], {}, None, "LVM name"),
    ("host.storage", ["--device", "/dev/null", "--volume-group", "a/b"], {}, None, "LVM name"),
    ("host.storage", ["--device", "/dev/null", "--volume-group", ".."], {}, None, "LVM name"),
    ("host.storage", ["--device", "/dev/null", "--volume-group", "vg\n"], {}, None, "LVM name"),
    # --- host.xen (under --root: nothing is installed) ---
    ("host.xen", ["--dom0-mem", "256M"], {}, "", "at least 512M"),
    ("host.xen", ["--dom0-mem", "4096.5M"], {}, "", "host.xen.dom0_mem"),
    ("host.xen", ["--dom0-mem", "lots"], {}, "", "host.xen.dom0_mem"),
    ("host.xen", ["--package", "xen;reboot"], {}, "", "not a Debian package name"),
    ("host.xen", ["--package", "xen-hypervisor\n"], {}, "", "not a Debian package name"),
    ("host.xen", ["--root", "/nonexistent/root"], {}, "", "is not a directory"),
    # --- the read-only tasks ---
    ("host.check", ["--netns", ""], {}, "", "is empty"),
    ("host.report", ["--netns", ""], {}, "", "is empty"),
    ("host.report", ["--markdown", "report.txt"], {}, "", "must end in .md"),
    ("host.report", ["--diagram-file", "x.svg"], {}, "", "needs --markdown"),
    ("host.diagram", ["--output", "lab.gif"], {}, "", "must end in"),
    ("host.diagram", ["--output", "/nonexistent/lab.svg"], {}, "", "its folder does not exist"),
    ("host.diagram", ["--netns", "", "--dry-run"], {}, "", "is empty"),
    # --- guest.build (dir storage and --root under tmp) ---
    ("guest.build", ["--name", "t-guest", "--memory", "16"], {}, "", "memory 16 MiB is below"),
    ("guest.build", ["--name", "t-guest", "--memory", "lots"], {}, "", "guests.t-guest.memory"),
    ("guest.build", ["--name", "t-guest", "--memory", "1T"], {}, "", "more than the host has"),
    ("guest.build", ["--name", "t-guest", "--vcpus", "0"], {}, "", "at least 1"),
    ("guest.build", ["--name", "t-guest", "--vcpus", "4096"], {}, "", "more than the host's"),
    ("guest.build", ["--name", "t-guest", "--ip", "198.51.100.7"], {}, "", "outside"),
    ("guest.build", ["--name", "t-guest", "--ip", "192.0.2.1"], {}, "", "bridge's address"),
    ("guest.build", ["--name", "t-guest", "--ip", "192.0.2.15"], {}, "", "broadcast"),
    ("guest.build", ["--name", "t-guest", "--ip", "192.0.2.5\n"], {}, "", "guests.t-guest.ip"),
    ("guest.build", ["--name", "t-guest", "--profile", "bogus"], {}, "", "guests.t-guest.profile"),
    ("guest.build", ["--name", "t-guest", "--disk", "0"], {}, "", "guests.t-guest.disk"),
    ("guest.build", ["--name", "t-guest", "--swap", "-1G"], {}, "", "guests.t-guest.swap"),
    ("guest.build", ["--name", NL], {}, "", "--name"),
    ("guest.build", ["--name", ""], {}, "", "--name"),
    ("guest.build", ["--name", "a.b"], {}, "", "--name"),
    ("guest.build", ["--name", "nobody"], {}, "", "is not in the site config"),
    ("guest.build", ["--name", "Bad_Name"], {}, "", "is not a host name"),
    # guest-01 of invoke.yaml: variables set what no -f file sets (a -f file ranks above them)
    (
        "guest.build",
        ["--name", "guest-01"],
        {"INVOKE_GUESTS_GUEST-01_BRIDGE": "br;x"},
        None,
        "not an interface name",
    ),
    (
        "guest.build",
        ["--name", "guest-01"],
        {"INVOKE_GUESTS_GUEST-01_BRIDGE": "all"},
        None,
        "the kernel reserves",
    ),
    (
        "guest.build",
        ["--name", "guest-01"],
        {"INVOKE_HOST_STORAGE_DIR": "tmp/x"},
        None,
        "absolute path",
    ),
    (
        "guest.build",
        ["--name", "guest-01"],
        {"INVOKE_HOST_STORAGE_DIR": "/srv/x'y"},
        None,
        "absolute path",
    ),
    (
        "guest.build",
        ["--name", "guest-01"],
        {"INVOKE_GUESTS_GUEST-01_USER": "admin\n"},
        None,
        "not a user name",
    ),
    (
        "guest.build",
        ["--name", "guest-01"],
        {"INVOKE_GUESTS_GUEST-01_USER": "root"},
        None,
        "other than root",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        "host:\n  storage:\n    dir: tmp/x\n",
        "absolute path",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        'host:\n  storage:\n    dir: "/srv/x\'y"\n',
        "absolute path",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        f"guests:\n  t-guest:\n    ssh_authorized_keys:\n      - {KEY[:-20]}\n",
        "ssh_authorized_keys.0",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        f"guests:\n  t-guest:\n    ssh_authorized_keys:\n      - ssh-rsa {KEY.split()[1]} x@y\n",
        "not one ssh-rsa key",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        'guests:\n  t-guest:\n    ssh_authorized_keys:\n      - "ssh-ed25519 AAAA\\u0007 x"\n',
        "ssh_authorized_keys.0",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        "guests:\n  t-guest:\n    gateway: 192.0.2.15\n",
        "broadcast",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        "guests:\n  t-guest:\n    ssh_allow_from: [x]\n",
        "not an IPv4 network",
    ),
    (
        "guest.build",
        ["--name", "t-guest"],
        {},
        "guests:\n  t-guest:\n    dns: [8.8.8.300]\n",
        "guests.t-guest.dns",
    ),
    ("guest.build", ["--name", "t-guest", "--root", "/nonexistent"], {}, "", "not a directory"),
    # --- image.build, pxe.* (state and trees under --root) ---
    ("image.build", ["--profile", "bogus", "--dry-run"], {}, "", "bogus"),
    ("pxe.arm", ["--mac", "zz:zz:zz:zz:zz:zz"], {}, "", "is not a MAC address"),
    ("pxe.arm", ["--mac", "52:54:00:12:34"], {}, "", "is not a MAC address"),
    ("pxe.arm", [], {}, "", "--mac"),
    ("pxe.disarm", ["--mac", "not-a-mac"], {}, "", "is not a MAC address"),
    ("pxe.preseed", ["--mac", "nope"], {}, "", "is not a MAC address"),
    ("pxe.build", ["--profile", "bogus", "--dry-run"], {}, "", "install.profile"),
    ("pxe.serve", ["--mode", "bogus", "--dry-run"], {}, "", "pxe.mode"),
    ("pxe.serve", ["--range", "192.0.2.20-192.0.2.10", "--dry-run"], {}, "", "FIRST is after LAST"),
    ("pxe.serve", ["--interface", "eth0\n", "--dry-run"], {}, "", "not an interface name"),
    ("pxe.serve", ["--interface", "all", "--dry-run"], {}, "", "the kernel reserves"),
    # --- fleet.* (the inventory is checked before any connection; hosts on loopback) ---
    ("fleet.status", [], {}, "", "fleet.hosts = {}: is empty"),
    ("fleet.status", [], {}, "fleet:\n  parallel: 0\n", "fleet.parallel = 0"),
    ("fleet.provision", [], {}, "fleet:\n  connect_timeout: 0\n", "fleet.connect_timeout = 0"),
    ("fleet.run", ["bogus.task"], {}, "", "TASK = 'bogus.task'"),
    (
        "fleet.run",
        ["host.check", "--hosts", "nope"],
        {},
        "fleet:\n  hosts:\n    h1: {address: 127.0.0.21, site: h1.yaml}\n",
        "--hosts = 'nope'",
    ),
    (
        "fleet.deploy",
        [],
        {},
        "fleet:\n  hosts:\n    h1: {address: 127.0.0.21, site: /nonexistent/h1.yaml}\n",
        "fleet.hosts.h1.site = '/nonexistent/h1.yaml': cannot be read",
    ),
    (
        "fleet.deploy",
        [],
        {},
        "fleet:\n  hosts:\n    Bad_Name: {address: 127.0.0.21, site: h1.yaml}\n",
        "fleet.hosts.Bad_Name = 'Bad_Name'",
    ),
]
ROOTED = {"host.network", "host.xen", "host.report", "host.diagram", "guest.build", "pxe.arm",
          "pxe.disarm", "pxe.preseed", "pxe.build", "pxe.serve"}  # fmt: skip
NETNS = {"host.network", "host.check", "host.report", "host.diagram"}
BASE_SITE = """host:
  subnet: 192.0.2.0/28
  storage:
    kind: dir
    dir: {storage}
guests:
  t-guest:
    memory: 512M
    disk: 2G
    swap: 256M
    profile: debian-12
    ip: 192.0.2.5
"""


def count_by_task():
    return Counter(task for task, *_ in CASES)


def _ids():
    seen = Counter()
    ids = []
    for case in CASES:
        seen[case[0]] += 1
        ids.append(f"{case[0]}-{seen[case[0]]}")
    return ids


def merged(base: dict, extra) -> dict:
    if not isinstance(extra, dict):
        return extra
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(base[key], value) if isinstance(base.get(key), dict) else value
    return out


def site_file(tmp_path, storage, site_text: str):
    """The base site (dir storage under tmp, guest t-guest) with the case's text merged in; a
    case that is not YAML, or whose sections are no mappings, goes in as it is."""
    base = yaml_load(BASE_SITE.format(storage=storage))
    path = tmp_path / "site.yaml"
    try:
        extra = yaml_load(site_text) if site_text else {}
    except Exception:
        extra = None
    if isinstance(extra, dict) and all(
        isinstance(v, dict) or k not in base for k, v in extra.items()
    ) and not any(not isinstance(v, dict) for v in (extra.get("host") or {}).values()
                  if isinstance(v, dict)):  # fmt: skip
        with open(str(path), "w") as fh:
            YAML().dump(merged(base, extra), fh)
    else:
        path.write_text(site_text)
    return path


def yaml_load(text):
    return YAML(typ="safe").load(text)


@pytest.mark.parametrize("task, args, env, site_text, words", CASES, ids=_ids())
def test_refused_with_exit_2(tmp_path, netns, task, args, env, site_text, words):
    root = tmp_path / "root"
    root.mkdir()
    storage = tmp_path / "xen"
    core = []  # Invoke's own flags, before the task
    if site_text is not None:
        core = ["-f", str(site_file(tmp_path, storage, site_text))]
    if task.startswith(("-f", "INVOKE_")):  # the config cases: any task, host.network here
        core, name, flags = list(args) + core, "host.network", ["--dry-run"]
    else:
        name, flags = task, list(args)
    ns = None
    if name in NETNS and "--netns" not in flags:
        ns = netns("sweep")
        flags += ["--netns", ns]
    if name in ROOTED and "--root" not in flags:
        flags += ["--root", str(root)]
    before = ip_json(ns, "link") if ns else None
    r = invoke(*core, name, *flags, env={"SSH_CONNECTION": "", **env})
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert list(root.iterdir()) == [] and not storage.exists()
    if ns:
        assert ip_json(ns, "link") == before
