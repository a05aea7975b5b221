"""Interrupts roll back (issue 14): SIGTERM and SIGHUP as SIGINT, children stopped with the task,
half-done steps undone, and a re-run after any interrupt ends where an uninterrupted run does.

Kills are by PID, at each stage boundary: when the runner's progress line for that stage shows
on stdout, or while a step's tool runs (a fake slow tool first on PATH that does the real work,
then sleeps: a step that has half-succeeded).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline.errors import Failed
from pipeline.runner import Interrupted, Runner, interrupts_roll_back
from tests.conftest import INVOKE, REPO, sh

GiB = 1 << 30


# --- the runner ---------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_a_step_rolls_back_like_ctrl_c(signum):
    done = []
    runner = Runner()
    with interrupts_roll_back():
        with pytest.raises(Interrupted) as err:
            with runner.transaction():
                runner.change("one", lambda: done.append("do 1"), lambda: done.append("undo 1"))
                runner.change("two", lambda: os.kill(os.getpid(), signum), lambda: None)
                time.sleep(5)  # not reached: the handler raises in the main thread
    assert err.value.signum == signum
    assert done == ["do 1", "undo 1"]
    assert isinstance(err.value, KeyboardInterrupt)


def test_handlers_are_restored_afterwards():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    with interrupts_roll_back():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_half_done_step_is_undone_when_registered_as_partial():
    state = []

    def half():
        state.append("half written")
        raise Failed("the tool died half-way")

    runner = Runner()
    with pytest.raises(Failed):
        with runner.transaction():
            runner.change("whole", lambda: state.append("whole"), lambda: state.remove("whole"))
            runner.change("half", half, lambda: state.remove("half written"), partial=True)
    assert state == []


def test_a_signal_during_the_rollback_does_not_cut_it_short():
    undone, said = [], []
    runner = Runner(say=said.append)

    def slow_undo():
        os.kill(os.getpid(), signal.SIGTERM)  # a second `kill` while rolling back
        undone.append("first")

    with interrupts_roll_back():
        with pytest.raises(Failed):
            with runner.transaction():
                runner.change("first", lambda: None, slow_undo)
                runner.change("second", lambda: None, lambda: undone.append("second"))
                raise Failed("boom")
    assert undone == ["second", "first"]
    assert "SIGTERM during the rollback: finishing it first" in said


def test_a_file_write_cut_short_is_undone(tmp_path, monkeypatch):
    from pipeline import runner as runner_module

    (tmp_path / "keep").write_text("old\n")
    real = runner_module._atomic_write

    def torn(target, data, mode):
        real(target, data[:2], mode)  # half the bytes landed, then the signal
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(runner_module, "_atomic_write", torn)
    runner = Runner(root=tmp_path)
    with pytest.raises(Interrupted):
        with runner.transaction():
            runner.write_file("/new/file", "new content\n")
    monkeypatch.setattr(runner_module, "_atomic_write", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


# --- processes: kill by PID at a stage, and fake slow tools ---------------------------------------
def slow_tool(bin_dir: Path, name: str, marker: Path) -> None:
    """`name` on PATH that does the real work, records its PID in `marker`, then sleeps."""
    real = shutil.which(name)
    assert real, name
    script = bin_dir / name
    # Reads (sfdisk --json, --list-free) pass straight through: only the change is slow.
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *--json*|*--list-free*) exec "{real}" "$@";; esac\n'
        f'"{real}" "$@"\nrc=$?\necho $$ > "{marker}"\nexec sleep 60\n'
    )  # exec: the sleeping process is the one subprocess started, with the same PID
    script.chmod(0o755)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of an exited child is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def run_killed(argv, env, *, line=None, marker=None, signum=signal.SIGTERM, timeout=120):
    """Start `argv`; SIGTERM it by PID when `line` shows on stdout or `marker` appears. Returns
    (exit code, stdout, stderr, killed: whether the signal was sent before it ended)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", **env)
    proc = subprocess.Popen(
        argv, cwd=str(REPO), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    out, killed, deadline = [], False, time.monotonic() + timeout
    if line is not None:
        for text in proc.stdout:
            out.append(text)
            if line in text:
                killed = proc.poll() is None
                proc.send_signal(signum)
                break
    else:
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # the marker is written just before the tool sleeps
        killed = proc.poll() is None
        proc.send_signal(signum)
    rest, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(out) + rest, err, killed


# --- host.storage on a loop disk ------------------------------------------------------------------
def disk_state(device: str, vg: str) -> dict:
    """The partition table and LVM on `device`, with the VG's name and the device names left out."""
    proc = subprocess.run(["sfdisk", "--json", device], capture_output=True, text=True)
    table = (
        json.loads(proc.stdout)["partitiontable"] if proc.returncode == 0 and proc.stdout else {}
    )
    parts = [
        (p["start"], p["size"], p["type"], (p.get("name") or "").replace(vg, "VG"))
        for p in table.get("partitions", [])
    ]
    out = sh("pvs", "--reportformat", "json", "--units", "b", "--nosuffix",
             "-o", "pv_name,vg_name,pv_size,pv_pe_count").stdout  # fmt: skip
    rows = [r for r in json.loads(out)["report"][0]["pv"] if r["pv_name"].startswith(device)]
    pvs = sorted(
        (r["pv_name"][len(device):], r["vg_name"] == vg, r["pv_size"], r["pv_pe_count"])
        for r in rows
    )  # fmt: skip
    kernel = sorted(p.name[len(Path(device).name):] for p in Path("/sys/class/block").iterdir()
                    if p.name.startswith(Path(device).name + "p"))  # fmt: skip
    return {"label": table.get("label"), "partitions": parts, "pvs": pvs, "kernel": kernel}


def storage_site(tmp_path: Path, device: str, vg: str) -> Path:
    site = tmp_path / f"storage-{vg}.yaml"
    site.write_text(
        f"host:\n  subnet: 192.0.2.0/28\n  storage:\n    device: {device}\n    size: 1G\n"
        f"    volume_group: {vg}\n"
    )
    return site


def host_storage(site: Path, env=None):
    return subprocess.run(INVOKE + ["-f", str(site), "host.storage"], cwd=str(REPO), text=True,
                          capture_output=True, env=dict(os.environ, **(env or {})))  # fmt: skip


@pytest.fixture
def reference(loop_disk, tmp_path):
    """What an uninterrupted host.storage makes on a blank 2G disk (names left out)."""
    device, vg = loop_disk("2G"), f"XlRef{uuid.uuid4().hex[:8]}"
    r = host_storage(storage_site(tmp_path, device, vg))
    assert r.returncode == 0, r.stdout + r.stderr
    return disk_state(device, vg)


STORAGE_STAGES = ["partition", "create PV", "create VG"]


@pytest.mark.parametrize("stage", STORAGE_STAGES)
def test_host_storage_killed_at_a_stage_boundary_converges(loop_disk, tmp_path, reference, stage):
    device, vg = loop_disk("2G"), f"XlKill{uuid.uuid4().hex[:8]}"
    site = storage_site(tmp_path, device, vg)
    blank = disk_state(device, vg)
    code, out, err, killed = run_killed(INVOKE + ["-f", str(site), "host.storage"], {}, line=stage)
    if killed and code != 0:  # the signal came before the run had ended
        assert code == 1 and "interrupted by SIGTERM" in err, out + err
        assert "Traceback" not in err
        # Rolled back to blank, or killed after its last change (reading the facts): all done.
        after = disk_state(device, vg)
        assert after == (blank if "rolled back:" in out else reference), out + err
    assert "could not roll back" not in out, out + err
    again = host_storage(site)
    assert again.returncode == 0, out + err + again.stdout + again.stderr
    assert disk_state(device, vg) == reference


@pytest.mark.parametrize("tool", ["sfdisk", "pvcreate", "vgcreate"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_host_storage_killed_while_a_tool_half_succeeded(
    loop_disk, tmp_path, reference, tool, signum
):
    """The tool has done its work and is still running: the task stops it and undoes the work."""
    device, vg = loop_disk("2G"), f"XlKill{uuid.uuid4().hex[:8]}"
    site = storage_site(tmp_path, device, vg)
    blank = disk_state(device, vg)
    bin_dir, marker = tmp_path / "bin", tmp_path / f"{tool}.pid"
    bin_dir.mkdir()
    slow_tool(bin_dir, tool, marker)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code, out, err, killed = run_killed(
        INVOKE + ["-f", str(site), "host.storage"], env, marker=marker, signum=signum
    )
    assert killed and code == 1, out + err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert not alive(int(marker.read_text())), "the tool was stopped with the task"
    assert disk_state(device, vg) == blank, out + err
    again = host_storage(site)
    assert again.returncode == 0, again.stdout + again.stderr
    assert disk_state(device, vg) == reference


@pytest.mark.parametrize("tool", ["sfdisk", "pvcreate", "vgcreate"])
def test_host_storage_killed_hard_is_finished_by_the_re_run(loop_disk, tmp_path, reference, tool):
    """SIGKILL (no rollback possible) after the tool did its work: the re-run adopts the partition
    by its GPT name and finishes it, rather than adding a second one."""
    device, vg = loop_disk("2G"), f"XlKill{uuid.uuid4().hex[:8]}"
    site = storage_site(tmp_path, device, vg)
    bin_dir, marker = tmp_path / "bin", tmp_path / f"{tool}.pid"
    bin_dir.mkdir()
    slow_tool(bin_dir, tool, marker)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code, out, err, killed = run_killed(
        INVOKE + ["-f", str(site), "host.storage"], env, marker=marker, signum=signal.SIGKILL
    )
    assert killed and code == -signal.SIGKILL, out + err
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the orphan a SIGKILL leaves: the test's
    again = host_storage(site)
    assert again.returncode == 0, again.stdout + again.stderr
    if tool != "vgcreate":  # killed after vgcreate: the VG is whole, the re-run changes nothing
        assert "did not finish" in again.stdout, again.stdout
    assert disk_state(device, vg) == reference
    assert host_storage(site).returncode == 0 and disk_state(device, vg) == reference


# --- guest.build on dir storage (the library, as tasks.py runs it, with a small golden tree) -----
GUEST_DRIVER = r"""
import os, sys
from pathlib import Path
from pipeline.config import Site
from pipeline.guest import build as guest
from pipeline.guest.checks import HostFacts
from pipeline.guest.image import GoldenImage
from pipeline.runner import Interrupted, Runner, interrupts_roll_back
from tests.test_guest_build import KEY

tree, root, storage = (Path(a) for a in sys.argv[1:4])
vg = sys.argv[4] if len(sys.argv) > 4 else None  # LVM on this VG, LVs mapped as dm-linear would
golden = GoldenImage(profile="debian-12", key="test", tree=tree, reused=True,
                     kernel="boot/vmlinuz-test", initrd="boot/initrd-test", distribution="test")
spec = {"memory": "512M", "vcpus": 1, "disk": "1G", "swap": "64M", "profile": "debian-12",
        "ip": "192.0.2.2", "ssh_authorized_keys": [KEY], "dns": ["192.0.2.1"]}
kind = {"kind": "lvm", "volume_group": vg} if vg else {"kind": "dir", "dir": str(storage)}
site = Site.model_validate({"host": {"subnet": "192.0.2.0/28", "storage": kind},
                            "images": {"mirror": "http://mirror.example/debian"},
                            "guests": {"guest-01": spec}})
say = lambda line: print(line, flush=True)
with interrupts_roll_back():  # what tasks.py's `exits` does around every task
    try:
        extra = {}
        if vg:
            from tests.conftest import map_lv
            extra["activate"] = map_lv
        guest.build(site, "guest-01", Runner(root=root, say=say), start=False,
                    image=lambda p: golden, facts=HostFacts(8 << 30, 4, "test"), say=say, **extra)
    except Interrupted as exc:
        print(f"interrupted by {exc}", file=sys.stderr)
        sys.exit(1)
"""


@pytest.fixture
def small_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "boot").mkdir()
    (tree / "etc/fstab").write_text(
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=xenswap none swap sw 0 0\n"
    )
    (tree / "boot/vmlinuz-test").write_bytes(os.urandom(4 << 20))
    return tree


def guest_state(root: Path, storage: Path) -> dict:
    """Every file guest.build leaves (name, mode, size), the cfg's text and the filesystems."""
    state = {}
    for base in (root, storage):
        if base.exists():
            for path in sorted(base.rglob("*")):
                st = path.lstat()
                size = st.st_size if path.is_file() and path.suffix in (".img", ".cfg") else None
                state[str(path.relative_to(base.parent))] = (oct(st.st_mode), size)
    cfg = root / "etc/xen/guest-01.cfg"
    state["cfg"] = cfg.read_text() if cfg.is_file() else None
    for image in ("disk", "swap"):
        path = storage / f"guest-01/{image}.img"
        if path.is_file():
            out = sh("blkid", "-o", "export", str(path), check=False).stdout
            state[image] = sorted(
                line for line in out.splitlines() if line.startswith(("TYPE=", "LABEL="))
            )
    return state


def build_guest(tree, root, storage, env=None, line=None, marker=None, vg=None):
    argv = [sys.executable, "-c", GUEST_DRIVER, str(tree), str(root), str(storage)]
    argv += [vg] if vg else []
    if line is None and marker is None:
        r = subprocess.run(argv, cwd=str(REPO), capture_output=True, text=True,
                           env=dict(os.environ, **(env or {})))  # fmt: skip
        return r.returncode, r.stdout, r.stderr, False
    return run_killed(argv, env or {}, line=line, marker=marker)


@pytest.fixture
def guest_reference(tmp_path, small_tree):
    root, storage = tmp_path / "ref/root", tmp_path / "ref/xen"
    root.mkdir(parents=True)
    code, out, err, _ = build_guest(small_tree, root, storage)
    assert code == 0, out + err
    return guest_state(root, storage)


GUEST_STAGES = [
    "create directory", "create sparse file", "swap.img", "make ext4", "add mount points",
    "make swap", "root-password", "seed.iso", "known_hosts", "guest-01.cfg", "link ",
]  # fmt: skip


@pytest.mark.parametrize("stage", GUEST_STAGES)
def test_guest_build_killed_at_a_stage_boundary_converges(
    tmp_path, small_tree, guest_reference, stage
):
    root, storage = tmp_path / "ref/root", tmp_path / "ref/xen"  # the same paths: same cfg text
    shutil.rmtree(str(tmp_path / "ref"))
    root.mkdir(parents=True)
    code, out, err, killed = build_guest(small_tree, root, storage, line=stage)
    assert "Traceback" not in err, err
    # Either rolled back to nothing, or killed once the build was whole (after its transaction:
    # exit 1 while it returned, or SIGTERM's default once the driver had restored it).
    if killed and "rolled back:" in out:
        assert code == 1 and "interrupted by SIGTERM" in err, out + err
        assert "could not roll back" not in out, out
        assert guest_state(root, storage) == guest_state(tmp_path / "none", tmp_path / "none")
        code, out, err, _ = build_guest(small_tree, root, storage)
        assert code == 0, out + err
    else:
        assert code in (0, 1, -signal.SIGTERM), out + err
    assert guest_state(root, storage) == guest_reference


def test_guest_build_killed_while_mkfs_runs_stops_mkfs_and_removes_the_images(
    tmp_path, small_tree, guest_reference
):
    root, storage = tmp_path / "ref/root", tmp_path / "ref/xen"
    shutil.rmtree(str(tmp_path / "ref"))
    root.mkdir(parents=True)
    bin_dir, marker = tmp_path / "bin", tmp_path / "mkfs.pid"
    bin_dir.mkdir()
    slow_tool(bin_dir, "mkfs.ext4", marker)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code, out, err, killed = build_guest(small_tree, root, storage, env=env, marker=marker)
    assert killed and code == 1, out + err
    assert not alive(int(marker.read_text())), "mkfs was stopped with the task, not orphaned"
    assert not storage.exists() and list(root.iterdir()) == [], out
    code, out, err, _ = build_guest(small_tree, root, storage)
    assert code == 0, out + err
    assert guest_state(root, storage) == guest_reference


# --- guest.build on LVM: a VG on a loop disk, the LVs mapped by the test's dm-linear stand-in ------
@pytest.fixture
def guest_vg(loop_disk):
    device = loop_disk("4G")
    vg = f"XlIntr{uuid.uuid4().hex[:8]}"
    sh("pvcreate", "-q", "-y", device)
    sh("vgcreate", "-q", vg, device)
    yield vg
    for name in ("guest-01-disk", "guest-01-swap"):
        link = Path("/dev") / vg / name
        if link.is_symlink():
            link.unlink()
    if (Path("/dev") / vg).is_dir():
        (Path("/dev") / vg).rmdir()
    # Every mapping made over the PV, also those of LVs a rollback removed.
    for line in sh("losetup", "-j", device, check=False).stdout.splitlines():
        sh("losetup", "-d", line.split(":")[0], check=False)


def lvm_state(vg: str, root: Path) -> dict:
    out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
             "lv_name,lv_size", vg).stdout  # fmt: skip
    lvs = sorted((r["lv_name"], r["lv_size"]) for r in json.loads(out)["report"][0]["lv"])
    state = {"lvs": lvs, "files": sorted(str(p.relative_to(root)) for p in root.rglob("*"))}
    disk = Path("/dev") / vg / "guest-01-disk"
    if lvs and disk.exists():
        blkid = sh("blkid", "-o", "export", str(disk), check=False).stdout
        state["disk"] = sorted(x for x in blkid.splitlines() if x.startswith(("TYPE=", "LABEL=")))
    return state


@pytest.mark.parametrize("stage", ["guest-01-disk", "guest-01-swap", "make ext4", "seed.iso", None])
def test_guest_build_on_lvm_killed_at_a_stage_converges(tmp_path, small_tree, guest_vg, stage):
    """None: while mkfs runs (a slow mkfs.ext4 first on PATH)."""
    root = tmp_path / "root"
    root.mkdir()
    env, marker = {}, None
    if stage is None:
        bin_dir, marker = tmp_path / "bin", tmp_path / "mkfs.pid"
        bin_dir.mkdir()
        slow_tool(bin_dir, "mkfs.ext4", marker)
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code, out, err, killed = build_guest(
        small_tree, root, tmp_path / "unused", env=env, line=stage, marker=marker, vg=guest_vg
    )
    assert killed and "Traceback" not in err, out + err
    if marker is not None:
        assert "rolled back:" in out and not alive(int(marker.read_text())), "mkfs stopped too"
    if "rolled back:" in out:
        assert code == 1 and "could not roll back" not in out, out + err
        assert lvm_state(guest_vg, root) == {"lvs": [], "files": []}, out
        code, out, err, _ = build_guest(small_tree, root, tmp_path / "unused", vg=guest_vg)
    assert code in (0, 1, -signal.SIGTERM), out + err  # else killed once it was whole
    after = lvm_state(guest_vg, root)
    assert [name for name, _ in after["lvs"]] == ["guest-01-disk", "guest-01-swap"]
    assert after["disk"] == ["LABEL=cloudimg-rootfs", "TYPE=ext4"]
    assert "etc/xen/guest-01.cfg" in after["files"]
