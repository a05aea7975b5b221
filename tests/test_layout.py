"""The import rule of the layout (README, Layout), read from the code's own imports with `ast`.

The core (pipeline/*.py) imports nothing of the other folders; netlink/ and pxe/ use only the
core; cloudinit/ is a leaf; a guest's steps use those; the host's steps may also run a guest's
(host.provision builds them); the lab's read-only views may read everything; the fleet (the same
tasks on many hosts over SSH) may use all of those and nothing uses it but tasks.py; only tasks.py
knows Invoke (pipeline/fleet uses Fabric, which is built on it), and nothing imports tasks.py or
the tests.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from tests.conftest import REPO

# room -> the rooms it may import (itself always)
ALLOWED = {
    "core": set(),
    "netlink": {"core"},
    "pxe": {"core"},
    "cloudinit": set(),
    "guest": {"core", "netlink", "pxe", "cloudinit"},
    "host": {"core", "netlink", "pxe", "cloudinit", "guest"},
    "lab": {"core", "netlink", "pxe", "cloudinit", "guest", "host"},
    "fleet": {"core", "netlink", "pxe", "cloudinit", "guest", "host", "lab"},
    "tasks": {"core", "netlink", "pxe", "cloudinit", "guest", "host", "lab", "fleet"},
}
ROOMS = ("pipeline", "netlink", "pxe", "cloudinit")


def room_of_module(dotted: str):
    """The room a project module lives in, or None for a module that is not the project's."""
    parts = dotted.split(".")
    if parts[0] == "pipeline":
        if len(parts) > 1 and parts[1] in ("host", "guest", "lab", "fleet"):
            return parts[1]
        return "core"
    if parts[0] in ("netlink", "pxe", "cloudinit", "tasks", "tests"):
        return parts[0]
    return None


def room_of_file(rel: Path) -> str:
    dotted = ".".join(rel.with_suffix("").parts)
    return room_of_module(dotted)


def imported(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """(line, module) of every absolute import, at any depth (imports inside functions too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pipeline import host` names the submodule, not just the package
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, "." * node.level + (node.module or "")


def violations(files: Dict[Path, str]) -> List[str]:
    """Every import in `files` ({path relative to the repo: source}) that breaks the rule."""
    found = []
    for rel, source in sorted(files.items()):
        mine = room_of_file(rel)
        for line, module in imported(ast.parse(source, str(rel))):
            if module.startswith("."):
                found.append(f"{rel}:{line}: relative import {module}: import by the full name")
                continue
            theirs = room_of_module(module)
            # `from pipeline import mac` reads as pipeline.mac (core); pipeline.host as the room
            if theirs is None or theirs == mine:
                continue
            if theirs not in ALLOWED.get(mine, set()):
                found.append(f"{rel}:{line}: {mine} imports {module} ({theirs})")
    return found


def project_files() -> Dict[Path, str]:
    files = {Path("tasks.py"): (REPO / "tasks.py").read_text()}
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")):
            files[path.relative_to(REPO)] = path.read_text()
    return files


def test_the_tree_keeps_the_import_rule():
    files = project_files()
    assert Path("pipeline/guest/build.py") in files and Path("pipeline/host/network.py") in files
    assert violations(files) == []


def test_the_rule_catches_each_kind_of_breach():
    bad = {
        Path("pipeline/units.py"): "from netlink import bridge\n",
        Path("cloudinit/seed.py"): "def f():\n    from pipeline.errors import Failed\n",
        Path("netlink/bridge.py"): "import pxe.dhcp\n",
        Path("pxe/serve.py"): "from pipeline.guest import image\n",
        Path("pipeline/guest/build.py"): "from pipeline.host import storage\n",
        Path("pipeline/host/xen.py"): "from pipeline import lab\n",
        Path("pipeline/lab/read.py"): "import tasks\n",
        Path("pipeline/runner.py"): "from . import errors\n",
    }
    found = violations(bad)
    assert len(found) == len(bad), found
    for rel in bad:
        assert any(line.startswith(f"{rel}:") for line in found), rel


def test_allowed_imports_pass():
    good = {
        Path(
            "pipeline/host/provision.py"
        ): "from pipeline.guest import build\nfrom pxe import arming\n",
        Path(
            "pipeline/lab/report.py"
        ): "from pipeline import lvm\nfrom pipeline.lab.read import Lab\n",
        Path("netlink/bridge.py"): "from pipeline.runner import Runner\nimport pyroute2\n",
        Path("tasks.py"): "from pipeline.lab import diagram\nfrom invoke import task\n",
    }
    assert violations(good) == []


def test_the_fleet_uses_the_rest_and_only_tasks_uses_the_fleet():
    assert room_of_module("pipeline.fleet.run") == "fleet"
    good = {
        Path("pipeline/fleet/deploy.py"): "from pipeline.host import check\nimport fabric\n",
        Path(
            "pipeline/fleet/status.py"
        ): "from pipeline.lab import read\nfrom pxe import preseed\n",
        Path("tasks.py"): "from pipeline.fleet import inventory\n",
    }
    assert violations(good) == []
    bad = {
        Path("pipeline/lab/read.py"): "from pipeline.fleet import run\n",
        Path("pipeline/host/provision.py"): "from pipeline.fleet import deploy\n",
        Path("pipeline/fleet/run.py"): "import tasks\n",
    }
    assert len(violations(bad)) == len(bad), violations(bad)


def test_only_tasks_knows_invoke():
    users = [
        str(rel)
        for rel, source in project_files().items()
        for _, module in imported(ast.parse(source))
        if module.split(".")[0] == "invoke" and rel != Path("tasks.py")
    ]
    assert users == []
