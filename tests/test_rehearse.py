"""`invoke lab.rehearse`: the whole lab on a real Xen host inside a VM, checked from outside.

Fast: bad rehearsal sites are refused (exit 2) before anything is made; the parts the rehearsal
takes from pxe.serve's preseed are the preseed's own; the uplink's netplan is what `netplan
generate` accepts; the pygrub variant of a cfg is what guest.build writes for pygrub.
xen (CI runs it, the default ubuntu-18.04 profile): the whole rehearsal passes every step and
leaves nothing running; interrupted once its VM runs, it stops qemu and pxe.serve and removes its
namespaces.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from pipeline.config import load_site
from pipeline.guest import xen_cfg
from pipeline.lab import rehearse
from pipeline.lab.rehearsal import checks, installer
from pipeline.lab.rehearsal.run import SITE_FILE
from pxe import preseed
from tests.conftest import REPO, invoke, sh
from tests.test_config import KEY


def _site_file(tmp_path: Path, **changes) -> Path:
    data = YAML(typ="safe").load(SITE_FILE.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(data))
    return path


def _namespaces() -> set:
    out = sh("ip", "netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(("xlr-", "xli-"))}


@pytest.mark.parametrize(
    "args, changes, words",
    [
        (["--profile", "centos-7"], {}, "--profile = 'centos-7'"),
        ([], {"install__mac": None}, "install.mac"),
        ([], {"host__storage__device": "/dev/vdb"}, "host.storage.device"),
        (
            [],
            {"rehearse__uplink": "192.0.2.5/24", "rehearse__gateway": "192.0.2.9"},
            "overlaps host.subnet",
        ),  # fmt: skip
        ([], {"rehearse__gateway": "10.9.9.1"}, "rehearse.gateway = '10.9.9.1'"),
        ([], {"rehearse__outside": "198.51.100.7/24"}, "rehearse.outside"),
        (
            [],
            {"guests__guest-01__ssh_allow_from": ["203.0.113.0/24", "198.51.100.0/24"]},
            "rehearse.outside",
        ),  # fmt: skip
        ([], {"guests__guest-01__ssh_allow_from": ["192.0.2.0/28"]}, "must let the router"),
        ([], {"install__disk_size": "8G"}, "install.disk_size"),
    ],
)
def test_a_bad_rehearsal_is_refused_before_anything_is_made(tmp_path, args, changes, words):
    cache = tmp_path / "cache"
    site = _site_file(tmp_path, rehearse__cache_dir=str(cache), **changes)
    before = _namespaces()
    r = invoke("lab.rehearse", "--site", str(site), *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not cache.exists() and _namespaces() == before


def test_an_unreadable_site_file_is_bad_input(tmp_path):
    r = invoke("lab.rehearse", "--site", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "--site" in r.stderr, r.stderr


def _provision():
    return preseed.Provision(
        base_url="http://198.51.100.1:8080", mac="52:54:00:12:34:02", token="t" * 43,
        site_yaml="host: {subnet: 192.0.2.0/28}\n", xenlab="xenlab==0.1.0",
        pip_wheel="pip-25.0.1-py3-none-any.whl", python="python3.8",
        python_packages=("python3.8", "python3.8-venv"),
    )  # fmt: skip


def test_the_setup_and_callback_are_the_preseeds_own():
    site = load_site(rehearse.read_site(None, None))
    callback = preseed.callback_for(site.install.mac, "198.51.100.1", 8080, "t" * 43)
    text = preseed.render(site.install, site.install.mac, callback, _provision())
    setup, url = installer.parts(text)
    assert setup == preseed.setup_script(site.install, _provision())
    assert url == callback
    with pytest.raises(Exception, match="no xenlab setup"):
        installer.parts(text.replace("/tmp/xenlab-setup.sh", "/tmp/other.sh"))


def test_the_pxelinux_menu_name_carries_the_mac():
    assert installer.menu_name("52:54:00:12:34:02") == "bios/pxelinux.cfg/01-52-54-00-12-34-02"


def test_the_uplink_netplan_is_what_netplan_generates_from(tmp_path):
    site = load_site(rehearse.read_site(None, None))
    text = rehearse.uplink_netplan(site)
    (tmp_path / "etc/netplan").mkdir(parents=True)
    (tmp_path / "etc/netplan/01-netcfg.yaml").write_text(text)
    sh("netplan", "generate", "--root-dir", str(tmp_path))
    network = (tmp_path / "run/systemd/network/10-netplan-ens3.network").read_text()
    assert f"Address={site.rehearse.uplink}" in network
    assert f"Gateway={site.rehearse.gateway}" in network
    link = (tmp_path / "run/systemd/network/10-netplan-ens3.link").read_text()
    assert f"MACAddress={site.install.mac}" in link and "Name=ens3" in link


def test_the_pygrub_variant_is_guest_builds_pygrub_cfg():
    disks = (
        xen_cfg.Disk("/dev/VolumeGroupXen/guest-01-disk", "xvda2"),
        xen_cfg.Disk("/dev/VolumeGroupXen/guest-01-swap", "xvda1"),
        xen_cfg.Disk("/var/lib/xenlab/guests/guest-01/seed.iso", "xvdc", False, True),
    )
    args = ("guest-01", 1024, 2, disks, "192.0.2.2", "00:16:3e:12:34:56", "xenbr0")
    pvgrub = xen_cfg.render(xen_cfg.XlConfig(*args, boot="pvgrub"))
    assert checks.pygrub_variant(pvgrub) == xen_cfg.render(xen_cfg.XlConfig(*args, boot="pygrub"))
    assert xen_cfg.cfg_boot(checks.pygrub_variant(pvgrub)) == "pygrub"


def test_the_site_with_the_rehearsals_key_loads(tmp_path):
    data = rehearse.with_key(rehearse.read_site(None, "debian-12"), KEY)
    site = load_site(data)
    assert site.install.ssh_authorized_keys == [KEY]
    assert all(
        g.ssh_authorized_keys == [KEY] and g.profile == "debian-12" for g in site.guests.values()
    )
    assert site.install.profile == "debian-12" and not rehearse.problems(site)


def test_the_step_table_ends_with_the_total():
    steps = [
        rehearse.Step("prepare", "passed", 5.2, "a|b"),
        rehearse.Step("install", "failed", 3, "x"),
    ]
    table = rehearse._table(steps)
    assert table[2] == "| prepare | passed | 5 s | a/b |"
    assert table[-1] == "| all | 1 of 2 passed | 8 s | |"


# --- the real thing ---------------------------------------------------------------------------
REHEARSAL_TIMEOUT = 75 * 60  # software emulation on two shared cores: a warm run takes ~10 min
RUNS = Path(load_site(rehearse.read_site(None, None)).rehearse.cache_dir) / "runs"


def _run_id(said: str) -> str:
    found = re.search(r"^lab\.rehearse ([0-9a-f]+): ", said, re.M)
    assert found, said[-3000:]
    return found.group(1)


def _left_behind(run_id: str) -> list:
    """What of the run `run_id` is still there: its namespaces, processes, loop devices, files."""
    left = [ns for ns in _namespaces() if ns.endswith(f"-{run_id}")]
    work = str(RUNS / run_id)
    procs = subprocess.run(["pgrep", "-af", work], capture_output=True, text=True).stdout
    left += [line for line in procs.splitlines() if "pgrep" not in line]
    left += [line for line in sh("losetup", "-a").stdout.splitlines() if work in line]
    if Path(work).exists():
        left.append(work)
    return left


def _rehearsal(out: Path) -> list:
    return [str(REPO / ".venv/bin/invoke"), "lab.rehearse", "--output", str(out)]


@pytest.mark.xen
@pytest.mark.slow
def test_the_whole_lab_rehearses_on_xen(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(_rehearsal(out), cwd=str(REPO), capture_output=True, text=True,
                       timeout=REHEARSAL_TIMEOUT)  # fmt: skip
    steps = (out / "steps.md").read_text() if (out / "steps.md").exists() else ""
    assert r.returncode == 0, (steps, r.stdout[-8000:], r.stderr[-3000:])
    rows = [line for line in steps.splitlines() if line.startswith("| ") and "| --- |" not in line]
    rows = rows[1:-1]  # no header, no total
    assert [row.split("|")[1].strip() for row in rows] == [name for name, _ in rehearse.STAGES]
    assert all(row.split("|")[2].strip() == "passed" for row in rows), steps
    assert re.search(r"pxe\.status: \S+ done \(guest-01 192\.0\.2\.2\)", r.stdout), r.stdout[-3000:]
    assert re.search(r"\bvif\d+\.0\b", (out / "report.txt").read_text())
    assert "guest-01" in (out / "lab.dot").read_text()
    assert "<svg" in (out / "lab.svg").read_text()  # Graphviz writes guest&#45;01 there
    assert "Xen version" in (out / "console.log").read_text(errors="replace")
    assert _left_behind(_run_id(r.stdout)) == []


@pytest.mark.xen
@pytest.mark.slow
def test_an_interrupted_rehearsal_leaves_nothing_running(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_rehearsal(out), cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30 * 60
        console = out / "console.log"
        while not console.exists() or console.stat().st_size == 0:  # until its VM runs
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(2)
        run_id = _run_id((out / "transcript.txt").read_text())
        assert _left_behind(run_id), "the run's VM, namespaces and files should be there now"
        os.kill(proc.pid, signal.SIGTERM)
        said = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, said[-3000:]
    assert "interrupted" in said, said[-3000:]
    assert _left_behind(run_id) == []
