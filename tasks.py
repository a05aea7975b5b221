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
    text = preseed.render(site.install, mac, preseed.callback_for(mac, address, site.pxe.http_port))
    try:
        from pxe import arming

        if mac not in arming.load(runner_for(False, root).path(site.pxe.state_dir)):
            print(f"note: {mac} is not armed: pxe.serve gives it no preseed", file=sys.stderr)
    except (ImportError, OSError, ValueError):
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
    from pxe import arming, dhcp_server

    site = load_site(c.config)
    state_dir = runner_for(False, root).path(site.pxe.state_dir)
    armed = arming.load(state_dir)
    leases = dhcp_server.read_leases(dhcp_server.leases_file(state_dir))
    rows = [
        [mac, "armed" if mac in armed else "-", armed.get(mac, {}).get("armed_at", "-"),
         leases[mac].ip if mac in leases else "-"]
        for mac in sorted(set(armed) | set(leases))
    ]  # fmt: skip
    if not rows:
        console.say(f"nothing armed, no leases (state in {state_dir})")
        return
    console.table(f"PXE hosts ({state_dir})", ["mac", "install", "armed at", "lease"], rows)


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


host = Collection("host")
host.add_task(network)
host.add_task(diagram)
host.add_task(report)
host.add_task(storage)
host.add_task(xen)
host.add_task(check)

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

ns = Collection()
for collection in (host, pxe, image, guest):
    ns.add_collection(collection)
