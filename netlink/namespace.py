"""Doing netlink and /proc/sys/net work inside a named network namespace (`ip netns` style)."""

from contextlib import contextmanager
from typing import Iterator, Optional

from pyroute2 import netns as pr_netns

from pipeline.errors import BadInput


def exists(name: str) -> bool:
    return name in pr_netns.listnetns()


@contextmanager
def inside(name: Optional[str], field: str = "--netns") -> Iterator[None]:
    """Run the body with this process in namespace `name` (None: stay where we are).

    Netlink sockets and /proc/sys/net files opened inside belong to that namespace.
    """
    if name is None:
        yield
        return
    if not name or not name.strip():
        # `--netns "$NS"` with NS unset: doing the work here would do it on the real host.
        raise BadInput(field, name, "is empty; name a network namespace (see `ip netns list`)")
    # pyroute2 would create a missing namespace (O_CREAT); a typo must not do that.
    if "/" in name or name in (".", "..") or not exists(name):
        raise BadInput(field, name, "no such network namespace (see `ip netns list`)")
    pr_netns.pushns(name)
    try:
        yield
    finally:
        pr_netns.popns()
