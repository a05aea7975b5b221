"""The runner: files under --root, dry-run that changes nothing, rollback of what a run did."""

import os

import pytest

from pipeline.errors import Failed
from pipeline.runner import Runner


def test_root_relocates_absolute_paths(tmp_path):
    r = Runner(root=tmp_path)
    assert r.path("/etc/netplan/x.yaml") == tmp_path / "etc/netplan/x.yaml"


def test_write_creates_with_mode_and_is_idempotent(tmp_path):
    r = Runner(root=tmp_path)
    assert r.write_file("/etc/a/b.conf", "x = 1\n", mode=0o600) is True
    target = tmp_path / "etc/a/b.conf"
    assert target.read_text() == "x = 1\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert r.write_file("/etc/a/b.conf", "x = 1\n", mode=0o600) is False
    assert r.changes == [f"wrote {target}"]


def test_mode_change_alone_counts(tmp_path):
    r = Runner(root=tmp_path)
    r.write_file("/f", "same\n", mode=0o644)
    assert r.write_file("/f", "same\n", mode=0o600) is True
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600


def test_dry_run_shows_a_diff_and_writes_nothing(tmp_path):
    lines = []
    (tmp_path / "f").write_text("old\n")
    r = Runner(root=tmp_path, dry_run=True, say=lines.append)
    assert r.write_file("/f", "new\n", mode=0o644) is True
    assert (tmp_path / "f").read_text() == "old\n"
    text = "\n".join(lines)
    assert "-old" in text and "+new" in text
    r.write_file("/g/h", "secret\n", secret=True)
    assert not (tmp_path / "g").exists()
    assert "secret" not in "\n".join(lines)


def test_rollback_restores_and_removes(tmp_path):
    (tmp_path / "keep").write_text("original\n")
    r = Runner(root=tmp_path)
    with pytest.raises(RuntimeError):
        with r.transaction():
            r.write_file("/keep", "changed\n")
            r.write_file("/new/dir/file", "x\n")
            raise RuntimeError("half-way")
    assert (tmp_path / "keep").read_text() == "original\n"
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(tmp_path)) == ["keep"]


def test_changes_roll_back_newest_first():
    order = []
    r = Runner()
    with pytest.raises(Failed):
        with r.transaction():
            r.change("one", lambda: order.append("do 1"), lambda: order.append("undo 1"))
            r.change("two", lambda: order.append("do 2"), lambda: order.append("undo 2"))
            raise Failed("boom")
    assert order == ["do 1", "do 2", "undo 2", "undo 1"]


def test_committed_transaction_is_not_undone_later():
    order = []
    r = Runner()
    with r.transaction():
        r.change("one", lambda: order.append("do"), lambda: order.append("undo"))
    assert r.rollback() == []
    assert order == ["do"]


def test_dry_run_change_does_nothing():
    done = []
    r = Runner(dry_run=True)
    r.change("create bridge", lambda: done.append(1))
    assert done == [] and r.changes == ["create bridge"]


def test_run_reports_failure_with_stderr(tmp_path):
    r = Runner()
    assert r.run(["echo", "hi"]) == "hi\n"
    with pytest.raises(Failed, match="exited 3: bad thing"):
        r.run(["sh", "-c", "echo bad thing >&2; exit 3"])


def test_run_in_dry_run_only_prints_changing_commands():
    lines = []
    r = Runner(dry_run=True, say=lines.append)
    assert r.run(["touch", "/nonexistent/x"]) == ""
    assert lines == ["would run: touch /nonexistent/x"]
    assert r.run(["echo", "read"], changes=False) == "read\n"


def test_an_undo_that_fails_is_reported_and_the_rest_still_undone():
    said = []
    runner = Runner(say=said.append)
    undone = []

    def broken_undo():
        raise OSError("device busy")

    with pytest.raises(RuntimeError):
        with runner.transaction():
            runner.change("first", lambda: None, lambda: undone.append("first"))
            runner.change("second", lambda: None, broken_undo)
            raise RuntimeError("step three failed")
    assert undone == ["first"]
    assert any("could not roll back: second: device busy" in line for line in said), said
