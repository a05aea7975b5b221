"""The installed host's partition plan: disk sizes around the limit, and what partman is told."""

import subprocess

import pytest

from pipeline import units
from pipeline.config import InstallConfig
from pipeline.errors import BadInput
from pxe import partition_plan
from tests.conftest import invoke, sh

LAB = dict(root_size="20G", swap_size="8G", keep_free="200G")


def limit(**sizes) -> int:
    """The smallest disk the plan accepts for these sizes (computed once, at a roomy disk)."""
    return partition_plan.plan(InstallConfig(disk_size="10T", **sizes)).smallest_disk


def test_lab_plan_keeps_the_free_space():
    plan = partition_plan.plan(InstallConfig(disk_size="500G", **LAB))
    assert plan.free >= 200 * units.GiB
    roles = [p.role for p in plan.partitions]
    assert roles == ["efi", "/", "swap"]
    root = next(p for p in plan.partitions if p.role == "/")
    # partman's MB are 10^6 bytes: the recipe asks for at least the configured size
    assert root.mb * partition_plan.MB >= 20 * units.GiB


def test_exactly_at_the_limit_is_accepted():
    smallest = limit(**LAB)
    plan = partition_plan.plan(InstallConfig(disk_size=smallest, **LAB))
    assert plan.free == 200 * units.GiB
    # and what is left is at least the sum of the partitions' worst cases away from the end
    assert plan.disk_size - plan.used == plan.keep_free


@pytest.mark.parametrize("below", [1, units.MiB, units.GiB])
def test_below_the_limit_is_bad_input_naming_the_field(below):
    smallest = limit(**LAB)
    with pytest.raises(BadInput) as err:
        partition_plan.plan(InstallConfig(disk_size=smallest - below, **LAB))
    problem = err.value.problems[0]
    assert problem.field == "install.disk_size"
    assert str(smallest) in problem.reason
    assert "keep_free" in problem.reason


@pytest.mark.parametrize("above", [0, 1, units.MiB, 100 * units.GiB])
def test_at_or_above_the_limit_leaves_keep_free(above):
    smallest = limit(**LAB)
    plan = partition_plan.plan(InstallConfig(disk_size=smallest + above, **LAB))
    assert plan.free >= plan.keep_free


def test_the_limit_moves_with_every_size():
    base = limit(**LAB)
    assert limit(root_size="21G", swap_size="8G", keep_free="200G") > base
    assert limit(root_size="20G", swap_size="9G", keep_free="200G") > base
    assert limit(root_size="20G", swap_size="8G", keep_free="201G") == base + units.GiB


def test_the_limit_is_sane_for_the_lab():
    # 20G + 8G + 200G, the ESP and a few MiB of alignment: no more than 229G
    assert 228 * units.GiB < limit(**LAB) < 229 * units.GiB


def test_recipe_ends_in_a_placeholder_that_takes_the_rest():
    plan = partition_plan.plan(InstallConfig(disk_size="500G", **LAB))
    recipe = partition_plan.expert_recipe(plan)
    text = " ".join(recipe)
    assert recipe[0] == "xenlab :"
    # partman's last partition is created "full": the placeholder, never formatted or mounted
    assert recipe[-3:] == ["1 1 -1 ext4", "$primary{ } method{ keep }", "."]
    root_mb = next(p.mb for p in plan.partitions if p.role == "/")
    swap_mb = next(p.mb for p in plan.partitions if p.role == "swap")
    assert f"{root_mb} {root_mb} {root_mb} ext4" in text
    assert "mountpoint{ / }" in text
    assert f"{swap_mb} {swap_mb} {swap_mb} linux-swap" in text
    assert "method{ swap }" in text
    # the ESP only on GPT labels (EFI installs); MBR labels skip it
    assert "$iflabel{ gpt }" in text and "method{ efi }" in text
    # every item closes with '.', and no item but the placeholder can grow
    assert text.count(" . ") + text.endswith(" .") == 4
    assert text.count(" -1 ") == 1


def test_pxe_build_refuses_a_small_disk_before_fetching(tmp_path):
    r = invoke(
        "pxe.build",
        "--profile",
        "debian-12",
        "--root",
        str(tmp_path),
        env={"INVOKE_INSTALL_DISK_SIZE": "220G"},
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "install.disk_size" in r.stderr and "220G" in r.stderr
    assert not any(tmp_path.iterdir()), "nothing may be fetched or written"


# --- the recipe through partman-auto's own code ---------------------------------------------------
# partman-auto's lib/recipes.sh (the udeb the installer runs) decodes the recipe and sizes it;
# create_partitions then makes the last line with position "full". Its few calls into partman-base
# and debconf are stubbed here; the recipe code itself is the installer's.
HARNESS = r"""
set -e
NL='
'
TAB='	'
restore_ifs() { IFS=" $TAB$NL"; }
convert_to_megabytes() { echo $(($1 / 1000000)); }
db_get() { RET=""; case "$1" in partman/default_filesystem) RET=ext4;; esac; }
db_metaget() { RET=""; }
logger() { :; }
open_dialog() { :; }
close_dialog() { :; }
read_line() { eval "$1=\$LABEL"; }   # GET_LABEL_TYPE: the disk label partman chose
. "$RECIPES"
DEVICES=$WORK/devices
mkdir -p "$DEVICES/disk" && cd "$DEVICES/disk"
decode_recipe "$RECIPE" ""
echo "name=$name"
echo "min_size=$(min_size)"
free_size=$FREE
expand_scheme
echo "$scheme"
"""


@pytest.fixture(scope="module")
def partman_auto(tmp_path_factory):
    """lib/recipes.sh of Debian 12's partman-auto udeb, from the machine's Debian mirror."""
    import hashlib
    import lzma
    import urllib.request

    from pipeline import apt_sources

    try:
        mirror, _ = apt_sources.debian_mirrors()
    except BadInput:
        pytest.skip("no Debian mirror in this machine's apt sources")
    index = f"{mirror}/dists/bookworm/main/debian-installer/binary-amd64/Packages.xz"
    try:
        with urllib.request.urlopen(index, timeout=60) as resp:
            packages = lzma.decompress(resp.read()).decode()
    except OSError as exc:
        pytest.skip(f"the Debian mirror's installer index is not reachable: {exc}")
    stanza = next(s for s in packages.split("\n\n") if s.startswith("Package: partman-auto\n"))
    fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
    with urllib.request.urlopen(f"{mirror}/{fields['Filename']}", timeout=60) as resp:
        data = resp.read()
    assert hashlib.sha256(data).hexdigest() == fields["SHA256"]
    work = tmp_path_factory.mktemp("partman")
    (work / "partman-auto.udeb").write_bytes(data)
    sh("dpkg-deb", "-x", str(work / "partman-auto.udeb"), str(work / "udeb"))
    return work / "udeb/lib/partman/lib/recipes.sh"


def partman_scheme(recipes, tmp_path, plan, label: str, free_mb: int):
    (tmp_path / "recipe").write_text(" ".join(partition_plan.expert_recipe(plan)))
    env = {
        "RECIPES": str(recipes),
        "RECIPE": str(tmp_path / "recipe"),
        "WORK": str(tmp_path),
        "LABEL": label,
        "FREE": str(free_mb),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    proc = subprocess.run(["sh", "-c", HARNESS], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "name=xenlab"
    min_size = int(lines[1].split("=")[1])
    return min_size, [line.split() for line in lines[2:]]


@pytest.mark.slow
@pytest.mark.parametrize("label", ["msdos", "gpt"])
def test_partman_sizes_the_recipe_as_planned(partman_auto, tmp_path, label):
    install = InstallConfig(disk_size="10T", **LAB)
    plan = partition_plan.plan(InstallConfig(disk_size=limit(**LAB), **LAB))
    free_mb = plan.disk_size // partition_plan.MB
    min_size, scheme = partman_scheme(partman_auto, tmp_path, plan, label, free_mb)
    # choose_recipe only takes a recipe whose minimum fits: it does at the smallest disk
    assert min_size <= free_mb
    sizes = [(line[0], line[2], line[3]) for line in scheme]
    root_mb = partition_plan.plan(install).partitions[1].mb
    swap_mb = partition_plan.plan(install).partitions[2].mb
    expected = [(str(root_mb), str(root_mb), "ext4"), (str(swap_mb), str(swap_mb), "linux-swap")]
    if label == "gpt":  # the ESP only on GPT
        expected.insert(0, ("538", "538", "fat32"))
    # the placeholder is last: create_partitions makes the last line "full", so it, not /,
    # takes the rest; nothing else grew past its size
    expected.append(("1", "-1", "ext4"))
    assert sizes == expected
    assert scheme[-1][4:] == ["$primary{", "}", "method{", "keep", "}"]
