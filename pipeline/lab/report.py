"""The lab's facts on one page, as the tools a person would run show them: pvdisplay and
vgdisplay, xl list, brctl show, ip addr, the forwarding switch and routes, and which guests start
at boot. Plain text for the terminal, or a Markdown section with the diagram linked.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pipeline import lvm
from pipeline.lab.read import Lab

DIAGRAM = "lab.svg"  # the drawing a Markdown page links when none is named, beside the page
_LVM_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def lvm_size(size: int) -> str:
    """A size as pvdisplay and vgdisplay print it: two decimals in the largest binary unit that
    gives at least 1, with '<' when the figure is rounded down (never overstated)."""
    if size == 0:
        return "0"
    for unit, factor in _LVM_UNITS:
        if size >= factor:
            hundredths = size * 100 // factor
            exact = hundredths * factor == size * 100
            return f"{'' if exact else '<'}{hundredths // 100}.{hundredths % 100:02d} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Storage:
    kind: str  # lvm, dir, or no-lvm (the LVM tools are missing)
    volume_group: str
    dir: str
    pvs: List[lvm.PvFacts]
    vg: Optional[Dict[str, str]]  # vgs' row, sizes in bytes


def read_storage(kind: str, volume_group: str, directory: str) -> Storage:
    if kind != "lvm" or shutil.which("vgs") is None:
        # No LVM tools: the rest of the report still stands; the section says so.
        kind = kind if kind != "lvm" else "no-lvm"
        return Storage(kind, volume_group, directory, [], None)
    return Storage(kind, volume_group, directory, lvm.pv_facts(volume_group), lvm.vg(volume_group))


@dataclass(frozen=True)
class Section:
    title: str
    lines: List[str]  # preformatted, as the named command would print them


def _pairs(rows: Sequence[Tuple[str, object]]) -> List[str]:
    return [f"  {key:<21} {value}" for key, value in rows]


def storage_section(storage: Storage) -> Section:
    """pvdisplay's and vgdisplay's lines for the facts they share with the lab's notes, each
    block followed by the exact byte counts (`vgs --units b`)."""
    title = "Storage (pvdisplay, vgdisplay)"
    if storage.kind == "no-lvm":
        return Section(title, ["LVM's tools are not installed (Debian package lvm2; ./setup)"])
    if storage.kind != "lvm":
        return Section(title, [f"guests' disks are image files under {storage.dir} (no LVM)"])
    if storage.vg is None:
        return Section(
            title,
            [f"no volume group {storage.volume_group} (invoke host.storage makes it)"],
        )
    lines: List[str] = []
    for pv in storage.pvs:
        device = pv.dev_size
        unusable = device - pv.total_pe * pv.pe_size
        size = lvm_size(device) + (f" / not usable {lvm_size(unusable)}" if unusable else "")
        lines.append("  --- Physical volume ---")
        lines += _pairs(
            [
                ("PV Name", pv.pv_name),
                ("VG Name", pv.vg_name),
                ("PV Size", size),
                ("PE Size", lvm_size(pv.pe_size)),
                ("Total PE", pv.total_pe),
                ("Free PE", pv.free_pe),
                ("Allocated PE", pv.allocated_pe),
            ]
        )
        lines += [f"  (bytes: device {device}, usable {pv.pv_size}, PE {pv.pe_size})", ""]
    vg = storage.vg
    extent = int(vg["vg_extent_size"])
    total, free = int(vg["vg_extent_count"]), int(vg["vg_free_count"])
    lines.append("  --- Volume group ---")
    lines += _pairs(
        [
            ("VG Name", vg["vg_name"]),
            ("Cur LV", vg["lv_count"]),
            ("Cur PV", vg["pv_count"]),
            ("VG Size", lvm_size(int(vg["vg_size"]))),
            ("PE Size", lvm_size(extent)),
            ("Total PE", total),
            ("Alloc PE / Size", f"{total - free} / {lvm_size((total - free) * extent)}"),
            ("Free  PE / Size", f"{free} / {lvm_size(int(vg['vg_free']))}"),
        ]
    )
    lines.append(f"  (bytes: size {vg['vg_size']}, free {vg['vg_free']}, PE {extent})")
    return Section(title, lines)


def domains_section(lab: Lab) -> Section:
    title = "Domains (xl list)"
    if lab.xen is None:
        return Section(
            title,
            [
                "Xen is not running here: no xl, or xl cannot reach a hypervisor",
                "(invoke host.xen makes Xen the default boot; reboot, then invoke host.check)",
            ],
        )
    # The columns xl list prints.
    lines = [f"{'Name':<40}{'ID':>6}{'Mem':>6} VCPUs\tState\tTime(s)"]
    for d in lab.xen.domains:
        lines.append(
            f"{d.name:<40}{d.id:>6}{d.memory_mib:>6}{d.vcpus:>6}     {d.state}{d.time_s:>9.1f}"
        )
    return Section(title, lines)


def bridges_section(lab: Lab) -> Section:
    widths = (16, 24, 12)
    lines = ["bridge name     bridge id               STP enabled interfaces"]
    for bridge in lab.topology.bridges:
        members = bridge.members or [""]
        first = [bridge.name, bridge.bridge_id, "yes" if bridge.stp else "no"]
        lines.append(("".join(f"{c:<{w}}" for c, w in zip(first, widths)) + members[0]).rstrip())
        lines += [" " * sum(widths) + m for m in members[1:]]
    if not lab.topology.bridges:
        lines.append("(no bridges: invoke host.network makes the guests' bridge)")
    return Section("Bridges (brctl show)", lines)


def addresses_section(lab: Lab) -> Section:
    names = {link.index: link.name for link in lab.topology.links}
    lines = []
    for link in lab.topology.links:
        head = f"{link.index}: {link.name}: <{'UP' if link.up else 'DOWN'}>"
        if link.master is not None:
            head += f" master {names.get(link.master, link.master)}"
        head += f" state {link.operstate}"
        kind = "loopback" if link.name == "lo" else "ether"
        lines += [head, f"    link/{kind} {link.mac}" + (f" ({link.kind})" if link.kind else "")]
        lines += [f"    inet {a}" for a in link.addresses]
    return Section("Addresses (ip addr)", lines)


def routing_section(lab: Lab) -> Section:
    topo = lab.topology
    lines = [f"IPv4 forwarding: {'on' if topo.forwarding else 'off'} (net.ipv4.ip_forward)"]
    uplink = topo.uplink
    if topo.gateway is not None:
        lines.append(
            f"default gateway: {topo.gateway} via {uplink.name if uplink else '?'} (the uplink)"
        )
    else:
        lines.append("default gateway: none (no default route)")
    lines += [f"  {r}" for r in topo.routes]
    return Section("Forwarding and routes (ip route)", lines)


def guests_section(lab: Lab, site_autostart: Dict[str, bool]) -> Section:
    header = ("guest", "eth0", "MAC", "vif", "domain", "autostart", "site says")
    rows = [header]
    for g in lab.guests:
        auto = lab.autostarts.get(g.name)
        rows.append(
            (
                g.name,
                g.address or "-",
                g.mac or "-",
                g.vif or "-",
                str(g.domain_id) if g.domain_id is not None else "-",
                auto.note if auto else "no",
                ("yes" if site_autostart[g.name] else "no") if g.name in site_autostart else "-",
            )
        )
    if len(rows) == 1:
        return Section("Guests and autostart (/etc/xen/auto)", ["(no guests in the site config)"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return Section("Guests and autostart (/etc/xen/auto)", lines)


def sections(lab: Lab, storage: Storage, site_autostart: Dict[str, bool]) -> List[Section]:
    return [
        storage_section(storage),
        domains_section(lab),
        bridges_section(lab),
        addresses_section(lab),
        routing_section(lab),
        guests_section(lab, site_autostart),
    ]


def to_text(parts: Sequence[Section]) -> str:
    out = []
    for part in parts:
        out += [f"== {part.title} ==", *part.lines, ""]
    return "\n".join(out)


def to_markdown(parts: Sequence[Section], diagram: Optional[str] = None) -> str:
    """One Markdown section: a heading, the diagram linked (a path relative to the file), and
    each part as a fenced block, as the command would print it."""
    out = ["## The lab as it is", ""]
    if diagram:
        alt = "The guests' network: Internet, router, uplink, dom0, bridge, vifs, guests"
        out += [f"![{alt}]({diagram})", ""]
    for part in parts:
        out += [f"### {part.title}", "", "```text", *part.lines, "```", ""]
    return "\n".join(out)


def diagram_for(page: Path, diagram_file: Optional[str] = None) -> Path:
    """The drawing the Markdown `page` links: `diagram_file`, else lab.svg beside the page."""
    return Path(diagram_file).resolve() if diagram_file else Path(page).with_name(DIAGRAM)


def markdown_page(parts: Sequence[Section], page: Path, diagram: Path) -> str:
    """The Markdown text for the file `page`, the drawing at `diagram` linked relative to it."""
    return to_markdown(parts, os.path.relpath(str(diagram), str(Path(page).parent)))
