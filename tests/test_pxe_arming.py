"""pxe/arming.py and the pxe.arm / pxe.disarm / pxe.status tasks, on a state dir in tmp_path."""

import json
import re
import stat

import pytest

from pipeline.errors import BadInput, Failed
from pipeline.runner import Runner
from pxe import arming, dhcp_server
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


@pytest.mark.parametrize("damaged", ['{"armed": {"34:17:eb:f0:dc:e3": {"armed_at"', "[1, 2]", ""])
def test_a_damaged_state_file_is_refused_not_taken_for_nothing_armed(tmp_path, damaged):
    (tmp_path / "armed.json").write_text(damaged)
    with pytest.raises(Failed) as err:
        arming.load(tmp_path)
    assert str(tmp_path / "armed.json") in str(err.value)
    with pytest.raises(Failed):
        arming.arm(Runner(), tmp_path, "52:54:00:00:00:01")
    assert (tmp_path / "armed.json").read_text() == damaged  # never rewritten


def test_a_truncated_armed_json_stops_the_tasks_and_keeps_the_file(tmp_path):
    """A crash or a full disk cut armed.json: status does not say "nothing armed", and arm does
    not silently drop every other armed MAC."""
    armed_here(tmp_path)
    armed_here(tmp_path, "52:54:00:00:00:02")
    cut = state_file(tmp_path).read_text()[:40]
    state_file(tmp_path).write_text(cut)
    status = invoke("pxe.status", env=env(tmp_path))
    assert status.returncode == 1, status.stdout
    assert str(state_file(tmp_path)) in status.stderr and "nothing armed" not in status.stdout
    again = invoke("pxe.arm", "--mac", "52:54:00:00:00:03", env=env(tmp_path))
    assert again.returncode == 1 and str(state_file(tmp_path)) in again.stderr
    assert state_file(tmp_path).read_text() == cut


def test_each_arming_has_its_own_token_and_its_preseed_is_served_once(tmp_path):
    runner = Runner()
    state = tmp_path / "state"
    assert arming.arm(runner, state, MAC)
    token = arming.token_of(state, MAC)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert arming.check_callback(state, MAC, token, "10.0.0.5") is not None  # nothing served
    assert arming.claim_preseed(runner, state, MAC, "10.0.0.5") is None  # the first fetch
    refused = arming.claim_preseed(runner, state, MAC, "10.0.0.9")
    assert refused["served_to"] == "10.0.0.5"
    assert arming.load(state)[MAC]["refused"][-1]["from"] == "10.0.0.9"
    assert arming.check_callback(state, MAC, token, "10.0.0.5") is None
    assert "token" in arming.check_callback(state, MAC, "x" + token[1:], "10.0.0.5")
    assert "token" in arming.check_callback(state, MAC, "", "10.0.0.5")
    assert "10.0.0.5" in arming.check_callback(state, MAC, token, "10.0.0.9")
    # arming it again after its preseed was served: a new arming, a new token, served once more
    assert arming.arm(runner, state, MAC)
    assert arming.token_of(state, MAC) != token
    assert arming.claim_preseed(runner, state, MAC, "10.0.0.5") is None


def env(tmp_path):
    return {"INVOKE_PXE_STATE_DIR": str(tmp_path / "state")}


MAC = "34:17:eb:f0:dc:e3"


def state_file(tmp_path):
    return tmp_path / "state" / "armed.json"


def armed_here(tmp_path, mac=MAC) -> None:
    """`mac` armed in the state dir the tasks read, the library's way (no task run)."""
    assert arming.arm(Runner(), tmp_path / "state", mac)


def status_rows(stdout: str, state: bool = False) -> dict:
    """pxe.status's table as {mac: [install, armed at, lease]} (`state=True`: and the state)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("\u2502")[1:-1]]
        if cells and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", cells[0]):
            rows[cells[0]] = cells[1:] if state else cells[1:4]
    return rows


def test_arm_task_normalises_the_mac_and_records_it(tmp_path):
    r = invoke("pxe.arm", "--mac", "34-17-EB-F0-DC-E3", env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"{MAC} armed" in r.stdout
    assert list(json.loads(state_file(tmp_path).read_text())["armed"]) == [MAC]


def test_arming_an_armed_mac_again_changes_nothing(tmp_path):
    armed_here(tmp_path)
    before = state_file(tmp_path).read_bytes()
    r = invoke("pxe.arm", "--mac", MAC, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"{MAC} was already armed: no changes" in r.stdout
    assert state_file(tmp_path).read_bytes() == before


def test_arm_dry_run_says_what_it_would_do_and_writes_nothing(tmp_path):
    armed_here(tmp_path)
    before = state_file(tmp_path).read_bytes()
    r = invoke("pxe.arm", "--mac", "52:54:00:00:00:01", "--dry-run", env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "52:54:00:00:00:01 would be armed" in r.stdout
    assert state_file(tmp_path).read_bytes() == before


def test_disarm_task_removes_the_mac(tmp_path):
    armed_here(tmp_path)
    r = invoke("pxe.disarm", "--mac", MAC, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"{MAC} disarmed" in r.stdout
    assert json.loads(state_file(tmp_path).read_text())["armed"] == {}


def test_disarming_a_mac_that_is_not_armed_changes_nothing(tmp_path):
    r = invoke("pxe.disarm", "--mac", MAC, env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"{MAC} was not armed: no changes" in r.stdout
    assert not (tmp_path / "state").exists()


def test_status_lists_an_armed_mac_with_when_it_was_armed(tmp_path):
    armed_here(tmp_path)
    r = invoke("pxe.status", env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    when = arming.load(tmp_path / "state")[MAC]["armed_at"]
    assert status_rows(r.stdout) == {MAC: ["armed", when, "-"]}


def test_status_shows_the_address_a_host_leased(tmp_path):
    leases = dhcp_server.Leases(
        "10.77.0.50", "10.77.0.60", dhcp_server.leases_file(tmp_path / "state"), 3600
    )
    assert leases.commit("52:54:00:77:00:10", "10.77.0.51")  # as pxe.serve --mode dhcp does
    armed_here(tmp_path)
    r = invoke("pxe.status", env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = status_rows(r.stdout)
    assert rows["52:54:00:77:00:10"] == ["-", "-", "10.77.0.51"]
    assert rows[MAC][0] == "armed" and rows[MAC][2] == "-"


def test_status_with_nothing_armed_and_no_leases_says_so(tmp_path):
    r = invoke("pxe.status", env=env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"nothing armed, no leases (state in {tmp_path / 'state'})" in r.stdout


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
