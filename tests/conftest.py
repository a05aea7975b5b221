"""Shared fixtures: real network namespaces and the invoke command line, cleaned up after each test."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable, List

import pytest

REPO = Path(__file__).resolve().parent.parent
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
