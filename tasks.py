"""xenlab's tasks. Thin: parse flags, load and validate the site config, call the library, print.

Config comes from Invoke: invoke.yaml beside this file, `-f site.yaml`, INVOKE_* variables, flags.
"""

import functools
from pathlib import Path
from typing import Optional

from invoke import Collection, Exit, task

from pipeline.errors import BadInput, Failed

# The libraries behind the tasks (pydantic, pyroute2, rich) are imported inside the tasks,
# so that `invoke --list` and `--help` stay quick.

COMMON_HELP = {
    "dry_run": "print the plan (changes, commands, files with diffs) and change nothing",
    "root": "write every file under this directory instead of /",
    "netns": "do the netlink and forwarding work inside this network namespace",
}


def exits(fn):
    """Map the library's failures onto exit codes: 2 for bad input, 1 for anything else."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BadInput as exc:
            raise Exit(
                "bad input:\n  " + "\n  ".join(str(p) for p in exc.problems), code=2
            ) from None
        except (Failed, OSError) as exc:
            raise Exit(f"failed: {exc}", code=1) from None

    return wrapper


def runner_for(dry_run: bool, root: Optional[str]):
    from pipeline import console
    from pipeline.runner import Runner

    if root is not None:
        path = Path(root)
        if not path.is_dir():
            raise BadInput("--root", root, "is not a directory")
        root_path = path.resolve()
    else:
        root_path = Path("/")
    return Runner(dry_run=dry_run, root=root_path, say=console.say)


@task(
    help={
        "bridge": "the guests' bridge (config host.bridge, default xenbr0)",
        "subnet": "the subnet routed to this host, e.g. 192.0.2.0/28 (config host.subnet)",
        "address": "the bridge's address (config host.address; default the first usable)",
        **COMMON_HELP,
    }
)
@exits
def network(c, bridge=None, subnet=None, address=None, netns=None, root=None, dry_run=False):
    """Make the guests' routed bridge: up, with the subnet's first address, forwarding on, persisted."""
    from netlink import host_network
    from pipeline import console
    from pipeline.config import load_site

    site = load_site(
        c.config,
        {
            "host.bridge": ("--bridge", bridge),
            "host.subnet": ("--subnet", subnet),
            "host.address": ("--address", address),
        },
    )
    runner = runner_for(dry_run, root)
    result = host_network.configure(site.host, runner, netns=netns)
    if not runner.changes:
        console.say("no changes")
    elif dry_run:
        console.say("dry run: nothing was changed")
    console.table(
        "current state" if dry_run else "bridge",
        ["bridge", "state", "addresses", "members", "ipv4 forwarding"],
        [
            [
                result.name,
                result.state,
                ", ".join(result.addresses) or "-",
                ", ".join(result.members) or "(none)",
                "on" if result.forwarding else "off",
            ]
        ],
    )


# --- host.storage, host.xen, host.check (issue 3) ----------------------------------------------


# --- host.diagram, host.report (issue 6) --------------------------------------------------------


# --- pxe.* (issue 4) ----------------------------------------------------------------------------


# --- image.build, guest.build (issue 5) ---------------------------------------------------------


host = Collection("host")
host.add_task(network)

pxe = Collection("pxe")

image = Collection("image")

guest = Collection("guest")

ns = Collection()
for collection in (host, pxe, image, guest):
    ns.add_collection(collection)
