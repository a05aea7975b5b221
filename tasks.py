"""xenlab's tasks. Thin: parse flags, load and validate the site config, call the library, print.

Config comes from Invoke, in its order: invoke.yaml beside this file, INVOKE_* variables,
`-f site.yaml` (Invoke ranks the runtime file above the environment), then the task's flags.
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
    """Map the library's failures onto exit codes: 2 for bad input, 1 for anything else.

    SIGTERM and SIGHUP are handled as SIGINT: the run rolls back what it did, then exits 1.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipeline.runner import Interrupted, interrupts_roll_back

        try:
            with interrupts_roll_back():
                return fn(*args, **kwargs)
        except BadInput as exc:
            raise Exit(
                "bad input:\n  " + "\n  ".join(str(p) for p in exc.problems), code=2
            ) from None
        except (Failed, OSError) as exc:
            raise Exit(f"failed: {exc}", code=1) from None
        except Interrupted as exc:
            raise Exit(
                f"interrupted by {exc}: the changes of a step under way were rolled back"
                " (the 'rolled back:' lines); run the task again to finish",
                code=1,
            ) from None

    return wrapper


# --- the config files and INVOKE_* variables, checked before Invoke trips over them ----------------
# Invoke loads the -f file after it imported this file and before any task runs; a missing file it
# skips without a word, a YAML error, a section that is not a mapping or an INVOKE_* value of the
# wrong type end in its traceback. So the same load is done here first, at import, with Invoke's
# own Config; the -f path comes from Invoke's parsed core flags (Program.args, invoke.main.program).
def _config_problems(runtime_path, environ) -> list:
    """The Problems that would stop Invoke loading its config; [] when it loads."""
    import os

    from invoke import Config

    from pipeline import config_layers as layers
    from pipeline.errors import Problem

    config = Config(project_location=str(Path(__file__).parent), runtime_path=runtime_path)
    try:
        config.load_project()
    except Exception as exc:  # invoke.yaml itself: the project's own file
        return [Problem("invoke.yaml", None, f"does not load: {exc}")]
    project = layers.plain(config)
    if runtime_path is not None:
        if not os.path.isfile(runtime_path):
            return [layers.missing_file_problem(runtime_path, os.path.exists(runtime_path))]
        try:
            config.load_runtime(merge=False)
        except Exception as exc:  # YAML or JSON syntax, an unknown file type
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            kind = Path(runtime_path).suffix[1:].upper()
            return [Problem("-f", runtime_path, f"is not valid {kind}{at}: {reason}")]
        # Invoke keeps what it loaded from -f in _runtime until it merges it
        problems = layers.site_file_problems(runtime_path, config._runtime, project)
        if problems:
            return problems
        config.merge()
    return layers.environment_problems(layers.plain(config), environ)


def _check_config_first() -> None:
    import os

    try:
        from invoke.main import program

        flag = program.args.config.value  # Invoke's parsed -f/--config
    except Exception:  # imported by something else than Invoke's own program (a test, a tool)
        return
    path = flag if flag is not None else os.environ.get("INVOKE_RUNTIME_CONFIG")
    problems = _config_problems(path, os.environ)
    if problems:
        raise Exit("bad input:\n  " + "\n  ".join(str(p) for p in problems), code=2)


_check_config_first()


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


def _finish(runner) -> None:
    """How a task that changes the system ends: "no changes" when the run changed nothing, else
    for a dry run that it changed nothing."""
    from pipeline import console

    if not runner.changes:
        console.say("no changes")
    elif runner.dry_run:
        console.say("dry run: nothing was changed")


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
    from pipeline import console
    from pipeline.config import load_site
    from pipeline.host import network as host_network

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
    _finish(runner)
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


# --- host.storage, host.xen, host.check -----------------------------------------------------------
def _stderr_say(line: str) -> None:
    """Progress for --json runs: on stderr, so stdout holds only the JSON."""
    import sys

    print(line, file=sys.stderr)


def _print_json(data) -> None:
    import json

    print(json.dumps(data, indent=2, sort_keys=True))


@task(
    help={
        "device": "the disk whose free space becomes the PV, or an empty partition"
        " (config host.storage.device)",
        "size": "the new partition's size, e.g. 100G (config host.storage.size;"
        " default all of the largest free region)",
        "volume_group": "the VG to make (config host.storage.volume_group, default VolumeGroupXen)",
        "json": "print the result as JSON",
        "dry_run": COMMON_HELP["dry_run"],
    }
)
@exits
def storage(c, device=None, size=None, volume_group=None, json=False, dry_run=False):
    """Make the guests' LVM volume group in the free space of a disk.

    A new Linux LVM partition in the disk's largest free region, then pvcreate and vgcreate, as
    the lab does with fdisk. Never touches an existing partition, filesystem or PV; a second run
    changes nothing.
    """
    from pipeline import console, units
    from pipeline.config import load_site
    from pipeline.host import storage as host_storage

    site = load_site(
        c.config,
        {
            "host.storage.device": ("--device", device),
            "host.storage.size": ("--size", size),
            "host.storage.volume_group": ("--volume-group", volume_group),
        },
    )
    runner = runner_for(dry_run, None)
    if json:
        runner.say = _stderr_say
    result = host_storage.configure(site.host.storage, runner)
    if json:
        _print_json(result.as_json())
        return
    _finish(runner)
    if result.facts:
        console.table(
            "physical volumes",
            ["PV name", "VG name", "PV size", "PE size", "total PE", "free PE"],
            [
                [f.pv_name, f.vg_name, units.human(f.pv_size), units.human(f.pe_size),
                 f.total_pe, f.free_pe]
                for f in result.facts
            ],
        )  # fmt: skip


@task(
    help={
        "package": "the hypervisor package (config host.xen.package; default the release's,"
        " bionic: xen-hypervisor-4.9-amd64, bookworm: xen-hypervisor-4.17-amd64)",
        "dom0_mem": "dom0's fixed memory, e.g. 4096M (config host.xen.dom0_mem)",
        "root": "install into and configure this root (a chroot) instead of /",
        "json": "print the result as JSON",
        "dry_run": COMMON_HELP["dry_run"],
    }
)
@exits
def xen(c, package=None, dom0_mem=None, root=None, json=False, dry_run=False):
    """Install Xen as the default boot, dom0's memory capped.

    apt-get install of the release's hypervisor package, GRUB's default set to the Xen entry with
    dom0_mem on Xen's command line, autoballoon="off" in /etc/xen/xl.conf, then update-grub.
    Reboot afterwards; `invoke host.check` then says whether the host runs under Xen.
    """
    from dataclasses import asdict

    from pipeline import console
    from pipeline.config import load_site
    from pipeline.host import xen as host_xen

    site = load_site(
        c.config,
        {"host.xen.package": ("--package", package), "host.xen.dom0_mem": ("--dom0-mem", dom0_mem)},
    )
    runner = runner_for(dry_run, root)
    if json:
        runner.say = _stderr_say
    result = host_xen.configure(site.host.xen, runner)
    if json:
        _print_json(dict(asdict(result), changed=bool(runner.changes), dry_run=dry_run))
        return
    _finish(runner)
    console.table(
        "current state" if dry_run else "xen",
        ["setting", "value"],
        [
            ["root", result.root],
            ["release", result.release],
            [
                "package",
                f"{result.package} ({'installed' if result.installed else 'not installed'})",
            ],
            ["dom0_mem", f"{result.dom0_mem},max:{result.dom0_mem}"],
            ["GRUB default", result.grub_default or "-"],
            ["Xen entries", ", ".join(result.xen_entries) or "-"],
            [
                "guests' loader",
                f"{result.loader} ({'installed' if result.loader_installed else 'not installed'})",
            ],
            ["xendomains at shutdown", result.on_shutdown],
        ],
    )


@task(
    help={
        "netns": "read the bridge, its address and forwarding inside this network namespace",
        "json": "print the checks as JSON",
    }
)
@exits
def check(c, netns=None, json=False):
    """Check which steps of the lab are done on this host.

    For each: ok, or what is missing and which task fixes it. Reads only. Exit 0 when every step holds, 1 otherwise.
    """
    from pipeline import console
    from pipeline.config import load_site
    from pipeline.errors import Failed
    from pipeline.host import check as host_check

    site = load_site(c.config)
    lines = host_check.evaluate(host_check.gather(site.host, netns=netns))
    if json:
        _print_json(host_check.as_json(lines))
    else:
        console.table(
            "host check",
            ["step", "status", "detail", "fix"],
            [[line.step, line.status, line.detail, line.fix or ""] for line in lines],
        )
    problem = host_check.summary(lines)
    if problem:
        raise Failed(problem)


# --- host.diagram, host.report --------------------------------------------------------------------
READ_HELP = {
    "netns": "read the network inside this network namespace",
    "root": "read /etc/xen (the guests' cfg files, the autostart links) under this directory",
}


def _lab(c, netns: Optional[str], root: Optional[str], dry_run: bool = False):
    """The site, a runner for the output files, and everything read from the live system."""
    from pipeline.config import load_site
    from pipeline.lab import read

    site = load_site(c.config)
    runner = runner_for(dry_run, root)
    lab = read.read_lab(site.guests, site.host.bridge, runner.root, netns)
    return site, runner, lab


def _check_output(flag: str, path: str, formats) -> None:
    """An output file's name and folder are input: checked before anything is read or written."""
    if Path(path).suffix.lower().lstrip(".") not in formats:
        raise BadInput(flag, path, "must end in ." + ", .".join(formats))
    if not Path(path).resolve().parent.is_dir():
        raise BadInput(flag, path, "its folder does not exist")


def _draw(runner, lab, output: str) -> bool:
    from pipeline.lab import diagram as drawing

    fmt = drawing.output_format(output)
    data = drawing.render(drawing.to_dot(drawing.build(lab.topology, lab.guests, lab.xen)), fmt)
    return drawing.save(runner, Path(output).resolve(), data)


@task(
    help={
        "output": "the drawing to write: a .svg, .png or .dot file (default lab.svg)",
        **READ_HELP,
        "dry_run": "read and draw, but write no file",
    }
)
@exits
def diagram(c, output="lab.svg", netns=None, root=None, dry_run=False):
    """Draw the guests' network as it is now: Internet, upstream router, uplink, dom0, bridge, vifs, guests.

    Everything in the drawing is read from the system: links, addresses, bridges and their ports,
    routes and the default gateway, forwarding (over netlink); the guests from the site config,
    /etc/xen and, where Xen runs, `xl list`. Graphviz's dot renders .svg and .png.
    """
    from pipeline import console
    from pipeline.lab import diagram as drawing

    _check_output("--output", output, drawing.FORMATS)
    _, runner, lab = _lab(c, netns, root, dry_run)
    if not _draw(runner, lab, output):
        console.say(f"no changes: {output} already shows this")


@task(
    help={
        **READ_HELP,
        "markdown": "also write the report to this file as a Markdown section, the diagram linked",
        "diagram_file": "the diagram the Markdown links, drawn in the same run "
        "(default: lab.svg beside the Markdown file)",
    }
)
@exits
def report(c, netns=None, root=None, markdown=None, diagram_file=None):
    """Print the lab's facts on one page: PV and VG, domains, bridges, addresses, forwarding, autostart.

    As pvdisplay/vgdisplay, `xl list` (where Xen runs), `brctl show` and `ip addr` would show them,
    with the routes and which guests /etc/xen/auto starts at boot. Changes nothing on the system;
    --markdown writes the same as a Markdown section, with the diagram beside it.
    """
    from pipeline import console
    from pipeline.lab import diagram as drawing
    from pipeline.lab import report as lab_report

    if markdown is not None:
        _check_output("--markdown", markdown, ("md",))
    if diagram_file is not None:
        if markdown is None:
            raise BadInput("--diagram-file", diagram_file, "needs --markdown")
        _check_output("--diagram-file", diagram_file, ("svg", "png"))
    site, runner, lab = _lab(c, netns, root)
    storage = site.host.storage
    parts = lab_report.sections(
        lab,
        lab_report.read_storage(storage.kind, storage.volume_group, storage.dir),
        {name: guest.autostart for name, guest in site.guests.items()},
    )
    console.say(lab_report.to_text(parts))
    if markdown is None:
        return
    page = Path(markdown).resolve()
    picture = lab_report.diagram_for(page, diagram_file)
    with runner.transaction():
        _draw(runner, lab, str(picture))
        drawing.save(runner, page, lab_report.markdown_page(parts, page, picture).encode())


# --- pxe.* ----------------------------------------------------------------------------------------
@task(
    name="build",
    help={
        "installer": "a local installer instead of the profile's default: a folder with linux and "
        "initrd.gz (or a netboot tree), a netboot tarball, or a .deb",
        "profile": "ubuntu-18.04 or debian-12 (config install.profile)",
        "quiet": "no download progress",
        "root": COMMON_HELP["root"],
        "dry_run": COMMON_HELP["dry_run"],
    },
)
@exits
def pxe_build(c, installer=None, profile=None, root=None, dry_run=False, quiet=False):
    """Assemble the boot tree at pxe.tftp_root: the installer, pxelinux, shim and GRUB.

    Checks the partition plan (install.disk_size against root, swap and keep_free) and the
    preseed's inputs first. Downloads are checked against SHA256SUMS or apt's indexes and cached
    in install.cache_dir; the boot menus are made per request by pxe.serve.
    """
    from pipeline import console, units
    from pipeline.config import load_site
    from pxe import boottree, preseed

    site = load_site(c.config, {"install.profile": ("--profile", profile)})
    plan = preseed.preflight(site.install)  # before anything is fetched
    runner = runner_for(dry_run, root)
    tree = boottree.build(
        site.install, site.pxe, runner, installer, console.say, progress=not quiet
    )
    _finish(runner)
    console.say(
        f"partition plan for {plan.disk} ({units.human(plan.disk_size)}): / "
        f"{units.human(site.install.root_size)}, swap {units.human(site.install.swap_size)}, "
        f"at least {units.human(plan.free)} left unpartitioned "
        f"(install.keep_free {units.human(plan.keep_free)})"
    )
    if dry_run:
        return
    console.table(
        f"boot tree {tree.root}",
        ["file", "from"],
        [[rel, tree.origins.get(rel, "-")] for rel in tree.files],
    )


@task(
    name="preseed",
    help={
        "mac": "the host's MAC (default: config install.mac)",
        "address": "the server address the host reaches pxe.serve on (default: pxe.interface's)",
        "root": "read the state directory under this directory",
    },
)
@exits
def pxe_preseed(c, mac=None, address=None, root=None):
    """Print the preseed pxe.serve would give this host when it is armed.

    It includes the admin's password hash (config install.password_hash), as served.
    """
    import sys

    from pipeline.config import load_site
    from pxe import preseed

    site = load_site(c.config)
    mac = _pxe_mac(site, mac)
    address = address or _interface_address(site.pxe.interface) or "pxe-server"
    # The served preseed's callback carries the arming's token; this print shows where it goes.
    callback = preseed.callback_for(mac, address, site.pxe.http_port, "ARMING-TOKEN-SERVED-ONLY")
    text = preseed.render(site.install, mac, callback)
    try:
        from pxe import arming

        if mac not in arming.load(runner_for(False, root).path(site.pxe.state_dir)):
            print(f"note: {mac} is not armed: pxe.serve gives it no preseed", file=sys.stderr)
    except (ImportError, OSError, ValueError, Failed):
        pass
    sys.stdout.write(text)


def _interface_address(interface):
    """The first IPv4 address of `interface`, or None."""
    from netlink import links

    if not interface:
        return None
    try:
        return str(links.interface_address(interface)[0].ip)
    except BadInput:
        return None


@task(
    name="serve",
    help={
        "interface": "the NIC on the PXE segment; everything binds to it only (config pxe.interface)",
        "mode": "proxy (beside the site's DHCP server, the default) or dhcp (config pxe.mode)",
        "range": "FIRST-LAST addresses to lease with --mode dhcp (config pxe.dhcp_range)",
        "root": "find the boot tree and the state directory under this directory",
        "dry_run": "check the settings against the interface, say what would be served, and exit",
    },
)
@exits
def pxe_serve(c, interface=None, mode=None, range=None, root=None, dry_run=False):  # noqa: A002
    """Serve PXE installs: DHCP (proxy or full), TFTP and HTTP in the foreground until Ctrl-C.

    Only armed MACs (`invoke pxe.arm`) get the installer and their preseed, once; every other PXE
    client gets a menu that boots its local disk. One line per client step, with its MAC.
    """
    import signal
    import threading

    from netlink import links
    from pipeline.config import load_site
    from pxe import serve

    site = load_site(
        c.config,
        {
            "pxe.interface": ("--interface", interface),
            "pxe.mode": ("--mode", mode),
            "pxe.dhcp_range": ("--range", range),
        },
    )
    serve.check(site)  # the config alone, before the interface is read
    address, mtu = links.interface_address(site.pxe.interface, "pxe.interface (--interface)")
    plan = serve.plan(site, runner_for(False, root).root, address, mtu)
    if dry_run:
        print(f"would serve {serve.describe(plan)}")
        return
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # Plain prints, flushed: the log is read live through pipes (journald, tee, tests).
    serve.run(site, plan, lambda line: print(line, flush=True), stop)


def _pxe_mac(site, mac):
    from pxe.arming import normalise_mac

    if mac is None and site.install.mac:
        return normalise_mac(site.install.mac, "install.mac")
    if mac is None:
        raise BadInput("--mac", None, "is required (or set install.mac)")
    return normalise_mac(mac)


def _arming(c, mac, root, dry_run, arm: bool) -> None:
    from pipeline import console
    from pipeline.config import load_site
    from pxe import arming

    site = load_site(c.config)
    mac = _pxe_mac(site, mac)
    if arm:  # the whole site, as the host's host.provision will check it, before any server boots
        from pipeline.host import provision

        provision.check_for_arming(site)
    runner = runner_for(dry_run, root)
    change = arming.arm if arm else arming.disarm
    with runner.transaction():
        changed = change(runner, Path(site.pxe.state_dir), mac)
    done = "armed" if arm else "disarmed"
    if not changed:
        console.say(f"{mac} was {'already armed' if arm else 'not armed'}: no changes")
    else:
        console.say(f"{mac} would be {done}" if dry_run else f"{mac} {done}")


@task(
    name="arm",
    help={
        "mac": "the host's MAC, e.g. 34:17:eb:f0:dc:e3 (default: config install.mac)",
        "root": COMMON_HELP["root"],
        "dry_run": COMMON_HELP["dry_run"],
    },
)
@exits
def pxe_arm(c, mac=None, root=None, dry_run=False):
    """Arm a host for one automated install: its next PXE boot gets the installer and its preseed."""
    _arming(c, mac, root, dry_run, arm=True)


@task(
    name="disarm",
    help={
        "mac": "the host's MAC (default: config install.mac)",
        "root": COMMON_HELP["root"],
        "dry_run": COMMON_HELP["dry_run"],
    },
)
@exits
def pxe_disarm(c, mac=None, root=None, dry_run=False):
    """Disarm a host: its PXE boots go back to the local-disk menu."""
    _arming(c, mac, root, dry_run, arm=False)


@task(name="status", help={"root": "read the state directory under this directory"})
@exits
def pxe_status(c, root=None):
    """Show the armed MACs and the addresses pxe.serve leased."""
    from pipeline import console
    from pipeline.config import load_site
    from pxe import arming, dhcp_server, progress

    site = load_site(c.config)
    state_dir = runner_for(False, root).path(site.pxe.state_dir)
    armed = arming.load(state_dir)
    hosts = progress.load(state_dir)
    leases = dhcp_server.read_leases(dhcp_server.leases_file(state_dir))
    rows = [
        [mac, "armed" if mac in armed else "-", armed.get(mac, {}).get("armed_at", "-"),
         leases[mac].ip if mac in leases else "-",
         progress.describe(hosts[mac]) if mac in hosts else "-"]
        for mac in sorted(set(armed) | set(leases) | set(hosts))
    ]  # fmt: skip
    if not rows:
        console.say(f"nothing armed, no leases (state in {state_dir})")
        return
    console.table(
        f"PXE hosts ({state_dir})", ["mac", "install", "armed at", "lease", "state"], rows
    )
    for mac in sorted(armed):
        for refused in armed[mac].get("refused", []):
            console.say(
                f"WARNING: {mac}: its preseed was served to {armed[mac].get('served_to')} and"
                f" asked for again from {refused.get('from')} at {refused.get('at')} (refused)"
            )
    for mac in sorted(hosts):
        if hosts[mac].get("history"):
            console.say(f"{mac}: {', '.join(progress.way(hosts[mac]))}")
        lines = progress.last_lines(hosts[mac])
        if lines:
            console.say(f"{mac} {progress.describe(hosts[mac])}, its last log lines:")
            for line in lines:
                console.say(f"  | {line}")


# --- image.build, guest.build ---------------------------------------------------------------------
@task(
    name="build",
    help={
        "profile": "the image profile: debian-12 or ubuntu-18.04",
        "rebuild": "build even when the cache holds an image made from the same inputs",
        "quiet": "do not stream diskimage-builder's output",
        "dry_run": "say whether the cache holds the image and what a build would use; build nothing",
    },
)
@exits
def image_build(c, profile=None, rebuild=False, quiet=False, dry_run=False):
    """Build (or reuse) the golden root filesystem of a guest profile with diskimage-builder.

    The image is cached under images.cache_dir, keyed by everything that goes into it (profile,
    release, the elements in images/elements and their content, diskimage-builder's version,
    mirrors); a second call with the same inputs reuses it. Debian's mirrors come from
    images.mirror and images.security_mirror, Ubuntu's from images.ubuntu_mirror, by default
    from this machine's apt sources (Ubuntu: else archive.ubuntu.com).
    """
    from pipeline import console
    from pipeline.config import load_site
    from pipeline.guest import image

    site = load_site(c.config)
    say = (lambda _line: None) if quiet else console.say
    golden = image.ensure(profile, site.images, say=say, rebuild=rebuild, dry_run=dry_run)
    if golden is None:
        console.say("dry run: nothing was built")
        return
    if golden.reused:
        console.say(f"reused the cached image {golden.key}: no changes")
    console.table(
        "golden image",
        ["profile", "distribution", "key", "tree", "kernel", "initrd", "cache"],
        [
            [
                golden.profile,
                golden.distribution,
                golden.key,
                golden.tree,
                golden.kernel,
                golden.initrd,
                "reused" if golden.reused else "built",
            ]
        ],
    )


@task(
    name="build",
    help={
        "name": "the guest: its settings are guests.NAME in the site config",
        "memory": "memory, MiB or with a unit (config guests.NAME.memory)",
        "vcpus": "virtual CPUs (config guests.NAME.vcpus)",
        "disk": "root disk size, e.g. 10G (config guests.NAME.disk)",
        "swap": "swap size, e.g. 1G (config guests.NAME.swap)",
        "ip": "the guest's address in host.subnet (config guests.NAME.ip)",
        "profile": "the golden image: ubuntu-18.04 or debian-12 (config guests.NAME.profile)",
        "no_start": "build everything but do not xl create it",
        "force": "replace an existing guest of that name: its volumes, config and seed go first",
        "dry_run": COMMON_HELP["dry_run"],
        "root": "put /etc/xen and the seed under this directory (volumes stay real)",
        "quiet": "no progress lines (image build, filesystem write); the summary still prints",
    },
)
@exits
def guest_build(
    c,
    name=None,
    memory=None,
    vcpus=None,
    disk=None,
    swap=None,
    ip=None,
    profile=None,
    no_start=False,
    force=False,
    root=None,
    dry_run=False,
    quiet=False,
):
    """Build a Xen guest from the golden image: volumes, root filesystem, NoCloud seed, xl config.

    Checks everything first (name, IP, memory, vCPUs, storage room, MAC); then creates the disk
    and swap volumes, writes the golden root filesystem onto the disk, writes the cloud-init seed
    (admin user with the configured keys, key-only sshd for the allowed networks, a random root
    password kept in a 0600 file on the host), renders /etc/xen/NAME.cfg, links it into
    /etc/xen/auto when autostart is on, and starts it with xl create. A failure removes what the
    run created. Ends with a summary: hostname, distribution, MAC, IP, SSH host key fingerprints.
    """
    from pipeline import console
    from pipeline.config import load_site
    from pipeline.guest import build as guest

    if not name or "." in name:
        # The name is also a config key (guests.NAME), so it is checked before the config is read.
        raise BadInput("--name", name, "must name a guest under guests: in the site config")
    key = f"guests.{name}"
    site = load_site(
        c.config,
        {
            f"{key}.memory": ("--memory", memory),
            f"{key}.vcpus": ("--vcpus", vcpus),
            f"{key}.disk": ("--disk", disk),
            f"{key}.swap": ("--swap", swap),
            f"{key}.ip": ("--ip", ip),
            f"{key}.profile": ("--profile", profile),
        },
    )
    runner = runner_for(dry_run, root)
    say = (lambda _line: None) if quiet else console.say
    built = guest.build(site, name, runner, force=force, start=not no_start, say=say)
    if dry_run:
        console.say("dry run: nothing was changed")
        return
    console.say("")
    for line in built.summary():
        console.say(line)


@task(
    help={
        "no_reboot": "stop before the reboot into Xen (and say so) instead of rebooting",
        "report_file": "a file holding the pxe.serve URL to report each step to"
        " (the install writes /etc/xenlab/report-url)",
        "root": "install Xen and write every file under this directory (a chroot) instead of /",
        "netns": COMMON_HELP["netns"],
        "dry_run": "print the whole plan, step by step, and change nothing",
    }
)
@exits
def provision(c, no_reboot=False, report_file=None, root=None, netns=None, dry_run=False):
    """The host's whole part of the lab from the site, in order, continuing where it stopped.

    host.storage, host.xen, a reboot into Xen when Xen is not running yet (--no-reboot stops
    there), host.network, the golden image of every profile the guests use (images.source: fetched
    from pxe.serve), guest.build (started) for every guest that does not exist yet, host.check.
    Each step is idempotent and printed with its outcome and time. xenlab-provision.service runs
    this at boot on a host pxe.serve installed.
    """
    from pipeline import console
    from pipeline.config import load_site
    from pipeline.host import provision as host_provision

    site = load_site(c.config)
    runner = runner_for(dry_run, root)  # checks --root
    reporter = host_provision.Reporter.from_file(report_file, console.say)
    result = host_provision.provision(
        site, dry_run=dry_run, root=runner.root, netns=netns, reboot=not no_reboot,
        say=console.say, reporter=reporter,
    )  # fmt: skip
    if dry_run:
        console.say("dry run: nothing was changed")
    elif result.stopped:
        console.say(f"stopped before the reboot: {result.stopped}")
    elif result.finished:
        shown = ", ".join(f"{g['name']} {g['ip'] or '-'}" for g in result.guests)
        console.say(f"provisioned: every step holds; guests: {shown or 'none'}")


# --- guest.list, start, stop, restart, pause, unpause, console, info, check, autostart, remove ---
GUEST_HELP = {
    "name": "the guest: guests.NAME in the site config",
    "root": "read /etc/xen and the guests' state under this directory (as guest.build --root)",
}


def _guest(c, name):
    """The site, with `name` checked the way guest.build checks it (a config key, no dots)."""
    from pipeline.config import load_site
    from pipeline.guest import lifecycle

    if not name or "." in name:
        raise BadInput("--name", name, "must name a guest under guests: in the site config")
    site = load_site(c.config)
    lifecycle.guest_of(site, name)
    return site


def _done(done) -> None:
    from pipeline import console

    console.say(done.message)


@task(name="list", help={"json": "print the rows as JSON", "root": GUEST_HELP["root"]})
@exits
def guest_list(c, json=False, root=None):
    """List every configured guest and every domain: state decoded from xl's flags, memory, vCPUs,
    CPU time, IP, MAC, autostart; configured guests that do not run show as stopped."""
    from pipeline import console
    from pipeline.config import load_site
    from pipeline.guest import listing

    site = load_site(c.config)
    found = listing.read(site, runner_for(False, root).root)
    if json:
        _print_json(listing.as_json(found))
        return
    console.table("guests", listing.COLUMNS, [row.cells() for row in found])


@task(name="start", help={**GUEST_HELP, "dry_run": COMMON_HELP["dry_run"]})
@exits
def guest_start(c, name=None, root=None, dry_run=False):
    """Start a built guest (xl create /etc/xen/NAME.cfg); waits for an old domain of that name
    that is still being torn down."""
    from pipeline import console
    from pipeline.guest import lifecycle

    site = _guest(c, name)
    _done(lifecycle.start(site, name, runner_for(dry_run, root), say=console.say))


@task(
    name="stop",
    help={
        **GUEST_HELP,
        "force": "destroy the domain (xl destroy) instead of a clean shutdown",
        "timeout": "seconds to wait for the clean shutdown (config guests.NAME.stop_timeout)",
        "dry_run": COMMON_HELP["dry_run"],
    },
)
@exits
def guest_stop(c, name=None, force=False, timeout=None, root=None, dry_run=False):
    """Shut a guest down cleanly (xl shutdown -w) and wait until Xen has removed its domain."""
    from pipeline import console
    from pipeline.guest import lifecycle

    site = _guest(c, name)
    limit = _timeout(timeout)
    runner = runner_for(dry_run, root)
    _done(lifecycle.stop(site, name, runner, force=force, timeout=limit, say=console.say))


def _timeout(value):
    if value is None:
        return None
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= 3600:
        raise BadInput("--timeout", value, "must be 1 to 3600 seconds")
    return seconds


@task(
    name="restart",
    help={
        **GUEST_HELP,
        "timeout": "seconds to wait for the clean shutdown (config guests.NAME.stop_timeout)",
        "dry_run": COMMON_HELP["dry_run"],
    },
)
@exits
def guest_restart(c, name=None, timeout=None, root=None, dry_run=False):
    """Stop a guest cleanly, then start it again from its cfg."""
    from pipeline import console
    from pipeline.guest import lifecycle

    site = _guest(c, name)
    limit = _timeout(timeout)
    runner = runner_for(dry_run, root)
    _done(lifecycle.restart(site, name, runner, timeout=limit, say=console.say))


@task(name="pause", help={"name": GUEST_HELP["name"], "dry_run": COMMON_HELP["dry_run"]})
@exits
def guest_pause(c, name=None, dry_run=False):
    """Pause a guest (xl pause): it keeps its memory and gets no CPU time."""
    from pipeline.guest import lifecycle

    _done(lifecycle.pause(_guest(c, name), name, runner_for(dry_run, None), on=True))


@task(name="unpause", help={"name": GUEST_HELP["name"], "dry_run": COMMON_HELP["dry_run"]})
@exits
def guest_unpause(c, name=None, dry_run=False):
    """Unpause a paused guest (xl unpause)."""
    from pipeline.guest import lifecycle

    _done(lifecycle.pause(_guest(c, name), name, runner_for(dry_run, None), on=False))


@task(
    name="console",
    help={
        "name": GUEST_HELP["name"],
        "log": "print the end of the console's log (xenconsoled's file) instead of attaching",
        "root": GUEST_HELP["root"],
    },
)
@exits
def guest_console(c, name=None, log=False, root=None):
    """Attach to a guest's console (xl console); Ctrl-] leaves it. --log prints its log."""
    import os
    import shutil
    import sys

    from pipeline.guest import lifecycle

    if log:
        for line in lifecycle.console_log(_guest(c, name), name, runner_for(False, root).root):
            print(line)
        return
    argv = lifecycle.console(_guest(c, name), name)
    print(f"{name}'s console (xl console {name}); Ctrl-] leaves it", file=sys.stderr, flush=True)
    os.execv(shutil.which(argv[0]) or argv[0], argv)


@task(name="info", help={**GUEST_HELP, "json": "print the facts as JSON"})
@exits
def guest_info(c, name=None, root=None, json=False):
    """Show a guest's state, memory, vCPUs, disks with their backing LV or file, vif with MAC, IP
    and bridge, and uptime (xl list -l), or its cfg's facts when it is stopped."""
    from pipeline import console
    from pipeline.guest import lifecycle

    found = lifecycle.info(_guest(c, name), name, runner_for(False, root).root)
    if json:
        _print_json(found.as_json())
        return
    for line in found.lines():
        console.say(line)


@task(
    name="check",
    help={
        **GUEST_HELP,
        "netns": "ping and ssh from inside this network namespace (the host's side)",
        "from_guest": "also log in over ssh and ping the guest's gateway and the host's gateway",
        "identity": "the admin's private key for --from-guest (default: ssh's own)",
        "json": "print the checks as JSON",
    },
)
@exits
def guest_check(c, name=None, root=None, netns=None, from_guest=False, identity=None, json=False):
    """Test a guest's network from the host: its domain runs, its vif is in the bridge, it answers
    ping, its sshd has the host key guest.build recorded. Exit 0 only when every check holds."""
    from pipeline import console
    from pipeline.guest import connectivity

    site = _guest(c, name)
    if netns is not None:
        from netlink import namespace

        with namespace.inside(netns):  # a missing namespace is bad input, before any check
            pass
    if identity is not None and not Path(identity).is_file():
        raise BadInput("--identity", identity, "is not a file")
    lines = connectivity.evaluate(
        site, name, runner_for(False, root).root, netns, from_guest, identity
    )
    if json:
        _print_json(connectivity.as_json(lines))
    else:
        console.table(
            f"guest check: {name}",
            ["check", "status", "detail", "fix"],
            [[line.check, line.status, line.detail, line.fix or ""] for line in lines],
        )
    problem = connectivity.summary(lines)
    if problem:
        raise Failed(problem)


@task(
    name="autostart",
    help={
        "name": GUEST_HELP["name"],
        "on": "link /etc/xen/auto/NAME.cfg: xendomains starts the guest at boot",
        "off": "remove that link",
        "root": COMMON_HELP["root"],
        "dry_run": COMMON_HELP["dry_run"],
    },
)
@exits
def guest_autostart(c, name=None, on=False, off=False, root=None, dry_run=False):
    """Start a guest at boot, or not: the /etc/xen/auto link that xendomains reads."""
    from pipeline.guest import lifecycle

    if on == off:
        raise BadInput("--on/--off", None, "give exactly one of --on and --off")
    _done(lifecycle.autostart(_guest(c, name), name, runner_for(dry_run, root), on))


@task(
    name="remove",
    help={
        "name": GUEST_HELP["name"],
        "yes": "really remove; without it, only say what would be removed",
        "root": "/etc/xen and the guest's state under this directory (volumes stay real)",
        "dry_run": COMMON_HELP["dry_run"],
    },
)
@exits
def guest_remove(c, name=None, yes=False, root=None, dry_run=False):
    """Remove a guest for good: its domain (destroyed), cfg, autostart link, seed, root password,
    known_hosts and volumes. Nothing without --yes, which lists what would go."""
    from pipeline import console
    from pipeline.guest import lifecycle

    site = _guest(c, name)
    result = lifecycle.remove(site, name, runner_for(dry_run, root), yes=yes)
    for note in result.notes:
        console.say(note)
    if not result.parts:
        console.say(f"nothing of {name} is there: no changes")
        return
    if result.done:  # the runner has said each removal as it happened
        console.say(f"{name} removed: " + ", ".join(part.what for part in result.parts))
        return
    for part in result.parts:
        console.say(f"would remove {part.what}")
    console.say(f"nothing was removed{'' if yes else ': add --yes to remove these'}")


# --- fleet.deploy, fleet.run, fleet.status, fleet.provision: every host of fleet.hosts over SSH ---
FLEET_HELP = {"hosts": "only these hosts of fleet.hosts, comma-separated (default: all of them)"}


def _fleet(c, hosts):
    """The site and its fleet: every host's site file read and checked across the fleet (bad
    input is exit 2 here, before any connection)."""
    from pipeline.config import load_site
    from pipeline.fleet import inventory

    site = load_site(c.config)
    return site, inventory.load(site.fleet, hosts)


def _fleet_end(results, title: str, blocks: bool = True) -> None:
    """Each host's block, the summary table, and the exit code: 0 all ok, 2 any bad input, else 1."""
    from pipeline import console
    from pipeline.fleet import run as remote

    for result in results if blocks else ():
        for line in remote.block(result):
            console.say(line)
    console.table(title, remote.SUMMARY_COLUMNS, remote.summary_rows(results))
    code = remote.exit_code(results)
    if code:
        failed = [f"{r.host} ({r.status})" for r in results if not r.ok]
        raise Exit(
            f"failed on {len(failed)} of {len(results)} hosts: {', '.join(failed)}", code=code
        )


@task(
    name="deploy",
    help={
        **FLEET_HELP,
        "wheelhouse": "the wheelhouse folder to install from (default: pxe.build's for"
        " install.profile, else one built for each host's install.profile)",
    },
)
@exits
def fleet_deploy(c, hosts=None, wheelhouse=None):
    """Install or upgrade xenlab and its site file on every host of fleet.hosts, from the wheelhouse.

    As the install's late setup: the wheelhouse and the host's own site file are copied over SSH,
    xenlab is installed from them into /opt/xenlab/.venv with pip --no-index (the host needs no
    package index), the site file goes to /etc/xenlab/site.yaml. A host that has this wheelhouse
    and site file already says "no changes".
    """
    from pipeline import console
    from pipeline.fleet import deploy

    site, fleet_ = _fleet(c, hosts)
    _fleet_end(deploy.deploy(fleet_, site, wheelhouse, console.say), "fleet.deploy")


def _remainder() -> str:
    """What follows `--` on the command line (Invoke's parser keeps it for the program)."""
    try:
        from invoke.main import program

        return program.core.remainder or ""
    except Exception:  # not run by Invoke's own program
        return ""


@task(
    name="run",
    positional=["task_name"],
    help={
        "task_name": "the xenlab task to run on each host, e.g. host.check; its flags go after"
        " --, e.g. fleet.run guest.start -- --name guest-01",
        **FLEET_HELP,
    },
)
@exits
def fleet_run(c, task_name=None, hosts=None):
    """Run one xenlab task on every host at once, each with its own site file.

    `invoke fleet.run host.network` runs `invoke host.network` of the xenlab fleet.deploy put on
    each host; flags for the task follow `--`. Prints one block per host (its output, exit code,
    time) and a summary; a host that fails or cannot be reached does not stop the others. Exit 0
    when every host succeeded, 2 when any host refused bad input, else 1.
    """
    import shlex

    from pipeline.fleet import run as remote

    if task_name in ("--help", "-h"):  # `invoke fleet.run --help`: the positional took it
        from invoke.main import program

        program.print_task_help("fleet.run")
        return
    remote.check_task(task_name, list(ns.task_names))
    _, fleet_ = _fleet(c, hosts)
    results = remote.run(fleet_, task_name, shlex.split(_remainder()))
    _fleet_end(results, f"fleet.run {task_name}")


@task(name="status", help={**FLEET_HELP, "json": "print the rows as JSON"})
@exits
def fleet_status(c, hosts=None, json=False):
    """Show every host in one table: Xen, the bridge, the VG's free space, guests running/configured.

    From each host's own host.check and guest.list (--json). Exit 0 when every host answered,
    1 when one could not be reached.
    """
    from pipeline import console
    from pipeline.fleet import status as fleet_status_

    _, fleet_ = _fleet(c, hosts)
    results = fleet_status_.status(fleet_)
    if json:
        _print_json(fleet_status_.as_json(results))
    else:
        console.table("fleet", fleet_status_.COLUMNS, [r.data.cells() for r in results])
    if fleet_status_.exit_code(results):
        unreached = [f"{r.host} ({r.status})" for r in results if r.data.status != "checked"]
        raise Exit(f"not reached: {', '.join(unreached)}", code=1)


@task(
    name="provision",
    help={
        **FLEET_HELP,
        "no_reboot": "each host stops before its reboot into Xen instead of rebooting",
        "dry_run": "each host prints its whole plan and changes nothing",
    },
)
@exits
def fleet_provision(c, hosts=None, no_reboot=False, dry_run=False):
    """Run host.provision on every host at once, each host's progress shown as it goes.

    Each line of a host's output is printed as it comes, after the host's name; then a summary.
    Exit 0 when every host finished its part, 2 when any refused bad input, else 1.
    """
    from pipeline import console
    from pipeline.fleet import run as remote

    _, fleet_ = _fleet(c, hosts)
    args = ["--no-reboot"] * bool(no_reboot) + ["--dry-run"] * bool(dry_run)
    results = remote.run(fleet_, "host.provision", args, say=console.say)
    _fleet_end(results, "fleet.provision", blocks=False)


# --- lab.rehearse ---------------------------------------------------------------------------------
@task(
    name="rehearse",
    help={
        "profile": "the host's release: ubuntu-18.04 (the lab's, Xen 4.9; default) or debian-12"
        " (Xen 4.17)",
        "site": "the rehearsal's site file (default: pipeline/lab/rehearsal/site.yaml)",
        "output": "keep the transcript, console, report and drawing here (default: under"
        " rehearse.cache_dir/output)",
        "keep": "keep the VM's disk and the run's files for a look",
    },
)
@exits
def rehearse(c, profile=None, site=None, output=None, keep=False):
    """The whole lab, zero touch, on a real Xen host in a VM (qemu, software emulation).

    Installs the host disk as the preseed would, boots it, lets xenlab-provision make it a Xen
    host with its guests, and checks every step of the lab from an upstream router namespace:
    the console, pxe.status, ssh into dom0 and into guest-01, ping; then reboots and checks the
    guest comes back. Exit 0 only when every step passed. Takes 15 to 30 minutes.
    """
    from pipeline.lab import rehearse as rehearsal

    result = rehearsal.rehearse(
        site, profile, output, keep, say=lambda line: print(line, flush=True)
    )
    if not result.ok:
        failed = next(s for s in result.steps if s.status == "failed")
        raise Failed(f"step {failed.name}: {failed.detail} (transcript in {result.output})")


host = Collection("host")
host.add_task(network)
host.add_task(diagram)
host.add_task(report)
host.add_task(storage)
host.add_task(xen)
host.add_task(check)
host.add_task(provision)

pxe = Collection("pxe")
pxe.add_task(pxe_build)
pxe.add_task(pxe_preseed)
pxe.add_task(pxe_serve)
pxe.add_task(pxe_arm)
pxe.add_task(pxe_disarm)
pxe.add_task(pxe_status)

image = Collection("image")
image.add_task(image_build)

guest = Collection("guest")
guest.add_task(guest_build)
guest.add_task(guest_list)
guest.add_task(guest_start)
guest.add_task(guest_stop)
guest.add_task(guest_restart)
guest.add_task(guest_pause)
guest.add_task(guest_unpause)
guest.add_task(guest_console)
guest.add_task(guest_info)
guest.add_task(guest_check)
guest.add_task(guest_autostart)
guest.add_task(guest_remove)

lab = Collection("lab")
lab.add_task(rehearse)

ns = Collection()
for collection in (host, pxe, image, guest, lab):
    ns.add_collection(collection)

fleet = Collection("fleet")
fleet.add_task(fleet_deploy)
fleet.add_task(fleet_run)
fleet.add_task(fleet_status)
fleet.add_task(fleet_provision)
ns.add_collection(fleet)
