"""fleet.run: one xenlab task on every host at once, each with its own site file.

`on_hosts` is the one place where hosts are worked on in parallel: a thread per host (at most
fleet.parallel at once), each with its own connection; a host that fails or cannot be reached
gives its result and the others go on. `invoke_line` is the command run on a host: the task of
the xenlab that fleet.deploy installed (its invoke.yaml is the host's site file).
"""

import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pipeline.errors import BadInput
from pipeline.fleet import connect
from pipeline.fleet.inventory import Fleet, Member
from pxe.preseed import APP_DIR

INVOKE = f"{APP_DIR}/.venv/bin/invoke"
BAD_INPUT = 2  # a task's exit code for bad input (pipeline.errors.BadInput)
COLUMNS = 120  # the width the hosts' tables are drawn for (there is no terminal to ask)


@dataclass
class HostResult:
    host: str
    status: str  # ok, failed, bad input, unreachable, host key refused, login refused; or a verb
    exit_code: Optional[int]  # the remote command's, None when it never ran
    output: str  # what it printed (stdout, then stderr), or why it did not run
    seconds: float
    data: Any = None  # what a caller made of the output (fleet.status: the parsed JSON)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def check_task(task: str, known: Sequence[str]) -> str:
    """A task fleet.run may run on a host: one of this xenlab's, and not a fleet.* one."""
    if task is None or task not in known or task.startswith("fleet."):
        raise BadInput("TASK", task, "is not a xenlab task to run on the hosts, such as host.check")
    return task


def invoke_words(task: str, args: Sequence[str] = ()) -> List[str]:
    """`invoke TASK ARGS` of the host's xenlab; its tables as wide as a host's block here."""
    return ["env", f"COLUMNS={COLUMNS}", INVOKE, "--search-root", APP_DIR, task, *args]


def invoke_line(member: Member, task: str, args: Sequence[str] = ()) -> str:
    """The shell line that runs `invoke TASK ARGS` of the host's xenlab, as root."""
    return as_root(member, " ".join(shlex.quote(w) for w in invoke_words(task, args)))


def as_root(member: Member, line: str) -> str:
    """`line` as root: as it is for root, else through sudo -n (no password prompt to hang on)."""
    if member.user == "root":
        return line
    return "sudo -n sh -c " + shlex.quote(line)


class Lines:
    """A stream for Fabric's out_stream/err_stream: whole lines to `say`, prefixed by the host."""

    def __init__(self, host: str, say: Callable[[str], None]):
        self.host, self.say, self.buf = host, say, ""

    def write(self, text: str) -> None:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            self.say(f"{self.host} | {line}")

    def flush(self) -> None:
        pass


def on_connection(
    fleet: Fleet, member: Member, work: Callable[[Any], Tuple[str, Optional[int], str, Any]]
) -> HostResult:
    """`work(connection)` -> (status, exit code, output, data) on `member`, timed; a host that
    cannot be reached or refuses us is a result of its own (connect.why_not), not an error."""
    started = time.monotonic()
    conn = connect.connection(member, fleet.connect_timeout, fleet.accept_new_host_keys)
    try:
        status, code, output, data = work(conn)
    except Exception as exc:  # noqa: BLE001 - sorted by why_not; anything else is re-raised
        found = connect.why_not(exc)
        if found is None:
            raise
        (status, output), code, data = found, None, None
    finally:
        conn.close()
    return HostResult(member.name, status, code, output, time.monotonic() - started, data)


def status_of(code: int) -> str:
    return "ok" if code == 0 else ("bad input" if code == BAD_INPUT else "failed")


def run_on(
    fleet: Fleet, member: Member, line: str, say: Optional[Callable[[str], None]] = None
) -> HostResult:
    """Run `line` on `member` and wait; `say` gets its output line by line as it comes."""

    def work(conn) -> Tuple[str, Optional[int], str, Any]:
        streams: Dict[str, Any] = {}
        if say is not None:
            streams = {"out_stream": Lines(member.name, say), "err_stream": Lines(member.name, say)}
        result = conn.run(line, hide=say is None, warn=True, in_stream=False, **streams)
        return status_of(result.exited), result.exited, result.stdout + result.stderr, None

    return on_connection(fleet, member, work)


def on_hosts(fleet: Fleet, work: Callable[[Member], HostResult]) -> List[HostResult]:
    """`work(member)` for every member, fleet.parallel at once; results in the fleet's order.
    An exception in one host's work becomes that host's failed result."""

    def guarded(member: Member) -> HostResult:
        started = time.monotonic()
        try:
            return work(member)
        except Exception as exc:  # noqa: BLE001 - one host's failure never stops the others
            return HostResult(
                member.name, "failed", None, f"{type(exc).__name__}: {exc}",
                time.monotonic() - started,
            )  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, fleet.parallel)) as pool:
        return list(pool.map(guarded, fleet.members))


def exit_code(results: List[HostResult]) -> int:
    """0 when every host succeeded; 2 when any host refused bad input; else 1."""
    if all(r.ok for r in results):
        return 0
    if any(r.status == "bad input" for r in results):
        return 2
    return 1


def run(
    fleet: Fleet,
    task: str,
    args: Sequence[str] = (),
    say: Optional[Callable[[str], None]] = None,
) -> List[HostResult]:
    """`invoke TASK ARGS` on every host of the fleet; `say` streams each host's lines."""
    return on_hosts(fleet, lambda m: run_on(fleet, m, invoke_line(m, task, args), say))


SUMMARY_COLUMNS = ["host", "status", "exit", "time (s)"]


def summary_rows(results: List[HostResult]) -> List[List[str]]:
    return [
        [r.host, r.status, "-" if r.exit_code is None else str(r.exit_code), f"{r.seconds:.1f}"]
        for r in results
    ]


def block(result: HostResult) -> List[str]:
    """One host's block: a head line (host, status, exit code, time), then its output."""
    code = "-" if result.exit_code is None else result.exit_code
    head = f"=== {result.host}: {result.status} (exit {code}, {result.seconds:.1f} s)"
    return [head] + [f"  {line}" for line in result.output.rstrip("\n").splitlines()]


def as_json(results: List[HostResult]) -> List[Dict[str, Any]]:
    return [asdict(r) for r in results]
