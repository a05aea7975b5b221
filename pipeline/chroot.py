"""Cache keys and locks for cached builds, and the command line that runs a command in a chroot
without leaking mounts or processes.

Cache entries are keyed by a hash of everything that went into them; a lock file keeps two
concurrent builders of one entry apart.
"""

import fcntl
import hashlib
import json
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_key(*parts: object) -> str:
    """A short, stable hash of JSON-able `parts`."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def locked(path: Path, on_wait: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file, made if missing) for the block's duration;
    `on_wait` is called first when someone else holds it (to say why this waits)."""
    with open(str(path), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def chroot_command(root: Path, argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> str:
    """The shell command that runs `argv` chrooted into `root` with a clean environment: `env`
    over a PATH, HOME and LANG of the chroot's own (nothing of the caller's leaks in)."""
    q = shlex.quote
    clean: Dict[str, str] = {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    clean.update(env or {})
    env_args = " ".join(q(f"{k}={v}") for k, v in clean.items())
    return f"env -i {env_args} chroot {q(str(root))} {' '.join(q(a) for a in argv)}"


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
    steps.append("exec " + chroot_command(root, argv, env))
    script = "set -e\n" + "\n".join(steps)
    return [
        "unshare", "--mount", "--propagation", "private", "--pid", "--kill-child",
        "sh", "-c", script,
    ]  # fmt: skip
