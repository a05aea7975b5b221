"""Shared fixtures: real network namespaces and the invoke command line, cleaned up after each test."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, List

import pytest

REPO = Path(__file__).resolve().parent.parent
# What the slow tests build once per machine (chroots, images, downloads) lives here.
CACHE = Path(os.environ.get("XENLAB_CACHE", "/var/cache/xenlab"))
INVOKE = [sys.executable, "-m", "invoke"]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, text=True, capture_output=True)


def ip_json(netns: str, *args: str) -> list:
    return json.loads(sh("ip", "-n", netns, "-j", *args).stdout or "[]")


@pytest.fixture
def netns() -> Callable[[str], str]:
    """Make namespaces with unique names; all of them are deleted after the test."""
    made: List[str] = []

    def make(role: str) -> str:
        name = f"xl-{role}-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        sh("ip", "netns", "del", name, check=False)


def invoke(*args: str, cwd: Path = REPO, env=None) -> subprocess.CompletedProcess:
    """Run `invoke ARGS` as a user would, from the project folder."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("COLUMNS", "200")
    return subprocess.run(
        INVOKE + list(args), cwd=str(cwd), text=True, capture_output=True, env=full_env
    )


# --- the lab's network in namespaces: a router, the host, guests on vif-like veths ---------------
#   router (198.51.100.1/30) --veth-- eth0 (198.51.100.2/30) host xenbr0 (192.0.2.1/28)
#                                                  \-- vif1.0 --veth-- eth0 guest (192.0.2.2/28)
LAB_SUBNET = "192.0.2.0/28"


@pytest.fixture
def lab(netns, tmp_path):
    """The router and host namespaces (no bridge yet: `run()` is host.network in the host)."""
    router, host = netns("router"), netns("host")
    sh("ip", "-n", router, "link", "add", "r-up", "type", "veth", "peer", "name", "eth0",
       "netns", host)  # fmt: skip
    sh("ip", "-n", router, "addr", "add", "198.51.100.1/30", "dev", "r-up")
    sh("ip", "-n", router, "link", "set", "r-up", "up")
    sh("ip", "-n", router, "route", "add", LAB_SUBNET, "via", "198.51.100.2")
    sh("ip", "-n", host, "addr", "add", "198.51.100.2/30", "dev", "eth0")
    sh("ip", "-n", host, "link", "set", "eth0", "up")
    sh("ip", "-n", host, "route", "add", "default", "via", "198.51.100.1")
    root = tmp_path / "root"
    root.mkdir()
    site = tmp_path / "site.yaml"
    site.write_text(f"host:\n  subnet: {LAB_SUBNET}\n")

    def run(*args, env=None):
        return invoke(
            "-f", str(site), "host.network", "--netns", host, "--root", str(root), *args, env=env
        )

    return {"router": router, "host": host, "root": root, "site": site, "run": run, "netns": netns}


def attach_guest(lab, address="192.0.2.2/28", gateway="192.0.2.1", vif="vif1.0", mac=None):
    """A guest namespace on a veth whose host end joins the bridge, as Xen's vif-bridge script
    does; `mac` is the guest's eth0 MAC (as xl.cfg's vif mac=), random when None."""
    guest, host = lab["netns"]("guest"), lab["host"]
    sh("ip", "-n", guest, "link", "add", "eth0", "type", "veth", "peer", "name", vif,
       "netns", host)  # fmt: skip
    if mac:
        sh("ip", "-n", guest, "link", "set", "eth0", "address", mac)
    sh("ip", "-n", host, "link", "set", vif, "master", "xenbr0", "up")
    sh("ip", "-n", guest, "addr", "add", address, "dev", "eth0")
    sh("ip", "-n", guest, "link", "set", "eth0", "up")
    sh("ip", "-n", guest, "route", "add", "default", "via", gateway)
    return guest


def lab_with_guest(lab, name="guest-01", address="192.0.2.2/28"):
    """host.network run, `name` attached on vif1.0 with the MAC xenlab derives for it, and one
    ping from the router to the guest through the host (so ARP and the bridge have seen it)."""
    from pipeline.mac import derive

    r = lab["run"]()
    assert r.returncode == 0, r.stderr
    guest = attach_guest(lab, address=address, mac=derive(name))
    ip = address.split("/")[0]
    ping = sh("ip", "netns", "exec", lab["router"], "ping", "-c1", "-W5", ip, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # The kernel reports a link's operational state up to a second after traffic flows.
    for _ in range(50):
        states = {a["ifname"]: a["operstate"] for a in ip_json(lab["host"], "link", "show")}
        if all(states[n] == "UP" for n in ("eth0", "xenbr0", "vif1.0")):
            break
        time.sleep(0.2)
    return guest


# --- block devices: sparse files behind loop devices, LVM on them --------------------------------
os.environ.setdefault("LVM_SUPPRESS_FD_WARNINGS", "1")


def _pvs_on(device: str) -> List[dict]:
    out = sh("pvs", "--reportformat", "json", "-o", "pv_name,vg_name", check=False).stdout
    rows = json.loads(out)["report"][0]["pv"] if out.strip() else []
    return [r for r in rows if r["pv_name"] == device or r["pv_name"].startswith(device + "p")]


def remove_lvm_on(device: str) -> None:
    """Remove every VG and PV on `device` and its partitions (what a test made there)."""
    rows = _pvs_on(device)
    for vg in {r["vg_name"] for r in rows if r["vg_name"]}:
        sh("vgremove", "-ff", "-y", vg, check=False)
    for r in rows:
        sh("pvremove", "-ff", "-y", r["pv_name"], check=False)


@pytest.fixture
def loop_disk(tmp_path) -> Callable[..., str]:
    """Sparse files behind loop devices (`make('300G')` -> '/dev/loopN'); LVM on them and the
    devices are removed after the test, also when it fails."""
    made: List[str] = []

    def make(size: str = "300G") -> str:
        image = tmp_path / f"disk{len(made)}.img"
        sh("truncate", "-s", size, str(image))
        device = sh("losetup", "-fP", "--show", str(image)).stdout.strip()
        made.append(device)
        return device

    yield make
    for device in made:
        remove_lvm_on(device)
        sh("losetup", "-d", device, check=False)


def map_lv(volume_group: str, name: str) -> str:
    """Do what dm-linear does for a single-segment LV: a loop device over the LV's extents on its
    PV, at /dev/VG/LV. The kernel here has no device-mapper, so LVs cannot be activated."""
    lv = json.loads(
        sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
           "-o", "lv_size,seg_pe_ranges,vg_extent_size", f"{volume_group}/{name}").stdout
    )["report"][0]["lv"]  # fmt: skip
    assert len(lv) == 1 and " " not in lv[0]["seg_pe_ranges"], f"not one segment: {lv}"
    pv, extents = lv[0]["seg_pe_ranges"].rsplit(":", 1)
    first = int(extents.split("-")[0])
    pe_start = json.loads(
        sh(
            "pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "pe_start", pv
        ).stdout
    )["report"][0]["pv"][0]["pe_start"]
    offset = int(pe_start) + first * int(lv[0]["vg_extent_size"])
    loop = sh("losetup", "-f", "--show", "--offset", str(offset),
              "--sizelimit", lv[0]["lv_size"], pv).stdout.strip()  # fmt: skip
    link = Path("/dev") / volume_group / name
    link.parent.mkdir(exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(loop)
    return str(link)


def unmap_lv(volume_group: str, name: str) -> None:
    link = Path("/dev") / volume_group / name
    if link.is_symlink():
        sh("losetup", "-d", os.readlink(link), check=False)
        link.unlink()
    if link.parent.is_dir() and not any(link.parent.iterdir()):
        link.parent.rmdir()


@pytest.fixture
def lv_mapper():
    """`activate(vg, lv) -> path` for code under test that must write into an LV; undone after."""
    mapped: List[tuple] = []

    def activate(volume_group: str, name: str) -> str:
        mapped.append((volume_group, name))
        return map_lv(volume_group, name)

    yield activate
    for volume_group, name in reversed(mapped):
        unmap_lv(volume_group, name)


# --- VMs ------------------------------------------------------------------------------------------
@pytest.fixture
def vms():
    """Start VMs with tests.qemu.start(...) through `vms(...)`; each is killed by PID after the test."""
    from tests import qemu

    started = []

    def start(*args, **kwargs):
        vm = qemu.start(*args, **kwargs)
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.stop()
