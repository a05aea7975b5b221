"""Everything guest.build checks before it touches anything; all problems are reported at once.

The name is a hostname not in use; the IP lies in host.subnet and is nobody else's; memory and
vcpus fit the host; the storage has room; the MAC derived from the name collides with no other.
"""

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set

from pipeline import lvm, mac, xl
from pipeline import subnet as subnet_math
from pipeline.config import GuestConfig, Site, check_hostname
from pipeline.errors import BadInput, Problem
from pipeline.guest import xen_cfg


@dataclass(frozen=True)
class HostFacts:
    """What the host can give guests: memory in bytes and CPUs, and where that was read."""

    memory: int
    cpus: int
    source: str


def host_facts() -> HostFacts:
    """From `xl info` where Xen runs (free memory of the hypervisor), else /proc/meminfo and nproc."""
    text = xl.run("info")
    if text:
        info = xl.parse_info(text)
        try:
            return HostFacts(
                int(info["free_memory"]) << 20, int(info["nr_cpus"]), "xl info (free memory)"
            )
        except (KeyError, ValueError):
            pass
    total = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    return HostFacts(total, os.cpu_count() or 1, "/proc/meminfo (total memory)")


def existing(site: Site, name: str, root: Path, state_dir: Path) -> List[str]:
    """What of guest `name` is already there: its cfg, autostart link, state, volumes, domain."""
    found = []
    for path in (xen_cfg.cfg_path(root, name), xen_cfg.link_path(root, name), state_dir):
        if path.exists() or path.is_symlink():
            found.append(str(path))
    storage = site.host.storage
    if storage.kind == "lvm":
        if lvm.vg(storage.volume_group) is not None:
            names = {row["lv_name"] for row in lvm.lvs(storage.volume_group)}
            for role in ("disk", "swap"):
                if f"{name}-{role}" in names:
                    found.append(f"LV {storage.volume_group}/{name}-{role}")
    else:
        folder = Path(storage.dir) / name
        if folder.exists():
            found.append(str(folder))
    running = xl.run("list")
    if running and any(d.name == name for d in xl.parse_list(running)):
        found.append(f"running domain {name}")
    return found


def check(
    site: Site,
    name: str,
    root: Path,
    state_dir: Path,
    facts: HostFacts,
    force: bool = False,
) -> GuestConfig:
    """The guest's config when everything fits; BadInput listing every problem otherwise."""
    prefix = f"guests.{name}"
    problems: List[Problem] = []
    try:
        check_hostname(name)
    except ValueError as exc:
        problems.append(Problem("--name", name, str(exc)))
    guest = site.guests.get(name)
    if guest is None:
        problems.append(Problem(prefix, None, "is not in the site config (guests: in invoke.yaml)"))
        raise BadInput.of(problems)

    present = existing(site, name, root, state_dir) if not problems else []
    if any(item.startswith("running domain") for item in present):
        problems.append(
            Problem("--name", name, "is running under Xen: xl shutdown it before rebuilding")
        )
    elif present and not force:
        problems.append(
            Problem(
                "--name", name, "exists already (" + ", ".join(present) + "); --force rebuilds it"
            )
        )

    problems += _network(site, name, guest, root)
    problems += boot_problems(name, guest.boot)
    if guest.memory > facts.memory:
        problems.append(
            Problem(
                f"{prefix}.memory",
                guest.memory >> 20,
                f"MiB is more than the host has ({facts.memory >> 20} MiB, {facts.source})",
            )
        )
    if guest.vcpus > facts.cpus:
        problems.append(
            Problem(f"{prefix}.vcpus", guest.vcpus, f"is more than the host's {facts.cpus} CPUs")
        )
    problems += _storage(site, name, guest, force)
    if problems:
        raise BadInput.of(problems)
    return guest


def boot_problems(name: str, boot: str, version=None) -> List[Problem]:
    """pvh needs Xen 4.10 or newer. The version is `xl info`'s where Xen runs, else the installed
    hypervisor package's (Xen installed, host not rebooted yet); unknown is refused too, since
    a PVH guest on an older Xen does not start. `version`: ((major, minor) or None, source)."""
    if boot != "pvh":
        return []
    found, source = version or xl.host_version()
    since = ".".join(str(n) for n in xen_cfg.PVH_SINCE)
    if found is None:
        why = f"needs Xen {since} or newer, and this host's Xen version is unknown ({source})"
    elif tuple(found) < xen_cfg.PVH_SINCE:
        why = (
            f"needs Xen {since} or newer; this host has Xen {found[0]}.{found[1]} ({source}),"
            " which has no PVH guests: use boot: pvgrub"
        )
    else:
        return []
    return [Problem(f"guests.{name}.boot", boot, why)]


def _network(site: Site, name: str, guest: GuestConfig, root: Path) -> List[Problem]:
    prefix = f"guests.{name}"
    problems = []
    net = site.host.subnet
    # Site has checked the IP against the subnet, the bridge and the other guests of the config.
    if guest.ip is None:
        problems.append(Problem(f"{prefix}.ip", None, f"is required (an address in {net})"))
    else:
        owner = _cfg_owner(name, root, guest.ip)
        if owner:
            problems.append(Problem(f"{prefix}.ip", str(guest.ip), f"is {owner}'s already"))
    if guest.gateway is not None:
        why = subnet_math.host_address_problem(net, guest.gateway)
        if why is None and guest.gateway == guest.ip:
            why = "is the guest's own address"
        if why:
            problems.append(Problem(f"{prefix}.gateway", str(guest.gateway), why))
    mine = mac.derive(name)
    names: Set[str] = set(site.guests) | set(xen_cfg.other_cfgs(root, name)) | {name}
    for found_mac, owners in mac.collisions(sorted(names)).items():
        if name in owners:
            others = ", ".join(o for o in owners if o != name)
            problems.append(Problem("--name", name, f"derives MAC {found_mac}, as {others} does"))
    for other, text in xen_cfg.other_cfgs(root, name).items():
        if mine in xen_cfg.vif_addresses(text)[1]:
            problems.append(Problem("--name", name, f"derives MAC {mine}, which {other}.cfg uses"))
    return problems


def _cfg_owner(name: str, root: Path, ip: ipaddress.IPv4Address) -> Optional[str]:
    """The other /etc/xen cfg whose vif line has `ip`, if one has."""
    for other, text in xen_cfg.other_cfgs(root, name).items():
        if str(ip) in xen_cfg.vif_addresses(text)[0]:
            return f"{other}.cfg"
    return None


def _storage(site: Site, name: str, guest: GuestConfig, force: bool) -> List[Problem]:
    storage = site.host.storage
    if storage.kind != "lvm":
        folder = Path(storage.dir)
        if folder.exists() and not folder.is_dir():
            return [Problem("host.storage.dir", storage.dir, "is not a directory")]
        return []
    vg = lvm.vg(storage.volume_group)
    if vg is None:
        return [
            Problem(
                "host.storage.volume_group",
                storage.volume_group,
                "does not exist (invoke host.storage makes it)",
            )
        ]
    extent = int(vg["vg_extent_size"])
    free = int(vg["vg_free"])
    if force:  # --force frees this guest's old volumes first
        for row in lvm.lvs(storage.volume_group):
            if row["lv_name"] in (f"{name}-disk", f"{name}-swap"):
                free += int(row["lv_size"])
    need = sum(-(-size // extent) * extent for size in (guest.disk, guest.swap))
    if need > free:
        return [
            Problem(
                f"guests.{name}.disk",
                f"{guest.disk >> 20}M + swap {guest.swap >> 20}M",
                f"do not fit: VG {storage.volume_group} has {free >> 20} MiB free",
            )
        ]
    return []
