"""`invoke host.storage` on real parts: sparse disks behind loop devices, real partition tables and LVM.

Every disk comes from the `loop_disk` fixture, which removes the VGs and PVs on it and the loop
device after the test, also when it fails. VG names are unique per test so parallel runs of
other tests that use LVM never see them.
"""

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from pipeline.config import StorageConfig
from pipeline.host import partitions
from pipeline.host import storage as host_storage
from pipeline.runner import Runner
from tests.conftest import invoke, sh

GiB = 1 << 30
LVM_GPT = "E6D6D379-F507-44C2-A23C-238F2A3DF928"


def vg_name() -> str:
    return f"XlTest{uuid.uuid4().hex[:8]}"


def label(device: str, table: str, *parts: str) -> None:
    """Write a partition table with `parts` (sfdisk lines) and let the kernel see it."""
    script = f"label: {table}\n" + "".join(p + "\n" for p in parts)
    proc = sh_input(["sfdisk", "-q", "--wipe", "never", device], script)
    assert proc.returncode == 0, proc.stderr
    sh("partx", "-u", device)


def sh_input(argv, text):
    return subprocess.run(argv, input=text, text=True, capture_output=True)


def table(device: str) -> dict:
    return json.loads(sh("sfdisk", "--json", device).stdout)["partitiontable"]


def pvs() -> list:
    out = sh(
        "pvs", "--reportformat", "json", "--units", "b", "--nosuffix",
        "-o", "pv_name,vg_name,pv_size",
    ).stdout  # fmt: skip
    return json.loads(out)["report"][0]["pv"]


def vgs(name: str) -> list:
    out = sh(
        "vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
        "-o", "vg_name,vg_size,pv_count", name, check=False,
    ).stdout  # fmt: skip
    return json.loads(out)["report"][0]["vg"] if out.strip() else []


def storage(*args: str):
    return invoke("host.storage", *args)


@pytest.fixture
def gpt_disk(loop_disk):
    """The lab's disk: 300G, GPT, a 20G first partition (the installed /) and the rest free."""
    device = loop_disk("300G")
    label(device, "gpt", "size=20G, type=L")
    return device


def test_makes_partition_pv_and_vg_then_changes_nothing(gpt_disk):
    vg = vg_name()
    first = storage("--device", gpt_disk, "--size", "100G", "--volume-group", vg)
    assert first.returncode == 0, first.stderr

    parts = table(gpt_disk)["partitions"]
    assert len(parts) == 2
    new = parts[1]
    assert new["node"] == gpt_disk + "p2"
    assert new["size"] * 512 == 100 * GiB
    assert new["type"] == LVM_GPT
    assert new["start"] % 2048 == 0  # MiB-aligned
    assert parts[0]["size"] * 512 == 20 * GiB  # the existing partition is as it was

    assert [p["pv_name"] for p in pvs() if p["vg_name"] == vg] == [gpt_disk + "p2"]
    (row,) = vgs(vg)
    assert row["pv_count"] == "1"
    assert 99 * GiB < int(row["vg_size"]) <= 100 * GiB
    # The report has pvdisplay's facts.
    for word in (gpt_disk + "p2", vg, "PE size", "total PE", "free PE"):
        assert word in first.stdout

    before = table(gpt_disk)
    again = storage("--device", gpt_disk, "--size", "100G", "--volume-group", vg, "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["changed"] is False
    (pv,) = report["physical_volumes"]
    assert pv["pv_name"] == gpt_disk + "p2" and pv["vg_name"] == vg
    assert pv["pe_size"] == 4 * 2**20 and pv["total_pe"] == pv["free_pe"] > 25000
    assert table(gpt_disk) == before
    assert "no changes" in storage("--device", gpt_disk, "--volume-group", vg).stdout


def test_too_large_a_size_is_bad_input_and_changes_nothing(gpt_disk):
    before = table(gpt_disk)
    proc = storage("--device", gpt_disk, "--size", "300G", "--volume-group", vg_name())
    assert proc.returncode == 2, proc.stderr
    assert "host.storage.size" in proc.stderr and "280G" in proc.stderr
    assert table(gpt_disk) == before
    assert not [p for p in pvs() if p["pv_name"].startswith(gpt_disk)]


def test_a_vg_of_that_name_elsewhere_is_bad_input(gpt_disk, loop_disk):
    vg = vg_name()
    other = loop_disk("1G")
    sh("pvcreate", other)
    sh("vgcreate", vg, other)
    before = table(gpt_disk)

    proc = storage("--device", gpt_disk, "--size", "100G", "--volume-group", vg)

    assert proc.returncode == 2, proc.stderr
    assert "host.storage.volume_group" in proc.stderr and other in proc.stderr
    assert table(gpt_disk) == before
    (row,) = vgs(vg)
    assert row["pv_count"] == "1"


def test_no_free_region_is_bad_input(loop_disk):
    device = loop_disk("2G")
    label(device, "gpt", "type=L")  # one partition over the whole disk
    before = table(device)
    proc = storage("--device", device, "--volume-group", vg_name())
    assert proc.returncode == 2
    assert "no free region" in proc.stderr
    assert table(device) == before


def test_msdos_table_and_whole_free_region(loop_disk):
    device = loop_disk("3G")
    label(device, "dos", "size=1G, type=83")
    vg = vg_name()
    proc = storage("--device", device, "--volume-group", vg, "--size", "")
    assert proc.returncode == 0, proc.stderr
    parts = table(device)["partitions"]
    assert [p["type"] for p in parts] == ["83", "8e"]
    # All of the free region: from the end of the first partition to the end of the disk.
    assert parts[1]["start"] == parts[0]["start"] + parts[0]["size"]
    assert (parts[1]["start"] + parts[1]["size"]) * 512 == 3 * GiB
    assert vgs(vg)


@pytest.fixture
def mounted(tmp_path):
    """Mount a device for the test (as the installed / is on the lab's disk); unmounted after."""
    made = []

    def mount(device: str) -> Path:
        point = tmp_path / f"mnt{len(made)}"
        point.mkdir()
        sh("mount", device, str(point))
        made.append(point)
        return point

    yield mount
    for point in reversed(made):
        sh("umount", str(point), check=False)


def test_the_disk_in_use_gets_its_partition(loop_disk, mounted):
    """Like the lab's disk, whose first partition is the mounted /: the new one is added live."""
    device = loop_disk("40G")
    label(device, "dos", "size=20G, type=83")
    sh("mkfs.ext4", "-q", device + "p1")
    root = mounted(device + "p1")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("xenlab-host\n")
    vg = vg_name()

    proc = storage("--device", device, "--size", "10G", "--volume-group", vg)

    assert proc.returncode == 0, proc.stderr
    assert [p["pv_name"] for p in pvs() if p["vg_name"] == vg] == [device + "p2"]
    assert (root / "etc/hostname").read_text() == "xenlab-host\n"
    assert [p["type"] for p in table(device)["partitions"]] == ["83", "8e"]


def has_table(device: str) -> bool:
    return sh("sfdisk", "--json", device, check=False).returncode == 0


def test_a_blank_disk_gets_a_gpt_with_one_lvm_partition(loop_disk):
    device = loop_disk("8G")
    vg = vg_name()
    proc = storage("--device", device, "--size", "", "--volume-group", vg)
    assert proc.returncode == 0, proc.stderr
    got = table(device)
    assert got["label"] == "gpt"
    (part,) = got["partitions"]
    assert part["node"] == device + "p1" and part["type"] == LVM_GPT
    assert part["start"] == 2048 and 7 * GiB < part["size"] * 512 < 8 * GiB
    assert [p["pv_name"] for p in pvs() if p["vg_name"] == vg] == [device + "p1"]


def test_a_disk_holding_a_filesystem_is_refused(loop_disk):
    device = loop_disk("1G")
    sh("mkfs.ext4", "-q", "-L", "whole", device)
    proc = storage("--device", device, "--volume-group", vg_name())
    assert proc.returncode == 2
    assert "ext4" in proc.stderr
    assert sh("blkid", "-p", "-s", "LABEL", "-o", "value", device).stdout.strip() == "whole"
    assert not has_table(device)


def test_a_failure_on_a_blank_disk_leaves_it_blank(loop_disk):
    """Data blkid cannot see on the whole disk (a filesystem at 1 MiB): pvcreate refuses it, the
    new label is wiped again and the filesystem is still there."""
    device = loop_disk("2G")
    probe = sh("losetup", "-f", "--show", "-o", str(2**20), device).stdout.strip()
    try:
        sh("mkfs.ext4", "-q", "-L", "hidden", probe)
    finally:
        sh("losetup", "-d", probe)

    proc = storage("--device", device, "--size", "", "--volume-group", vg_name())

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rolled back" in proc.stdout
    assert not has_table(device)
    probe = sh("losetup", "-f", "--show", "-o", str(2**20), device).stdout.strip()
    try:
        assert sh("blkid", "-p", "-s", "LABEL", "-o", "value", probe).stdout.strip() == "hidden"
    finally:
        sh("losetup", "-d", probe)


def test_dry_run_changes_nothing(gpt_disk):
    before = table(gpt_disk)
    vg = vg_name()
    proc = storage("--device", gpt_disk, "--size", "100G", "--volume-group", vg, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"would create partition {gpt_disk}p2" in proc.stdout
    assert f"would create VG {vg}" in proc.stdout
    assert table(gpt_disk) == before
    assert vgs(vg) == []


def test_data_in_the_free_region_is_never_overwritten(gpt_disk):
    """A filesystem left in the free space: pvcreate refuses it, the new partition is rolled back."""
    start = 20 * GiB + 2**20  # where the new partition would begin
    probe = sh(
        "losetup", "-f", "--show", "-o", str(start), "--sizelimit", str(64 << 20), gpt_disk
    ).stdout.strip()
    try:
        sh("mkfs.ext4", "-q", "-L", "keepme", probe)
    finally:
        sh("losetup", "-d", probe)
    before = table(gpt_disk)

    proc = storage("--device", gpt_disk, "--size", "10G", "--volume-group", vg_name())

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rolled back: create partition" in proc.stdout
    assert table(gpt_disk) == before
    probe = sh(
        "losetup", "-f", "--show", "-o", str(start), "--sizelimit", str(64 << 20), gpt_disk
    ).stdout.strip()
    try:
        assert sh("blkid", "-p", "-s", "LABEL", "-o", "value", probe).stdout.strip() == "keepme"
    finally:
        sh("losetup", "-d", probe)


def test_an_empty_partition_becomes_the_pv(loop_disk):
    device = loop_disk("4G")
    label(device, "gpt", "size=1G, type=L", "size=1G, type=L")
    vg = vg_name()
    sh("mkfs.ext4", "-q", device + "p1")
    before = table(device)

    taken = storage("--device", device + "p1", "--volume-group", vg)
    assert taken.returncode == 2
    assert "ext4" in taken.stderr

    proc = storage("--device", device + "p2", "--volume-group", vg)  # the site's 100G: n/a
    assert proc.returncode == 0, proc.stderr
    assert "does not apply" in proc.stdout
    assert [p["pv_name"] for p in pvs() if p["vg_name"] == vg] == [device + "p2"]
    assert table(device) == before
    assert "no changes" in storage("--device", device + "p2", "--volume-group", vg).stdout


def test_kind_dir_makes_only_the_image_directory(tmp_path):
    """No LVM: the guests' disks are files under storage.dir (here under a runner's root)."""
    config = StorageConfig(kind="dir", dir="/srv/xen-images", device="/dev/nonexistent")
    result = host_storage.configure(config, Runner(root=tmp_path))
    assert (tmp_path / "srv/xen-images").is_dir() and result.changed
    assert host_storage.configure(config, Runner(root=tmp_path)).changed is False


def test_bad_names_fail_before_anything(gpt_disk):
    proc = storage("--device", gpt_disk, "--volume-group", "-bad")
    assert proc.returncode == 2
    assert "host.storage.volume_group" in proc.stderr
    proc = storage("--device", "/dev/nonexistent-xenlab", "--volume-group", vg_name())
    assert proc.returncode == 2
    assert "host.storage.device" in proc.stderr


# The parsing, on recorded sfdisk output.
FREE_TEXT = """Unpartitioned space /dev/loop0: 280 GiB, 300646645248 bytes, 587200479 sectors
Units: sectors of 1 * 512 = 512 bytes
Sector size (logical/physical): 512 bytes / 512 bytes

   Start       End   Sectors  Size
       34      2047      2014 1007K
41945088 629145566 587200479  280G
"""


def test_parse_free_aligns_and_drops_slivers():
    regions = partitions.parse_free(FREE_TEXT, 512)
    # The 1007K before the first MiB is no region; the end is cut back to a MiB boundary.
    assert regions == [partitions.Region(41945088, 587198464, 512)]
    assert (41945088 + 587198464) % 2048 == 0


def test_partition_nodes_are_named_as_the_kernel_does():
    assert partitions.partition_node("/dev/sdb", 2) == "/dev/sdb2"
    assert partitions.partition_node("/dev/loop3", 2) == "/dev/loop3p2"
    assert partitions.partition_node("/dev/nvme0n1", 1) == "/dev/nvme0n1p1"


BIONIC_JSON = """{
   "partitiontable": {
      "label": "gpt",
      "id": "291E811C-6402-6641-9DA2-304397C34566",
      "device": "/dev/sda",
      "unit": "sectors",
      "firstlba": 2048,
      "lastlba": 20971486,
      "partitions": [
         {"node": "/dev/sda1", "start": 2048, "size": 4194304, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "uuid": "E8462B7D-D66A-414A-98C2-58FC0D0129B9"}
      ]
   }
}"""


def test_parse_table_of_ubuntu_18_04s_sfdisk():
    """sfdisk 2.31 (bionic) gives no sectorsize: 0, so read_table asks the kernel instead."""
    parsed = partitions.parse_table(BIONIC_JSON)
    assert parsed.label == "gpt" and parsed.sector_size == 0
    assert parsed.partitions == [
        partitions.Partition("/dev/sda1", 1, 2048, 4194304, "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
    ]


# The host's own tools: Ubuntu 18.04's Python 3.8, sfdisk 2.31 and lvm2 2.02, in the cached bionic
# chroot of tests/test_bionic_py38.py (built there with the project's ./setup), on a disk made here.
@pytest.fixture(scope="module")
def bionic():
    import shutil
    import tempfile

    from tests.test_bionic_py38 import Bionic, _preconditions, setup_layer

    _preconditions()
    work = Path(tempfile.mkdtemp(prefix="xenlab-bionic-"))
    try:
        yield Bionic(setup_layer(), work)
    finally:
        shutil.rmtree(str(work), ignore_errors=True)


@pytest.mark.slow
def test_host_storage_with_ubuntu_18_04s_tools(bionic, gpt_disk):
    vg = vg_name()
    args = ("host.storage", "--device", gpt_disk, "--size", "100G", "--volume-group", vg)

    first = bionic.invoke(*args)

    assert first.returncode == 0, first.stdout + first.stderr
    parts = table(gpt_disk)["partitions"]
    assert [(p["node"], p["size"] * 512, p["type"]) for p in parts[1:]] == [
        (gpt_disk + "p2", 100 * GiB, LVM_GPT)
    ]
    assert [p["pv_name"] for p in pvs() if p["vg_name"] == vg] == [gpt_disk + "p2"]
    again = bionic.invoke(*args, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    assert table(gpt_disk)["partitions"] == parts
