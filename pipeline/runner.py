"""The one place where side effects happen: files, commands and other changes, with --dry-run and --root.

Every change goes through a Runner. In dry-run it only says what it would do (files with their
diffs); otherwise it does it and remembers how to undo it, so a failure half-way can roll back
everything this run created.
"""

import difflib
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from pipeline.errors import Failed


def _silent(_: str) -> None:
    pass


# --- interrupts: SIGTERM and SIGHUP roll back as Ctrl-C does ---------------------------------------
# What systemd, a CI runner or `kill PID` sends is handled as SIGINT is: an exception in the main
# thread, so the transaction rolls back what the run did and the children (subprocess.run kills its
# child when the wait is interrupted) stop with it. During a rollback further signals are noted,
# not raised: an undo cut short would leave exactly the half-done state the rollback is undoing.
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP); what it did is rolled back."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


_deferring = [0]  # > 0 while a rollback runs
_deferred: List[int] = []


def _raise_interrupt(signum: int, _frame) -> None:
    if _deferring[0]:
        _deferred.append(signum)
        return
    raise Interrupted(signum)


@contextmanager
def interrupts_roll_back() -> Iterator[None]:
    """Inside: SIGINT, SIGTERM and SIGHUP raise Interrupted (a KeyboardInterrupt) in the main
    thread; the previous handlers come back afterwards. Elsewhere than the main thread: as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in INTERRUPTS}
    try:
        yield
    finally:
        # A signal that comes while the handlers are put back is not raised here (the work is
        # over): it is sent again once the previous handlers are back, which then act on it.
        with _signals_deferred() as arrived:
            seen = len(arrived)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            late = arrived[seen:]
        for signum in late[:1]:
            os.kill(os.getpid(), signum)


@contextmanager
def _signals_deferred() -> Iterator[List[int]]:
    """Signals that arrive inside are collected (and yielded), not raised."""
    _deferring[0] += 1
    start = len(_deferred)
    try:
        yield _deferred
    finally:
        _deferring[0] -= 1
        if not _deferring[0]:
            del _deferred[start:]


@dataclass
class Runner:
    dry_run: bool = False
    root: Path = Path("/")
    say: Callable[[str], None] = _silent
    changes: List[str] = field(default_factory=list)
    _undo: List[Tuple[str, Callable[[], None]]] = field(default_factory=list)

    def path(self, path: str) -> Path:
        """Where an absolute system path lives under --root."""
        return self.root / str(path).lstrip("/")

    def change(
        self,
        description: str,
        do: Callable[[], None],
        undo: Optional[Callable[[], None]] = None,
        *,
        partial: bool = False,
    ) -> None:
        """One change to the system: described always, done unless dry-run, undone on rollback.

        `partial=True` is for a `do` that can half-succeed (a tool that fails or is interrupted
        after it wrote something: sfdisk, lvcreate, a file): its `undo` is registered before `do`
        runs, so a rollback also runs it when `do` raised, and it must cope with any state from
        "nothing done" to "all done".
        """
        self.changes.append(description)
        if self.dry_run:
            self.say(f"would {description}")
            return
        if undo is not None and partial:
            self._undo.append((description, undo))
            do()
        else:
            do()
            if undo is not None:
                self._undo.append((description, undo))
        self.say(description)

    def write_file(self, path: str, text: str, mode: int = 0o644, secret: bool = False) -> bool:
        """Write `text` to `path` (under --root) if it differs; True when it changed (or would).

        A dry run shows the diff, unless the text is `secret`.
        """
        return self._write(self.path(path), text.encode(), mode, secret, text=True)

    def write_bytes(
        self,
        path: str,
        data: bytes,
        mode: int = 0o644,
        secret: bool = False,
        *,
        under_root: bool = True,
    ) -> bool:
        """Write binary `data` to `path` as write_file does; a dry run says its size, no diff.

        `under_root=False`: `path` is where the file goes whatever --root says (a file the user
        named, such as a drawing), not a system path.
        """
        target = self.path(path) if under_root else Path(path)
        return self._write(target, data, mode, secret, text=False)

    def _write(self, target: Path, data: bytes, mode: int, secret: bool, text: bool) -> bool:
        """The one file writer: unchanged -> False; dry run -> said; else atomic, undoable."""
        old = target.read_bytes() if target.is_file() else None
        old_mode = target.stat().st_mode & 0o7777 if old is not None else None
        if old == data and old_mode == mode:
            return False
        size = "" if text else f"{len(data)} bytes, "
        if self.dry_run:
            self.changes.append(f"write {target}")
            self.say(f"would write {target} ({size}mode {mode:o})")
            if text and not secret:
                shown = diff((old or b"").decode(errors="replace"), data.decode(), str(target))
                self.say(shown or "(mode only)")
            return True
        created = _missing_parents(target)

        def write() -> None:
            try:
                _atomic_write(target, data, mode)
            except OSError as exc:
                _remove_empty(created)
                raise Failed(f"cannot write {target}: {exc.strerror or exc}") from None

        def undo() -> None:  # also after a write that never happened or was cut short
            if old is None:
                if target.is_file():
                    target.unlink()
                _remove_empty(created)
            elif target.read_bytes() != old or target.stat().st_mode & 0o7777 != old_mode:
                _atomic_write(target, old, old_mode or 0o644)

        self.change(
            f"wrote {target}" + (f" ({len(data)} bytes)" if not text else ""),
            write,
            undo,
            partial=True,
        )
        return True

    def run(self, argv: Sequence[str], *, check: bool = True, changes: bool = True) -> str:
        """Run a command; its stdout. `changes=False` marks a read-only command that runs in dry-run too."""
        line = " ".join(shlex.quote(a) for a in argv)
        if changes and self.dry_run:
            self.changes.append(line)
            self.say(f"would run: {line}")
            return ""
        proc = subprocess.run(list(argv), capture_output=True, text=True)
        if check:
            checked(proc, line)
        return proc.stdout

    def rollback(self) -> List[str]:
        """Undo what this run did, newest first; the descriptions of undos that failed.

        Not to be interrupted: a signal that arrives meanwhile is said and the rollback goes on.
        """
        failed = []
        with _signals_deferred() as arrived:
            seen = len(arrived)
            while self._undo:
                description, undo = self._undo.pop()
                try:
                    undo()
                    self.say(f"rolled back: {description}")
                except Exception as exc:  # keep undoing the rest
                    failed.append(f"{description}: {exc}")
                for signum in arrived[seen:]:
                    self.say(
                        f"{signal.Signals(signum).name} during the rollback: finishing it first"
                    )
                seen = len(arrived)
        return failed

    @contextmanager
    def transaction(self) -> Iterator["Runner"]:
        """Roll back everything done inside when anything inside raises."""
        try:
            yield self
        except BaseException:
            for left in self.rollback():
                # The original error still propagates; what could not be undone must be seen.
                self.say(f"could not roll back: {left}")
            raise
        self._undo.clear()


def checked(
    proc: subprocess.CompletedProcess, what: Optional[str] = None
) -> subprocess.CompletedProcess:
    """`proc` if it exited 0; otherwise Failed naming the command (`what`, else its argv), the exit
    code and what it said on stderr (stdout when stderr is empty)."""
    if proc.returncode == 0:
        return proc
    shown = what or " ".join(shlex.quote(str(a)) for a in proc.args)
    said = proc.stderr or proc.stdout or ""
    if isinstance(said, bytes):
        said = said.decode(errors="replace")
    said = said.strip()
    raise Failed(
        f"{shown} exited {proc.returncode}"
        + (f":\n{said}" if "\n" in said else f": {said}" if said else "")
    )


def run_checked(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True, **kwargs), through `checked`."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return checked(subprocess.run(list(argv), **kwargs))


def diff(old: str, new: str, name: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), name, name
        )
    )


def _missing_parents(path: Path) -> List[Path]:
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return list(reversed(missing))


def _remove_empty(dirs: List[Path]) -> None:
    """Remove directories a write created (listed top-down), deepest first, if still empty."""
    for d in reversed(dirs):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _atomic_write(target: Path, data: bytes, mode: int) -> None:
    """`data` into `target` with `mode` from the first byte on (a secret is never readable by
    others), through a temporary file beside it renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
