"""The README's opening commands stay true: the tasks they name exist, CI runs the same test command."""

import json
import re

from tests.conftest import REPO, invoke


def opening_commands():
    block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_setup_and_test_commands():
    setup_and_run, tests = opening_commands()
    assert setup_and_run.startswith("./setup && .venv/bin/invoke ")
    assert tests.startswith("./setup --test && ")


def test_the_main_job_is_a_listed_task():
    setup_and_run, _ = opening_commands()
    task = setup_and_run.split(".venv/bin/invoke ")[1].split()[0]
    listed = invoke("--list").stdout
    assert re.search(rf"^\s+{re.escape(task)}\s", listed, re.M), listed


def test_ci_runs_the_readme_test_command():
    _, tests = opening_commands()
    setup, command = [part.strip() for part in tests.split("&&")]
    ci = (REPO / ".ci/run").read_text()
    assert setup in ci
    assert f"exec {command}" in ci


def test_only_real_tasks_are_listed():
    """Every listed task has a docstring of its own and a --help that works."""
    listed = json.loads(invoke("--list", "--list-format=json").stdout)
    names = [
        f"{collection['name']}.{t['name']}"
        for collection in listed["collections"]
        for t in collection["tasks"]
    ]
    assert "host.network" in names, listed
    for name in names:
        r = invoke("--help", name)
        assert r.returncode == 0 and "Docstring:" in r.stdout, (name, r.stdout)
        # The other order a user types: no required argument may swallow --help as its value.
        r = invoke(name, "--help")
        assert r.returncode == 0 and "Docstring:" in r.stdout, (name, r.stdout, r.stderr)
