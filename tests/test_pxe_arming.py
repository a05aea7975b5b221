"""pxe/arming.py and the pxe.arm / pxe.disarm / pxe.status tasks, on a state dir in tmp_path."""

import json
import stat

import pytest

from pipeline.errors import BadInput
from pipeline.runner import Runner
from pxe import arming
from tests.conftest import invoke


@pytest.mark.parametrize(
    "given",
    [
        "34:17:eb:f0:dc:e3",
        "34:17:EB:F0:DC:E3",
        "34-17-eb-f0-dc-e3",
        "3417.ebf0.dce3",
        "3417ebf0dce3",
    ],
)
def test_macs_are_normalised(given):
    assert arming.normalise_mac(given) == "34:17:eb:f0:dc:e3"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        None,
        "34:17:eb:f0:dc",
        "34:17:eb:f0:dc:e3:00",
        "34:17-eb:f0:dc:e3",
        "zz:17:eb:f0:dc:e3",
        "34:17:eb:f0:dc:e3\nx",
    ],
)
def test_bad_macs_name_the_flag(bad):
    with pytest.raises(BadInput) as err:
        arming.normalise_mac(bad)
    assert err.value.problems[0].field == "--mac"


def test_arm_disarm_round_trip(tmp_path):
    runner = Runner()
    assert arming.arm(runner, tmp_path / "state", "34:17:eb:f0:dc:e3")
    assert not arming.arm(runner, tmp_path / "state", "34:17:eb:f0:dc:e3")  # no change
    assert arming.is_armed(tmp_path / "state", "34:17:eb:f0:dc:e3")
    path = tmp_path / "state" / "armed.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert arming.disarm(runner, tmp_path / "state", "34:17:eb:f0:dc:e3")
    assert not arming.disarm(runner, tmp_path / "state", "34:17:eb:f0:dc:e3")
    assert arming.load(tmp_path / "state") == {}


def test_unreadable_state_means_nothing_armed(tmp_path):
    (tmp_path / "armed.json").write_text("[1, 2")
    assert arming.load(tmp_path) == {}
    (tmp_path / "armed.json").write_text("[1, 2]")
    assert arming.load(tmp_path) == {}


def env(tmp_path):
    return {"INVOKE_PXE_STATE_DIR": str(tmp_path / "state")}


def test_tasks(tmp_path):
    state = tmp_path / "state" / "armed.json"
    r = invoke("pxe.arm", "--mac", "34-17-EB-F0-DC-E3", env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "34:17:eb:f0:dc:e3 armed" in r.stdout
    assert list(json.loads(state.read_text())["armed"]) == ["34:17:eb:f0:dc:e3"]
    r = invoke("pxe.arm", "--mac", "34:17:eb:f0:dc:e3", env=env(tmp_path))
    assert r.returncode == 0 and "no changes" in r.stdout
    r = invoke("pxe.status", env=env(tmp_path))
    assert r.returncode == 0 and "34:17:eb:f0:dc:e3" in r.stdout and "armed" in r.stdout
    before = state.read_bytes()
    r = invoke("pxe.arm", "--mac", "52:54:00:00:00:01", "--dry-run", env=env(tmp_path))
    assert r.returncode == 0 and "would" in r.stdout
    assert state.read_bytes() == before
    r = invoke("pxe.disarm", "--mac", "34:17:eb:f0:dc:e3", env=env(tmp_path))
    assert r.returncode == 0 and "disarmed" in r.stdout
    assert json.loads(state.read_text())["armed"] == {}
    r = invoke("pxe.status", env=env(tmp_path))
    assert r.returncode == 0 and "nothing armed" in r.stdout


def test_task_with_root_writes_under_it(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    r = invoke("pxe.arm", "--mac", "34:17:eb:f0:dc:e3", "--root", str(root), env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (root / str(tmp_path / "state" / "armed.json").lstrip("/")).is_file()
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("args", [["--mac", "nonsense"], []])
def test_bad_or_missing_mac_is_exit_2_and_changes_nothing(tmp_path, args):
    r = invoke("pxe.arm", *args, env=env(tmp_path))
    assert r.returncode == 2
    assert "--mac" in r.stderr
    assert not (tmp_path / "state").exists()
