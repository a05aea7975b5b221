"""Cached debootstrap trees for the tests (pipeline/debootstrap.py builds them), and running a
command in one."""

import shlex
import subprocess
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from pipeline.chroot import cache_key, chroot_argv, locked
from pipeline.debootstrap import cached_dir, cached_root
from pipeline.errors import Failed

# What the tests use from here: the core's helpers, re-exported, and run_in_chroot.
__all__ = ["cache_key", "cached_dir", "cached_root", "chroot_argv", "locked", "run_in_chroot"]


def run_in_chroot(
    root: Path,
    argv: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    overlay: Optional[Tuple[Path, Path, Path]] = None,
    binds: Sequence[Tuple[Path, str]] = (),
    check: bool = True,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess:
    """Run `argv` in the chroot (see chroot_argv); raises Failed with its output when it fails."""
    line = chroot_argv(root, argv, env=env, overlay=overlay, binds=binds)
    proc = subprocess.run(
        line,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        shown = " ".join(shlex.quote(a) for a in argv)
        raise Failed(
            f"in chroot {root}: {shown} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc
