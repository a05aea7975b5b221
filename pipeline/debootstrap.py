"""Debootstrapped trees, cached by their inputs: built once per machine, shared by every user.

A tree is built in a temporary directory next to its cache entry and renamed into place only
when the build succeeded, so the cache never holds a half tree; a lock file beside the entry
keeps two concurrent builders of one entry apart (pipeline.chroot.locked).
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipeline.checksums import file_digest
from pipeline.chroot import cache_key, locked
from pipeline.errors import Failed


def cached_dir(entry: Path, build: Callable[[Path], None]) -> Path:
    """`entry` if it exists; otherwise `build(tmp)` into a fresh directory next to it, then renamed.

    A failing build leaves nothing behind: its temporary directory is removed.
    """
    entry = Path(entry)
    if entry.is_dir():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with locked(entry.parent / f".{entry.name}.lock"):
        if entry.is_dir():  # built by someone else while we waited
            return entry
        tmp = Path(tempfile.mkdtemp(dir=str(entry.parent), prefix=f".{entry.name}.tmp-"))
        try:
            build(tmp)
            os.rename(str(tmp), str(entry))
        except BaseException:
            shutil.rmtree(str(tmp), ignore_errors=True)
            raise
    return entry


def cached_root(
    release: str,
    mirror: str,
    cache_dir: Path,
    variant: str = "minbase",
    components: Sequence[str] = ("main",),
    include: Sequence[str] = (),
    keyring: Optional[Path] = None,
) -> Path:
    """A debootstrapped `release` from `mirror` under `cache_dir`, built once per set of inputs."""
    components = list(components)
    include = sorted(include)
    key = cache_key(
        "debootstrap-1",
        release,
        mirror,
        variant,
        components,
        include,
        file_digest(keyring) if keyring else None,
    )
    argv = ["debootstrap", f"--variant={variant}"]
    if components:
        argv.append(f"--components={','.join(components)}")
    if include:
        argv.append(f"--include={','.join(include)}")
    if keyring:
        argv.append(f"--keyring={keyring}")

    def build(tmp: Path) -> None:
        root = tmp / "root"
        proc = subprocess.run(
            argv + [release, str(root), mirror],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-20:])
            log = root / "debootstrap" / "debootstrap.log"
            if log.is_file():
                tail += "\n--- debootstrap.log (tail) ---\n"
                tail += "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise Failed(f"debootstrap {release} from {mirror} exited {proc.returncode}:\n{tail}")

    entry = cached_dir(Path(cache_dir) / f"{release}-{variant}-{key}", build)
    return entry / "root"
