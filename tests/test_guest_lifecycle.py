"""guest.list, start, stop, restart, pause, unpause, console, info, autostart, remove and check,
through `invoke` as a user runs them.

There is no Xen on the test machines, so the tasks' plumbing is tested against a stand-in for
xl: tests/data/xl/fake-xl, a small script put first on PATH (pipeline.xl.call finds xl there)
that keeps its domains in a JSON file and prints xl's own formats, including the seconds a
domain lingers after `xl shutdown -w`. It is not Xen: what it proves is that the tasks ask xl the
right things, read its answers right and handle its failures; the rehearsal runs them on Xen.
Removal is tested for real on dir storage and on LVM (a VG on a loop device, LVs inactive:
lvremove works on them); guest.check for real against a guest stand-in in a namespace: a veth in
the bridge with the guest's address and a real sshd with the host key guest.build recorded.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from pipeline import mac
from pipeline.guest import xen_cfg
from tests.conftest import invoke, lab_with_guest, sh

DATA = Path(__file__).parent / "data" / "xl"
GUESTS = ("guest-01", "guest-02")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def write_site(tmp_path: Path, storage: dict, **guest) -> Path:
    spec = {"memory": "1024M", "vcpus": 2, "profile": "debian-12", "autostart": True}
    spec.update(guest)
    data = {
        "host": {"subnet": "192.0.2.0/28", "storage": storage},
        "guests": {
            "guest-01": {**spec, "ip": "192.0.2.2"},
            "guest-02": {**spec, "ip": "192.0.2.3"},
        },
    }
    path = tmp_path / "site.yaml"
    with open(str(path), "w") as fh:
        YAML().dump(data, fh)
    return path


def write_cfg(root: Path, name: str, ip: str, disks) -> Path:
    cfg = xen_cfg.cfg_path(root, name)
    cfg.parent.mkdir(parents=True, exist_ok=True)
    import ipaddress

    cfg.write_text(
        xen_cfg.render(
            xen_cfg.XlConfig(
                name=name, memory_mib=1024, vcpus=2, disks=tuple(disks),
                ip=ipaddress.IPv4Address(ip), mac=mac.derive(name), bridge="xenbr0",
            )
        )
    )  # fmt: skip
    return cfg


class FakeXen:
    """The fake xl's state file and the environment that puts it first on PATH."""

    def __init__(self, tmp_path: Path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (self.bin / "xl").symlink_to(DATA / "fake-xl")
        self.state_file = tmp_path / "xl-state.json"
        self.set()

    def set(self, domains=(), xen=True, **extra):
        dom0 = {"name": "Domain-0", "id": 0, "mem": 4096, "vcpus": 8, "state": "r-----",
                "time": 312.7}  # fmt: skip
        state = {"xen": xen, "domains": [dom0, *domains], "linger": {}, "next_id": 5}
        state.update(extra)
        self.state_file.write_text(json.dumps(state))

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def calls(self) -> list:
        calls = Path(str(self.state_file) + ".calls")
        return calls.read_text().splitlines() if calls.exists() else []

    @property
    def env(self) -> dict:
        return {"PATH": f"{self.bin}:{os.environ['PATH']}", "XL_FAKE_STATE": str(self.state_file)}


def running(name="guest-01", domid=1, state="-b----"):
    return {"name": name, "id": domid, "mem": 1024, "vcpus": 2, "state": state, "time": 21.4}


@pytest.fixture
def xen_lab(tmp_path):
    """A site with guest-01 and guest-02 on dir storage, guest-01's cfg under --root, fake xl."""
    root = tmp_path / "root"
    root.mkdir()
    storage = tmp_path / "xen"
    site = write_site(tmp_path, {"kind": "dir", "dir": str(storage)})
    write_cfg(
        root, "guest-01", "192.0.2.2",
        [xen_cfg.Disk(str(storage / "guest-01/disk.img"), "xvda2"),
         xen_cfg.Disk(str(storage / "guest-01/swap.img"), "xvda1")],
    )  # fmt: skip
    fake = FakeXen(tmp_path)

    def run(*args, env=None):
        return invoke("-f", str(site), *args, env=fake.env if env is None else env)

    return {"root": root, "site": site, "fake": fake, "run": run, "storage": storage}


NO_ROOT = ("pause", "unpause", "console")  # they read no file
TASKS = ["start", "stop", "restart", "pause", "unpause", "console", "info", "remove", "check"]


@pytest.mark.parametrize("task", TASKS + ["autostart --on"])
def test_a_guest_not_in_the_config_is_bad_input_naming_the_configured_ones(xen_lab, task):
    words = task.split()
    root = [] if words[0] in NO_ROOT else ["--root", str(xen_lab["root"])]
    proc = xen_lab["run"](f"guest.{words[0]}", "--name", "nobody", *words[1:], *root)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--name = 'nobody'" in proc.stderr
    assert "configured guests: guest-01, guest-02" in proc.stderr
    assert xen_lab["fake"].calls() == []  # xl was not even asked


@pytest.mark.parametrize(
    "task", ["start", "stop", "restart", "pause", "unpause", "console", "info"]
)
def test_without_xen_every_lifecycle_task_says_so_and_exits_1(xen_lab, task):
    no_xl = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # this machine has no xl at all
    for env in (no_xl, xen_lab["fake"].env):  # and xl that cannot reach a hypervisor
        xen_lab["fake"].set(xen=False)
        root = [] if task in NO_ROOT else ["--root", str(xen_lab["root"])]
        proc = xen_lab["run"](f"guest.{task}", "--name", "guest-01", *root, env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Xen is not running here" in proc.stderr


def test_guest_list_without_xen_exits_1(xen_lab):
    xen_lab["fake"].set(xen=False)
    proc = xen_lab["run"]("guest.list", "--root", str(xen_lab["root"]))
    assert proc.returncode == 1 and "Xen is not running here" in proc.stderr


def test_a_domain_that_does_not_exist(xen_lab):
    run, root = xen_lab["run"], str(xen_lab["root"])
    stop = run("guest.stop", "--name", "guest-01", "--root", root)
    assert stop.returncode == 0 and "guest-01 is not running: no changes" in stop.stdout
    for task in ("pause", "unpause", "console"):
        proc = run(f"guest.{task}", "--name", "guest-01")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "guest-01 is not running: invoke guest.start --name guest-01" in proc.stderr
    info = run("guest.info", "--name", "guest-02", "--root", root, "--json")
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["state"] == "stopped" and facts["id"] is None
    assert any("guest.build --name guest-02" in note for note in facts["notes"])
    start = run("guest.start", "--name", "guest-02", "--root", root)
    assert start.returncode == 1 and "invoke guest.build --name guest-02 makes it" in start.stderr
    assert "xl create" not in "\n".join(xen_lab["fake"].calls())


def test_start_is_idempotent_and_dry_run_changes_nothing(xen_lab):
    run, root, fake = xen_lab["run"], str(xen_lab["root"]), xen_lab["fake"]
    dry = run("guest.start", "--name", "guest-01", "--root", root, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would start guest-01 (xl create" in dry.stdout
    assert [d["name"] for d in fake.state()["domains"]] == ["Domain-0"]
    first = run("guest.start", "--name", "guest-01", "--root", root)
    assert first.returncode == 0, first.stderr
    assert "guest-01 started" in first.stdout
    assert fake.calls()[-1] == f"create {xen_lab['root']}/etc/xen/guest-01.cfg"
    again = run("guest.start", "--name", "guest-01", "--root", root)
    assert (
        again.returncode == 0
        and "guest-01 is blocked already (domain 5): no changes" in again.stdout
    )


def test_stop_then_start_waits_for_the_lingering_domain(xen_lab):
    """After `xl shutdown -w` returns the domain stays listed for a while (3.5 to 10 s on Xen):
    stop waits until `xl list NAME` fails, and a start meanwhile waits instead of failing."""
    run, root, fake = xen_lab["run"], str(xen_lab["root"]), xen_lab["fake"]
    fake.set([running()], linger_calls=3)
    stop = run("guest.stop", "--name", "guest-01", "--root", root)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "guest-01 stopped" in stop.stdout
    calls = fake.calls()
    assert "shutdown -w guest-01" in calls
    after = calls[calls.index("shutdown -w guest-01") + 1 :]
    assert after[-1] == "list guest-01" and len(after) >= 4  # polled until it failed
    assert [d["name"] for d in fake.state()["domains"]] == ["Domain-0"]

    # A start while the old domain is still there: it waits, then creates.
    fake.set([running(state="--ps--")], linger={"guest-01": 4})
    start = run("guest.start", "--name", "guest-01", "--root", root)
    assert start.returncode == 0, start.stdout + start.stderr
    assert "still going away (paused, shutdown (poweroff))" in start.stdout
    calls = fake.calls()
    assert calls[-1].startswith("create ") and "already exists" not in start.stderr
    names = [(d["name"], d["id"]) for d in fake.state()["domains"]]
    assert names == [("Domain-0", 0), ("guest-01", 5)]


def test_stop_force_destroys_and_a_hanging_shutdown_times_out(xen_lab):
    run, root, fake = xen_lab["run"], str(xen_lab["root"]), xen_lab["fake"]
    fake.set([running()], linger_calls=1)
    forced = run("guest.stop", "--name", "guest-01", "--root", root, "--force")
    assert forced.returncode == 0 and "guest-01 destroyed" in forced.stdout
    assert "destroy guest-01" in fake.calls() and "shutdown -w guest-01" not in fake.calls()

    fake.set([running()], shutdown_hangs=True)
    started = time.monotonic()
    hung = run("guest.stop", "--name", "guest-01", "--root", root, "--timeout", "2")
    assert time.monotonic() - started < 30
    assert hung.returncode == 1, hung.stdout + hung.stderr
    assert "guest-01 did not shut down within 2 s" in hung.stderr
    assert "invoke guest.stop --name guest-01 --force" in hung.stderr
    bad = run("guest.stop", "--name", "guest-01", "--timeout", "soon")
    assert bad.returncode == 2 and "--timeout = 'soon'" in bad.stderr


@pytest.mark.slow
def test_a_shut_down_domain_nothing_removes_is_destroyed(xen_lab):
    """Seen in the rehearsal: a guest started by a systemd unit lost its watching xl process with
    the unit's cgroup; shut down, it stayed listed (---s--) for ever. stop destroys it, as the
    cfg's on_poweroff asks, after the usual teardown wait."""
    run, fake = xen_lab["run"], xen_lab["fake"]
    fake.set([running()], orphaned=True)
    stop = run("guest.stop", "--name", "guest-01", "--root", str(xen_lab["root"]))
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "no xl process removes the shut-down domain" in stop.stdout
    calls = fake.calls()
    assert calls.index("shutdown -w guest-01") < calls.index("destroy guest-01")
    assert [d["name"] for d in fake.state()["domains"]] == ["Domain-0"]


def test_a_paused_guest_is_unpaused_before_its_shutdown(xen_lab):
    run, fake = xen_lab["run"], xen_lab["fake"]
    fake.set([running(state="--p---")], linger_calls=0)
    stop = run("guest.stop", "--name", "guest-01", "--root", str(xen_lab["root"]))
    assert stop.returncode == 0, stop.stderr
    calls = fake.calls()
    assert calls.index("unpause guest-01") < calls.index("shutdown -w guest-01")


def test_restart_stops_and_starts_a_new_domain(xen_lab):
    run, fake = xen_lab["run"], xen_lab["fake"]
    fake.set([running()], linger_calls=2)
    dry = run("guest.restart", "--name", "guest-01", "--root", str(xen_lab["root"]), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would shut guest-01 down (xl shutdown -w, up to 120 s)" in dry.stdout
    assert "would start guest-01 (xl create" in dry.stdout
    assert fake.state()["domains"][1]["state"] == "-b----"
    assert not [c for c in fake.calls() if c.split()[0] in ("shutdown", "create", "destroy")]
    proc = run("guest.restart", "--name", "guest-01", "--root", str(xen_lab["root"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "guest-01 restarted" in proc.stdout
    assert [(d["name"], d["id"]) for d in fake.state()["domains"]] == [
        ("Domain-0", 0),
        ("guest-01", 5),
    ]


def test_pause_and_unpause(xen_lab):
    run, fake = xen_lab["run"], xen_lab["fake"]
    fake.set([running()])
    dry = run("guest.pause", "--name", "guest-01", "--dry-run")
    assert dry.returncode == 0 and "would pause guest-01 (xl pause, domain 1)" in dry.stdout
    assert fake.state()["domains"][1]["state"] == "-b----"
    assert run("guest.pause", "--name", "guest-01").returncode == 0
    assert fake.state()["domains"][1]["state"] == "-bp---"
    again = run("guest.pause", "--name", "guest-01")
    assert again.returncode == 0 and "is paused already: no changes" in again.stdout
    assert run("guest.unpause", "--name", "guest-01").returncode == 0
    assert fake.state()["domains"][1]["state"] == "-b----"
    assert "pause guest-01" in fake.calls() and "unpause guest-01" in fake.calls()


def test_console_execs_xl_console_and_says_how_to_leave(xen_lab):
    xen_lab["fake"].set([running()])
    proc = xen_lab["run"]("guest.console", "--name", "guest-01")
    assert proc.returncode == 0, proc.stderr
    assert "Ctrl-] leaves it" in proc.stderr
    assert proc.stdout.strip() == "console of guest-01"  # printed by the exec'd (fake) xl


def long_json(storage: Path) -> list:
    entries = json.loads((DATA / "xl-list-long.json").read_text())
    return [entries[0]]


def test_info_of_a_running_guest(xen_lab):
    xen_lab["fake"].set([running()], long=long_json(xen_lab["storage"]))
    proc = xen_lab["run"](
        "guest.info", "--name", "guest-01", "--root", str(xen_lab["root"]), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert (facts["state"], facts["flags"], facts["id"]) == ("blocked", "-b----", 1)
    assert (facts["memory_mib"], facts["vcpus"], facts["uptime_s"]) == (1024, 2, 754)
    assert facts["source"] == "xl list -l" and facts["boot"] == "pvgrub"
    disks = {
        d["vdev"]: (d["target"], d["backing"], d["writable"], d["cdrom"]) for d in facts["disks"]
    }
    assert disks["xvda2"] == (
        "/dev/VolumeGroupXen/guest-01-disk",
        "LV VolumeGroupXen/guest-01-disk",
        True,
        False,
    )
    assert disks["xvdc"][1:] == ("image file", False, True)
    assert facts["vifs"] == [
        {
            "devid": 0,
            "mac": "00:16:3e:3f:a7:7c",
            "ip": "192.0.2.2",
            "bridge": "xenbr0",
            "vif": "vif1.0",
        }
    ]
    text = xen_lab["run"]("guest.info", "--name", "guest-01", "--root", str(xen_lab["root"])).stdout
    assert "State     :  blocked (-b----: blocked)" in text
    assert "Uptime    :  0:12:34" in text
    assert "Network   :  00:16:3e:3f:a7:7c, 192.0.2.2 on xenbr0 as vif1.0" in text
    # Without xl list -l (sxp output, or an old xl) the cfg gives disks and network.
    xen_lab["fake"].set([running()], long=None)
    facts = json.loads(
        xen_lab["run"](
            "guest.info", "--name", "guest-01", "--root", str(xen_lab["root"]), "--json"
        ).stdout
    )
    assert facts["source"] == "the cfg" and facts["boot"] == "pvgrub"
    assert facts["vifs"][0]["mac"] == mac.derive("guest-01") and facts["vifs"][0]["vif"] == "vif1.0"
    assert [d["backing"] for d in facts["disks"]] == ["image file", "image file"]


def test_list_shows_configured_running_and_unknown_domains(xen_lab):
    root = xen_lab["root"]
    (root / "etc/xen/auto").mkdir(parents=True)
    (root / "etc/xen/auto/guest-01.cfg").symlink_to("../guest-01.cfg")
    stray = running("stray", 7, "--p---")
    xen_lab["fake"].set([running(), stray], long=long_json(xen_lab["storage"]))
    proc = xen_lab["run"]("guest.list", "--root", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert list(rows) == ["guest-01", "guest-02", "Domain-0", "stray"]
    one = rows["guest-01"]
    assert (one["state"], one["states"], one["ip"], one["mac"], one["autostart"], one["known"]) == (
        "blocked", ["blocked"], "192.0.2.2", "00:16:3e:3f:a7:7c", True, "site",
    )  # fmt: skip
    two = rows["guest-02"]
    assert (two["state"], two["id"], two["ip"], two["mac"], two["autostart"]) == (
        "stopped", None, "192.0.2.3", mac.derive("guest-02"), False,
    )  # fmt: skip
    assert rows["Domain-0"]["known"] == "dom0"
    assert (rows["stray"]["state"], rows["stray"]["known"]) == ("paused", "unknown")
    table = xen_lab["run"]("guest.list", "--root", str(root))
    assert table.returncode == 0 and "stopped" in table.stdout and "paused (--p---)" in table.stdout


def test_autostart_on_and_off(xen_lab):
    run, root = xen_lab["run"], xen_lab["root"]
    link = root / "etc/xen/auto/guest-01.cfg"
    dry = run("guest.autostart", "--name", "guest-01", "--on", "--root", str(root), "--dry-run")
    assert dry.returncode == 0 and not link.is_symlink()
    on = run("guest.autostart", "--name", "guest-01", "--on", "--root", str(root))
    assert on.returncode == 0, on.stderr
    assert link.is_symlink() and os.readlink(str(link)) == "../guest-01.cfg"
    again = run("guest.autostart", "--name", "guest-01", "--on", "--root", str(root))
    assert "autostart of guest-01 is on already" in again.stdout
    off = run("guest.autostart", "--name", "guest-01", "--off", "--root", str(root))
    assert off.returncode == 0 and not link.is_symlink()
    assert "guests.guest-01.autostart is true in the site config" in off.stdout
    none = run("guest.autostart", "--name", "guest-02", "--on", "--root", str(root))
    assert none.returncode == 1 and "invoke guest.build --name guest-02 makes it" in none.stderr
    both = run("guest.autostart", "--name", "guest-01", "--on", "--off", "--root", str(root))
    assert both.returncode == 2 and "exactly one of --on and --off" in both.stderr


# --- remove: exactly this guest's parts, on dir and on LVM storage --------------------------------
def everything(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def make_guest_files(root: Path, storage: Path, name: str, ip: str) -> None:
    """What guest.build leaves for `name` (without the minutes of a real build)."""
    folder = storage / name
    folder.mkdir(parents=True, exist_ok=True)
    for volume in ("disk.img", "swap.img"):
        with open(str(folder / volume), "wb") as fh:
            fh.truncate(16 << 20)
    state = root / "var/lib/xenlab/guests" / name
    state.mkdir(parents=True)
    for file in ("seed.iso", "root-password", "known_hosts"):
        (state / file).write_text(file)
    write_cfg(root, name, ip, [xen_cfg.Disk(str(folder / "disk.img"), "xvda2")])
    auto = root / "etc/xen/auto"
    auto.mkdir(parents=True, exist_ok=True)
    (auto / f"{name}.cfg").symlink_to(f"../{name}.cfg")


def test_remove_on_dir_storage(xen_lab):
    root, storage, run, fake = xen_lab["root"], xen_lab["storage"], xen_lab["run"], xen_lab["fake"]
    (root / "etc/xen/guest-01.cfg").unlink()
    make_guest_files(root, storage, "guest-01", "192.0.2.2")
    make_guest_files(root, storage, "guest-02", "192.0.2.3")
    fake.set([running(), running("guest-02", 2)], linger_calls=1)
    before_root, before_storage = everything(root), everything(storage)

    asked = run("guest.remove", "--name", "guest-01", "--root", str(root))
    assert asked.returncode == 0, asked.stderr
    for what in ("domain guest-01 (id 1, blocked)", f"{root}/etc/xen/auto/guest-01.cfg",
                 f"{root}/etc/xen/guest-01.cfg", f"{root}/var/lib/xenlab/guests/guest-01",
                 f"{storage}/guest-01"):  # fmt: skip
        assert f"would remove {what}" in asked.stdout
    assert "add --yes to remove these" in asked.stdout
    assert (everything(root), everything(storage)) == (before_root, before_storage)
    assert not any(c.startswith("destroy") for c in fake.calls())

    done = run("guest.remove", "--name", "guest-01", "--root", str(root), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "destroy guest-01" in fake.calls()
    assert [d["name"] for d in fake.state()["domains"]] == ["Domain-0", "guest-02"]
    left_root = [p for p in before_root if "guest-01" not in p]
    assert everything(root) == left_root
    assert everything(storage) == [p for p in before_storage if "guest-01" not in p]
    assert (storage / "guest-02/disk.img").stat().st_size == 16 << 20
    again = run("guest.remove", "--name", "guest-01", "--root", str(root), "--yes")
    assert again.returncode == 0 and "nothing of guest-01 is there: no changes" in again.stdout


def test_remove_without_xen_removes_the_files_and_says_there_is_no_domain(xen_lab):
    root, storage = xen_lab["root"], xen_lab["storage"]
    (root / "etc/xen/guest-01.cfg").unlink()
    make_guest_files(root, storage, "guest-01", "192.0.2.2")
    proc = xen_lab["run"]("guest.remove", "--name", "guest-01", "--root", str(root), "--yes",
                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Xen is not running here: there is no domain to destroy" in proc.stdout
    assert everything(storage) == [] and not (root / "etc/xen/guest-01.cfg").exists()


@pytest.fixture
def volume_group(loop_disk):
    device = loop_disk("1G")
    name = f"xllife{os.getpid()}"
    sh("pvcreate", "-q", "-y", device)
    sh("vgcreate", "-q", name, device)
    yield name


def lvs(vg: str) -> set:
    out = sh("lvs", "--reportformat", "json", "-o", "lv_name", vg).stdout
    return {row["lv_name"] for row in json.loads(out)["report"][0]["lv"]}


def test_remove_on_lvm_storage_removes_only_this_guests_lvs(tmp_path, volume_group):
    root = tmp_path / "root"
    root.mkdir()
    site = write_site(tmp_path, {"kind": "lvm", "volume_group": volume_group})
    # Inactive LVs (no device-mapper here): guest-01's, guest-02's and one whose name starts alike.
    for lv in (
        "guest-01-disk",
        "guest-01-swap",
        "guest-02-disk",
        "guest-02-swap",
        "guest-01-diskold",
    ):
        sh("lvcreate", "--driverloaded", "n", "--activate", "n", "--zero", "n", "--yes",
           "--name", lv, "--size", "8m", volume_group)  # fmt: skip
    write_cfg(
        root, "guest-01", "192.0.2.2", [xen_cfg.Disk(f"/dev/{volume_group}/guest-01-disk", "xvda2")]
    )
    fake = FakeXen(tmp_path)
    asked = invoke(
        "-f", str(site), "guest.remove", "--name", "guest-01", "--root", str(root), env=fake.env
    )
    assert asked.returncode == 0, asked.stderr
    assert f"would remove LV {volume_group}/guest-01-disk" in asked.stdout
    assert f"would remove LV {volume_group}/guest-01-swap" in asked.stdout
    assert "guest-01-diskold" not in asked.stdout
    assert len(lvs(volume_group)) == 5
    done = invoke("-f", str(site), "guest.remove", "--name", "guest-01", "--root", str(root), "--yes",
                  env=fake.env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert lvs(volume_group) == {"guest-02-disk", "guest-02-swap", "guest-01-diskold"}
    assert not (root / "etc/xen/guest-01.cfg").exists()


# --- guest.check against a guest stand-in: a namespace on the bridge with a real sshd -------------
@pytest.fixture
def guest_sshd(lab, tmp_path):
    """sshd in the guest's namespace on 192.0.2.2:22 with an ed25519 host key of its own; the
    known_hosts that guest.build would have recorded for it (NAME,IP KEY)."""
    if not Path(SSHD).exists():
        pytest.skip("sshd is not installed (Debian package openssh-server; ./setup --test)")
    guest = lab_with_guest(lab)
    key = tmp_path / "host_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@guest-01", "-f", str(key))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    proc = subprocess.Popen(
        ["ip", "netns", "exec", guest, SSHD, "-D", "-e", "-f", "/dev/null",
         "-o", f"HostKey={key}", "-o", "ListenAddress=192.0.2.2", "-o", "PidFile=none",
         "-o", "UsePAM=no", "-o", "PasswordAuthentication=no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for _ in range(50):
        if "192.0.2.2:22" in sh("ip", "netns", "exec", guest, "ss", "-ltn").stdout:
            break
        time.sleep(0.1)
    root = lab["root"]
    state = root / "var/lib/xenlab/guests/guest-01"
    state.mkdir(parents=True)
    public = Path(str(key) + ".pub").read_text().split()
    (state / "known_hosts").write_text(f"guest-01,192.0.2.2 {public[0]} {public[1]}\n")
    try:
        yield {"guest": guest, "known_hosts": state / "known_hosts", "key": key}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def check(lab, fake, *args):
    site = write_site(lab["root"].parent, {"kind": "dir", "dir": str(lab["root"].parent / "xen")})
    return invoke(
        "-f", str(site), "guest.check", "--name", "guest-01", "--root", str(lab["root"]),
        "--netns", lab["host"], "--json", *args, env=fake.env,
    )  # fmt: skip


def by_check(proc) -> dict:
    return {line["check"]: line for line in json.loads(proc.stdout)["checks"]}


def test_guest_check_passes_against_a_guest_stand_in(lab, guest_sshd, tmp_path):
    fake = FakeXen(tmp_path)
    fake.set([running()])  # domain 1: its vif is vif1.0, the stand-in's bridge port
    proc = check(lab, fake)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = by_check(proc)
    assert list(lines) == ["domain", "vif in bridge", "ping", "ssh host key"]
    assert all(line["ok"] for line in lines.values()), lines
    assert lines["vif in bridge"]["detail"] == "vif1.0 is a port of xenbr0 (up)"
    assert lines["ping"]["detail"] == "192.0.2.2 answers ping (3/3 replies)"
    assert (
        "has the host key guest.build recorded (ssh-ed25519 SHA256:"
        in lines["ssh host key"]["detail"]
    )


def test_guest_check_fails_on_another_host_key(lab, guest_sshd, tmp_path):
    other = tmp_path / "other"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    public = Path(str(other) + ".pub").read_text().split()
    guest_sshd["known_hosts"].write_text(f"guest-01,192.0.2.2 {public[0]} {public[1]}\n")
    fake = FakeXen(tmp_path)
    fake.set([running()])
    proc = check(lab, fake)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = by_check(proc)
    assert lines["ping"]["ok"] and not lines["ssh host key"]["ok"]
    assert "shows a host key (ssh-ed25519 SHA256:" in lines["ssh host key"]["detail"]
    assert "not the one guest.build recorded" in lines["ssh host key"]["detail"]
    assert "1 of 4 checks failed: ssh host key" in proc.stderr


def test_guest_check_fails_when_ping_is_dropped_or_the_link_is_down(lab, guest_sshd, tmp_path):
    fake = FakeXen(tmp_path)
    fake.set([running()])
    guest = guest_sshd["guest"]
    # The guest drops echo requests (as a firewall would); sshd still answers.
    sh("ip", "netns", "exec", guest, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    proc = check(lab, fake)
    assert proc.returncode == 1
    lines = by_check(proc)
    assert not lines["ping"]["ok"] and lines["ssh host key"]["ok"]
    assert lines["ping"]["detail"] == "192.0.2.2 does not answer ping (0/3 replies)"
    assert "invoke guest.console --name guest-01" in lines["ping"]["fix"]
    # The vif goes down: the bridge line says so, ping and ssh fail too.
    sh("ip", "netns", "exec", guest, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0")
    sh("ip", "-n", lab["host"], "link", "set", "vif1.0", "down")
    lines = by_check(check(lab, fake))
    assert lines["vif in bridge"]["detail"] == "vif1.0 is a port of xenbr0 but down"
    assert not lines["ping"]["ok"] and not lines["ssh host key"]["ok"]


def test_guest_check_without_the_domain(lab, guest_sshd, tmp_path):
    fake = FakeXen(tmp_path)
    fake.set([])
    lines = by_check(check(lab, fake))
    assert lines["domain"]["detail"] == "guest-01 is not running"
    assert lines["domain"]["fix"] == "invoke guest.start --name guest-01"
    assert not lines["vif in bridge"]["ok"]
    fake.set([running(state="--p---")])
    lines = by_check(check(lab, fake))
    assert lines["domain"]["fix"] == "invoke guest.unpause --name guest-01"


def test_from_guest_logs_in_as_the_admin_with_the_recorded_key():
    from pipeline.guest import connectivity

    argv = connectivity.ssh_argv(
        "192.0.2.2", Path("/k/known_hosts"), "admin", ["ping", "-c", "2", "192.0.2.1"], "/id"
    )
    assert argv[0] == "ssh" and "StrictHostKeyChecking=yes" in argv
    assert "UserKnownHostsFile=/k/known_hosts" in argv and "GlobalKnownHostsFile=/dev/null" in argv
    assert argv[argv.index("-i") + 1] == "/id" and "IdentitiesOnly=yes" in argv
    assert argv[-6:] == ["admin@192.0.2.2", "--", "ping", "-c", "2", "192.0.2.1"]
    probe = connectivity.ssh_argv("192.0.2.2", Path("/k/known_hosts"), "xenlab-check")
    assert "PubkeyAuthentication=no" in probe and probe[-1] == "xenlab-check@192.0.2.2"


def test_a_guest_paused_twice_is_unpaused_for_good(xen_lab):
    """Xen counts pauses (recorded on 4.17: paused twice, one xl unpause leaves it paused)."""
    run, fake = xen_lab["run"], xen_lab["fake"]
    fake.set([dict(running(state="--p---"), pauses=2)])
    proc = run("guest.unpause", "--name", "guest-01")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fake.calls().count("unpause guest-01") == 2
    assert fake.state()["domains"][1]["state"] == "------"
