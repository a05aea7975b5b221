"""The host tasks run on Ubuntu 18.04's Python 3.8: every module must parse as 3.8 and pass ruff (py38)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = sorted(
    p for p in REPO.rglob("*.py") if not ({".venv", ".git"} & set(p.relative_to(REPO).parts))
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_parses_as_python_3_8(path: Path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


def test_ruff_with_py38_target_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (./setup --test installs it)")
    proc = subprocess.run([ruff, "check", "--no-cache", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
