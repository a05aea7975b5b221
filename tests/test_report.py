"""`invoke host.report` on the lab's namespaces and a VG on a loop device: the numbers it prints
are the ones `ip -j`, `vgs`/`pvs --reportformat json` and `bridge` give."""

import json
import os
import re
import uuid

import pytest

from pipeline.lab import report as lab_report
from pipeline.lab.report import lvm_size
from pipeline.mac import derive
from tests.conftest import invoke, ip_json, lab_with_guest, sh


def lvm_json(command: str, fields: str, *args: str) -> list:
    out = sh(command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, *args)
    return json.loads(out.stdout)["report"][0][command[:-1]]


@pytest.fixture
def volume_group(loop_disk):
    """A VG on a 1 GiB loop device, with one (inactive) 100 MiB LV so some extents are in use."""
    device = loop_disk("1G")
    name = f"xltest{uuid.uuid4().hex[:6]}"
    sh("pvcreate", "-ff", "-y", device)
    sh("vgcreate", name, device)
    sh("lvcreate", "--driverloaded", "n", "--activate", "n", "--zero", "n", "--yes",
       "--name", "disk", "--size", "100m", name)  # fmt: skip
    return name, device


def report(lab, site, *args):
    return invoke(
        "-f", str(site), "host.report", "--netns", lab["host"], "--root", str(lab["root"]), *args
    )


def field(text: str, key: str) -> str:
    """The value of a pvdisplay-style `  Key   value` line (the first one after the last header)."""
    match = re.search(rf"^  {re.escape(key)} +(.+)$", text, re.M)
    assert match, (key, text)
    return match.group(1)


def block(text: str, title: str) -> str:
    return text.split(f"== {title} ==\n", 1)[1].split("\n== ", 1)[0]


def test_report_shows_what_the_tools_show(lab, volume_group, tmp_path):
    vg_name, device = volume_group
    lab_with_guest(lab)
    xen = lab["root"] / "etc/xen"
    (xen / "auto").mkdir(parents=True)
    (xen / "guest-01.cfg").write_text("name = 'guest-01'\n")
    os.symlink("/etc/xen/guest-01.cfg", str(xen / "auto/guest-01.cfg"))
    site = tmp_path / "site.yaml"
    site.write_text(
        f"host:\n  subnet: 192.0.2.0/28\n  storage:\n    volume_group: {vg_name}\n"
        "guests:\n  guest-01:\n    ip: 192.0.2.2\n  guest-02:\n    ip: 192.0.2.3\n    autostart: false\n"
    )
    r = report(lab, site)
    assert r.returncode == 0, r.stderr
    out = r.stdout

    # PV and VG: pvdisplay's and vgdisplay's own lines, and the bytes vgs and pvs give.
    (vg,) = lvm_json(
        "vgs",
        "vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,pv_count,lv_count",
        vg_name,
    )
    (pv,) = lvm_json("pvs", "pv_name,pv_size,dev_size,pv_pe_count,pv_pe_alloc_count", device)
    storage = block(out, "Storage (pvdisplay, vgdisplay)")
    pv_part, vg_part = storage.split("--- Volume group ---")
    pvdisplay = sh("pvdisplay", device).stdout
    for key in ("PV Name", "VG Name", "PV Size", "PE Size", "Total PE", "Free PE", "Allocated PE"):
        assert field(pv_part, key) == field(pvdisplay, key).rstrip(), key
    vgdisplay = sh("vgdisplay", vg_name).stdout
    for key in ("VG Name", "Cur LV", "Cur PV", "VG Size", "PE Size", "Total PE",
                "Alloc PE / Size", "Free  PE / Size"):  # fmt: skip
        assert field(vg_part, key) == field(vgdisplay, key).rstrip(), key
    assert field(pv_part, "PV Name") == pv["pv_name"] == device
    assert field(pv_part, "PV Size") == "1.00 GiB / not usable 4.00 MiB"
    assert field(pv_part, "Total PE") == pv["pv_pe_count"]
    assert field(pv_part, "Allocated PE") == pv["pv_pe_alloc_count"] == "25"  # 100 MiB in 4 MiB
    assert int(field(pv_part, "Free PE")) == int(pv["pv_pe_count"]) - 25
    assert f"(bytes: device {pv['dev_size']}, usable {pv['pv_size']}, PE 4194304)" in pv_part
    assert field(vg_part, "Total PE") == vg["vg_extent_count"]
    assert field(vg_part, "Free  PE / Size").startswith(f"{vg['vg_free_count']} / ")
    assert (
        f"(bytes: size {vg['vg_size']}, free {vg['vg_free']}, PE {vg['vg_extent_size']})" in vg_part
    )
    assert field(vg_part, "Cur PV") == vg["pv_count"] == "1"
    assert field(vg_part, "Cur LV") == vg["lv_count"] == "1"

    # Addresses as ip -j addr gives them: every link, its MAC and every IPv4 address.
    addresses = block(out, "Addresses (ip addr)")
    for link in ip_json(lab["host"], "addr", "show"):
        head = re.search(rf"^{link['ifindex']}: {re.escape(link['ifname'])}: .*$", addresses, re.M)
        assert head, (link["ifname"], addresses)
        assert f"state {link['operstate']}" in head.group(0)
        assert link["address"] in addresses
        for a in link["addr_info"]:
            if a["family"] == "inet":
                assert f"    inet {a['local']}/{a['prefixlen']}" in addresses
    assert re.search(r"^\d+: vif1\.0: <UP> master xenbr0 ", addresses, re.M)

    # The bridge as brctl show would print it: name, id, STP, interfaces.
    (br,) = ip_json(lab["host"], "-d", "link", "show", "xenbr0")
    # ip prints the id's MAC without leading zeros (8000.a:25:...); brctl with them.
    priority, mac = br["linkinfo"]["info_data"]["bridge_id"].split(".")
    bridge_id = f"{int(priority, 16):04x}." + "".join(f"{int(x, 16):02x}" for x in mac.split(":"))
    assert bridge_id == "8000." + br["address"].replace(":", "")
    bridges = block(out, "Bridges (brctl show)").splitlines()
    assert bridges[0].split() == ["bridge", "name", "bridge", "id", "STP", "enabled", "interfaces"]
    assert bridges[1].split() == ["xenbr0", bridge_id, "no", "vif1.0"]

    routing = block(out, "Forwarding and routes (ip route)")
    assert "IPv4 forwarding: on" in routing
    assert "default gateway: 198.51.100.1 via eth0" in routing
    assert "  192.0.2.0/28 dev xenbr0 src 192.0.2.1" in routing

    assert "Xen is not running here" in block(out, "Domains (xl list)")

    guests = {
        line.split()[0]: line
        for line in block(out, "Guests and autostart (/etc/xen/auto)").splitlines()[1:]
        if line
    }
    assert guests["guest-01"].split()[:4] == [
        "guest-01",
        "192.0.2.2/28",
        derive("guest-01"),
        "vif1.0",
    ]
    assert guests["guest-01"].split()[-2:] == ["yes", "yes"]  # linked; the site says autostart
    assert guests["guest-02"].split() == [
        "guest-02",
        "192.0.2.3/28",
        derive("guest-02"),
        "-",
        "-",
        "no",
        "no",
    ]


def test_markdown_section_with_the_diagram_beside_it(lab, tmp_path):
    lab_with_guest(lab)
    site = tmp_path / "site.yaml"
    site.write_text("host:\n  subnet: 192.0.2.0/28\n  storage:\n    kind: dir\n    dir: /srv/xen\n")
    md = tmp_path / "out" / "lab-report.md"
    md.parent.mkdir()
    r = report(lab, site, "--markdown", str(md))
    assert r.returncode == 0, r.stderr
    text = md.read_text()
    assert text.startswith("## ")
    assert "](lab.svg)" in text
    assert (md.parent / "lab.svg").read_text().lstrip().startswith("<?xml")
    assert "192.0.2.1/28" in (md.parent / "lab.svg").read_text()
    for title in ("Storage (pvdisplay, vgdisplay)", "Bridges (brctl show)", "Addresses (ip addr)"):
        assert f"### {title}\n\n```text\n" in text
    assert "image files under /srv/xen" in text
    assert text.count("```") % 2 == 0

    again = report(lab, site, "--markdown", str(md))
    assert again.returncode == 0 and "write " not in again.stdout

    picture = tmp_path / "pics" / "net.png"
    picture.parent.mkdir()
    r = report(lab, site, "--markdown", str(md), "--diagram-file", str(picture))
    assert r.returncode == 0, r.stderr
    assert "](../pics/net.png)" in md.read_text()
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_missing_vg_and_bad_flags(lab, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("host:\n  subnet: 192.0.2.0/28\n  storage:\n    volume_group: xl-absent-vg\n")
    r = report(lab, site)
    assert r.returncode == 0, r.stderr
    assert "no volume group xl-absent-vg (invoke host.storage makes it)" in r.stdout
    assert "(no bridges: invoke host.network makes the guests' bridge)" in r.stdout
    assert "default gateway: 198.51.100.1 via eth0" in r.stdout

    bad = report(lab, site, "--markdown", str(tmp_path / "r.txt"))
    assert bad.returncode == 2 and "--markdown = " in bad.stderr
    bad = report(lab, site, "--diagram-file", str(tmp_path / "x.svg"))
    assert bad.returncode == 2 and "needs --markdown" in bad.stderr
    assert not (tmp_path / "r.txt").exists() and not (tmp_path / "x.svg").exists()


def test_sizes_read_as_lvm_prints_them():
    assert [lvm_size(n) for n in (0, 4 << 20, 1 << 30, 1020 << 20, 10**12, 100 * (1 << 30) + 1)] == [
        "0", "4.00 MiB", "1.00 GiB", "1020.00 MiB", "<931.32 GiB", "<100.00 GiB",
    ]  # fmt: skip


PARTS = [lab_report.Section("Bridges (brctl show)", ["bridge name     bridge id"])]


def test_a_markdown_page_links_lab_svg_beside_it_unless_told_otherwise(tmp_path):
    page = tmp_path / "docs" / "lab.md"
    assert lab_report.diagram_for(page) == tmp_path / "docs" / "lab.svg"
    assert lab_report.diagram_for(page, str(tmp_path / "pics" / "net.png")) == (
        tmp_path / "pics" / "net.png"
    )


@pytest.mark.parametrize(
    "diagram, link", [("docs/lab.svg", "lab.svg"), ("pics/net.png", "../pics/net.png")]
)
def test_the_markdown_page_links_its_diagram_relative_to_itself(tmp_path, diagram, link):
    text = lab_report.markdown_page(PARTS, tmp_path / "docs" / "lab.md", tmp_path / diagram)
    assert text == lab_report.to_markdown(PARTS, link)
    assert f"]({link})\n" in text
    assert "### Bridges (brctl show)\n\n```text\nbridge name     bridge id\n```\n" in text
