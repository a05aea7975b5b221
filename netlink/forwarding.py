"""IPv4 forwarding, so the host routes between its uplink and the guests' bridge.

/proc/sys/net belongs to the network namespace of whoever opens it, so this works inside --netns.
"""

from pipeline.runner import Runner

PROC = "/proc/sys/net/ipv4/ip_forward"
SYSCTL_KEY = "net.ipv4.ip_forward"


def enabled() -> bool:
    with open(PROC) as fh:
        return fh.read().strip() == "1"


def _write(value: str) -> None:
    with open(PROC, "w") as fh:
        fh.write(value)


def ensure(runner: Runner) -> None:
    if not enabled():
        runner.change("enable IPv4 forwarding", lambda: _write("1"), lambda: _write("0"))
