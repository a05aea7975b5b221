"""Cached debootstrap trees, and running commands in a chroot without leaking mounts or processes.

A tree is built in a temporary directory next to its cache entry and renamed into place only
when the build succeeded, so the cache never holds a half tree. Entries are keyed by a hash of
everything that went into them; a lock file keeps two concurrent builders of one entry apart.
"""

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from pipeline.checksums import file_digest
from pipeline.errors import Failed

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_key(*parts: object) -> str:
    """A short, stable hash of JSON-able `parts`."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file, made if missing) for the block's duration."""
    with open(str(path), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def chroot_argv(
    root: Path,
    argv: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    overlay: Optional[Tuple[Path, Path, Path]] = None,
    binds: Sequence[Tuple[Path, str]] = (),
    netns: bool = True,
) -> List[str]:
    """The command line that runs `argv` chrooted into `root` with a clean environment `env`.

    Everything happens in a private mount namespace and a new PID namespace: /proc, /sys, /dev
    (and /run/netns, so `ip netns` names work inside) are mounted for the command only, and are
    gone, with any process it left behind, when it exits. `overlay` = (lower, upper, work) mounts
    an overlay of those at `root` first, so the chroot writes into `upper` and `lower` stays as
    it is. `binds` are (outside path, path inside the chroot) pairs.
    """
    q = shlex.quote
    r = str(root)
    steps = []
    if overlay is not None:
        lower, upper, work = (str(p) for p in overlay)
        for p in (lower, upper, work):
            if any(c in p for c in ",:\\"):
                raise ValueError(f"overlay path {p!r} holds a ',', ':' or '\\'")
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        steps.append(f"mount -t overlay overlay -o {q(opts)} {q(r)}")
    steps += [
        f"mount -t proc proc {q(r + '/proc')}",
        f"mount --rbind /sys {q(r + '/sys')}",
        f"mount --rbind /dev {q(r + '/dev')}",
    ]
    if netns:
        steps.append(
            f"if [ -d /run/netns ]; then mkdir -p {q(r + '/run/netns')}"
            f" && mount --rbind /run/netns {q(r + '/run/netns')}; fi"
        )
    for outside, inside in binds:
        target = r + "/" + inside.lstrip("/")
        steps.append(f"mkdir -p {q(target)} && mount --bind {q(str(outside))} {q(target)}")
    clean: Dict[str, str] = {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    clean.update(env or {})
    env_args = " ".join(q(f"{k}={v}") for k, v in clean.items())
    command = " ".join(q(a) for a in argv)
    steps.append(f"exec env -i {env_args} chroot {q(r)} {command}")
    script = "set -e\n" + "\n".join(steps)
    return [
        "unshare", "--mount", "--propagation", "private", "--pid", "--kill-child",
        "sh", "-c", script,
    ]  # fmt: skip


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
