"""`invoke host.check`: judged on recorded outputs of a Xen 4.9 / Ubuntu 18.04 dom0, and run for real.

The real runs are judged against what this machine is, read here first (/sys/hypervisor/type,
/proc/xen/capabilities, `xl info`): bare metal or another hypervisor, a Xen guest, or dom0. The
network and LVM lines are checked for real in a namespace and on a loop disk the test makes.
"""

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from pipeline import xl
from pipeline.host import check
from tests.conftest import invoke, sh

DATA = Path(__file__).parent / "data" / "xl"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def dom0_facts() -> check.Facts:
    """The lab's host after all its steps: dom0 on Xen 4.9, guest-01 running, bridge and VG made."""
    return check.Facts(
        hypervisor="xen\n",
        capabilities="control_d\n",
        xl_info=recorded("xl-info.txt"),
        xl_list=recorded("xl-list.txt"),
        dmesg=recorded("dmesg-dom0.txt"),
        grub_cfg=recorded("grub-xen.cfg"),
        bridge="xenbr0",
        bridge_exists=True,
        bridge_state="up",
        bridge_addresses=["192.0.2.1/28"],
        expected_address="192.0.2.1/28",
        forwarding=True,
        volume_group="VolumeGroupXen",
        vg={"vg_name": "VolumeGroupXen", "vg_size": str(100 << 30), "vg_free": str(89 << 30)},
    )


def by_step(lines):
    return {line.step: line for line in lines}


def test_the_labs_xl_list():
    domains = xl.parse_list(recorded("xl-list.txt"))
    assert [(d.name, d.id, d.memory_mib, d.vcpus) for d in domains] == [
        ("Domain-0", 0, 4096, 8),
        ("guest-01", 1, 1024, 2),
    ]
    assert xl.domain0(domains).name == "Domain-0"


def test_xl_info_and_dmesg_of_a_dom0():
    info = xl.parse_info(recorded("xl-info.txt"))
    assert info["xen_version"] == "4.9.2"
    assert info["cc_compile_date"] == "Thu Mar 29 13:30:42 UTC 2018"
    assert xl.dom0_mem(info) == "4096M,max:4096M"
    assert xl.xen_line(recorded("dmesg-dom0.txt")) == "Xen version: 4.9.2 (preserve-AD)"
    assert xl.xen_line(recorded("dmesg-native.txt")) is None


def test_a_finished_host_passes_every_step():
    lines = check.evaluate(dom0_facts())
    assert all(line.ok for line in lines), [line for line in lines if not line.ok]
    assert check.summary(lines) is None
    steps = by_step(lines)
    assert "guest-01" in steps["Domain-0 in xl list"].detail
    assert "Xen 4.9.2" in steps["xl info"].detail
    assert steps["volume group"].detail == "VolumeGroupXen: 89G free of 100G"
    assert check.as_json(lines)["ok"] is True


def test_a_native_boot_says_what_is_missing_and_what_fixes_it():
    facts = replace(
        dom0_facts(),
        hypervisor=None,
        capabilities=None,
        xl_info=None,
        xl_list=None,
        dmesg=recorded("dmesg-native.txt"),
    )
    lines = check.evaluate(facts)
    # GRUB already boots Xen (host.xen ran), but the host was not rebooted yet.
    assert by_step(lines)["Xen default boot"].ok
    steps = by_step(lines)
    assert steps["Xen hypervisor"].detail == "not running under Xen"
    for step in ("Xen hypervisor", "xl info", "Domain-0 in xl list", "Xen in dmesg"):
        assert not steps[step].ok
        assert steps[step].fix.startswith("invoke host.xen")
    assert steps["bridge"].ok and steps["volume group"].ok
    assert check.summary(lines).startswith("not running under Xen; 5 of 10 steps missing")


def test_a_guest_is_not_a_dom0_and_an_uncapped_dom0_is_flagged():
    info = recorded("xl-info.txt").replace(" dom0_mem=4096M,max:4096M", "")
    facts = replace(dom0_facts(), capabilities="", xl_info=info)
    steps = by_step(check.evaluate(facts))
    assert not steps["Xen hypervisor"].ok and "guest" in steps["Xen hypervisor"].detail
    assert not steps["dom0 memory capped"].ok
    assert steps["dom0 memory capped"].fix.startswith("invoke host.xen")


def test_grub_not_booting_xen_is_flagged():
    native = recorded("grub-xen.cfg").replace(
        'set default="Ubuntu GNU/Linux, with Xen hypervisor"', 'set default="0"'
    )
    line = by_step(check.evaluate(replace(dom0_facts(), grub_cfg=native)))["Xen default boot"]
    assert not line.ok and line.fix.startswith("invoke host.xen")
    assert "'Ubuntu GNU/Linux, with Xen hypervisor'" in line.detail
    line = by_step(check.evaluate(replace(dom0_facts(), grub_cfg=None)))["Xen default boot"]
    assert not line.ok and "grub.cfg" in line.detail


def test_network_and_storage_lines_name_their_tasks():
    facts = replace(
        dom0_facts(),
        bridge_state="down",
        bridge_addresses=["192.0.2.2/28"],
        forwarding=False,
        vg=None,
    )
    steps = by_step(check.evaluate(facts))
    assert steps["bridge"].fix == steps["bridge address"].fix == "invoke host.network"
    assert "has: 192.0.2.2/28" in steps["bridge address"].detail
    assert steps["IPv4 forwarding"].fix == "invoke host.network"
    assert steps["volume group"].fix == "invoke host.storage"
    assert steps["volume group"].detail == "no volume group VolumeGroupXen"


# Real runs on this machine, judged against what it is.


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def this_machine() -> str:
    """'dom0', 'domU' (a Xen guest) or 'native' (no Xen: bare metal or another hypervisor), read
    here and not through host.check."""
    if _read("/sys/hypervisor/type") != "xen":
        return "native"
    if "control_d" in _read("/proc/xen/capabilities"):
        return "dom0"
    xl_answers = shutil.which("xl") is not None and (
        subprocess.run(["xl", "info"], capture_output=True).returncode == 0
    )
    return "dom0" if xl_answers else "domU"


def expected_xen_line() -> tuple:
    """host.check's (status, detail) for its "Xen hypervisor" step on this machine."""
    machine = this_machine()
    if machine == "dom0":
        return "ok", "running under Xen, as dom0"
    if machine == "domU":
        return "missing", "under Xen, but as a guest (not dom0)"
    other = _read("/sys/hypervisor/type")
    return "missing", check.NOT_XEN + (f" (/sys/hypervisor/type: {other})" if other else "")


def test_the_xen_verdict_here_matches_what_this_machine_is():
    proc = invoke("host.check", "--json")
    report = json.loads(proc.stdout)
    line = {c["step"]: c for c in report["checks"]}["Xen hypervisor"]
    assert (line["status"], line["detail"]) == expected_xen_line(), this_machine()
    assert proc.returncode == (0 if report["ok"] else 1), proc.stderr


def test_the_summary_here_says_not_running_under_xen_only_without_xen():
    proc = invoke("host.check")
    says_not_xen = "failed: " + check.NOT_XEN + ";" in proc.stderr
    if this_machine() == "native":
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert says_not_xen, proc.stderr
        assert check.NOT_XEN in proc.stdout  # the table's line too
    else:
        assert not says_not_xen, proc.stderr
        assert check.NOT_XEN not in proc.stdout


@pytest.fixture
def site(tmp_path):
    def write(volume_group: str) -> str:
        path = tmp_path / "site.yaml"
        with open(str(path), "w") as fh:
            YAML().dump(
                {"host": {"subnet": "192.0.2.0/28", "storage": {"volume_group": volume_group}}},
                fh,
            )
        return str(path)

    return write


def test_bridge_forwarding_and_vg_are_read_for_real(netns, loop_disk, site):
    ns = netns("check")
    sh("ip", "-n", ns, "link", "add", "xenbr0", "type", "bridge")
    sh("ip", "-n", ns, "addr", "add", "192.0.2.1/28", "dev", "xenbr0")
    sh("ip", "-n", ns, "link", "set", "xenbr0", "up")
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    disk = loop_disk("1G")
    vg = "XlCheck" + ns[-6:]
    sh("pvcreate", disk)
    sh("vgcreate", vg, disk)

    proc = invoke("-f", site(vg), "host.check", "--netns", ns, "--json")

    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1), proc.stderr
    steps = {c["step"]: c for c in report["checks"]}
    xen = steps["Xen hypervisor"]
    assert (xen["status"], xen["detail"]) == expected_xen_line()
    for step in ("bridge", "bridge address", "IPv4 forwarding", "volume group"):
        assert steps[step]["status"] == "ok", steps[step]
    assert steps["volume group"]["detail"].startswith(f"{vg}: ")


def test_an_empty_namespace_reads_as_missing_and_stays_as_it_was(netns, site):
    ns = netns("check")
    proc = invoke("-f", site("XlCheckAbsent"), "host.check", "--netns", ns, "--json")
    assert proc.returncode == 1
    steps = {c["step"]: c for c in json.loads(proc.stdout)["checks"]}
    assert steps["bridge"]["detail"] == "xenbr0 is absent"
    assert steps["IPv4 forwarding"]["status"] == "missing"
    assert steps["volume group"]["fix"] == "invoke host.storage"
    # host.check only reads: the namespace has no bridge and forwarding is still off.
    assert sh("ip", "-n", ns, "link", "show", "xenbr0", check=False).returncode != 0
    assert (
        sh("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    )


def test_an_unknown_namespace_is_bad_input():
    proc = invoke("host.check", "--netns", "xl-no-such-ns")
    assert proc.returncode == 2
    assert "--netns" in proc.stderr


# --- the xendomains policy --------------------------------------------------------------------------
def test_the_xendomains_policy_is_reported_against_the_site():
    from pipeline.host import xen

    packaged = recorded("xendomains-debian12.txt")  # the package's default: save and restore
    line = by_step(check.evaluate(replace(dom0_facts(), xendomains=packaged)))["xendomains policy"]
    assert not line.ok and line.fix == "invoke host.xen"
    assert line.detail == (
        "running guests are saved to /var/lib/xen/save at host shutdown, restored at boot;"
        " /etc/xen/auto starts its guests at boot (the site asks for on_shutdown: shutdown)"
    )
    written = xen.set_xendomains(packaged, "shutdown")
    lines = check.evaluate(replace(dom0_facts(), xendomains=written))
    assert by_step(lines)["xendomains policy"].ok and check.summary(lines) is None
    saving = replace(dom0_facts(), xendomains=packaged, on_shutdown="save")
    assert by_step(check.evaluate(saving))["xendomains policy"].ok
    no_auto = written.replace("XENDOMAINS_AUTO=/etc/xen/auto", "XENDOMAINS_AUTO=")
    line = by_step(check.evaluate(replace(dom0_facts(), xendomains=no_auto)))["xendomains policy"]
    assert not line.ok and "no autostart" in line.detail
    # Without the file (no Xen tools) the Xen lines already say what is missing: no line.
    assert "xendomains policy" not in by_step(check.evaluate(dom0_facts()))
