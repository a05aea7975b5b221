"""The installed host's partitions: computed for install.disk_size, checked, and said to partman.

partman-auto gives every partition of a recipe its size except the last one, which it creates
with position "full": that one takes all the free space that is left, whatever its size says
(partman-auto's create_partitions, parted_server's NEW_PARTITION). A recipe of fixed sizes would
therefore still hand the rest of the disk to its last partition. So the recipe ends in a
placeholder partition with method "keep" (created, never formatted or mounted) that soaks up
the rest, and the host's first-boot setup (pxe/templates/late_setup.sh.j2) deletes it from the
partition table: what is left is unpartitioned.

partman counts in MB (10^6 bytes; a size N becomes N*10^6+1 bytes) and aligns each partition to
1 MiB; the plan rounds every size up and adds the alignment, so the free space it promises is a
lower bound of what the disk keeps.
"""

from dataclasses import dataclass
from typing import List

from pipeline import units
from pipeline.config import InstallConfig
from pipeline.errors import BadInput

MB = 1000 * 1000  # partman's unit
ALIGN = units.MiB  # partman aligns partitions to 1 MiB
LABEL = units.MiB  # before the first partition: the label and the first alignment gap
TAIL = units.MiB  # after the last: GPT's backup header (33 sectors), rounded up
ESP_MB = 538  # what partman-efi's own recipes give the EFI system partition (GPT labels only)
PLACEHOLDER_MIN_MB = 1  # the placeholder needs a little free space to exist at all


@dataclass(frozen=True)
class Partition:
    role: str  # "efi", "/", "swap"
    mb: int  # what the recipe asks partman for
    gpt_only: bool = False

    @property
    def at_most(self) -> int:
        """The most bytes this partition can take on the disk, alignment included."""
        return self.mb * MB + 1 + ALIGN


@dataclass(frozen=True)
class Plan:
    disk: str
    disk_size: int
    partitions: List[Partition]
    keep_free: int

    @property
    def used(self) -> int:
        return LABEL + sum(p.at_most for p in self.partitions) + TAIL

    @property
    def free(self) -> int:
        """Bytes left unpartitioned, at least (the ESP counted even on an MBR label)."""
        return self.disk_size - self.used

    @property
    def smallest_disk(self) -> int:
        return self.used + max(self.keep_free, PLACEHOLDER_MIN_MB * MB + ALIGN)


def _mb(size: int) -> int:
    return -(-size // MB)  # round up: partman gets at least what was asked


def plan(install: InstallConfig) -> Plan:
    """The partitions for install.disk, or BadInput naming install.disk_size when it is too small."""
    result = Plan(
        disk=install.disk,
        disk_size=install.disk_size,
        partitions=[
            Partition("efi", ESP_MB, gpt_only=True),
            Partition("/", _mb(install.root_size)),
            Partition("swap", _mb(install.swap_size)),
        ],
        keep_free=install.keep_free,
    )
    if install.disk_size < result.smallest_disk:
        raise BadInput(
            "install.disk_size",
            units.human(install.disk_size),
            f"is too small for / of {units.human(install.root_size)}, swap of "
            f"{units.human(install.swap_size)} and install.keep_free of "
            f"{units.human(install.keep_free)} left unpartitioned: the disk must have at least "
            f"{result.smallest_disk} bytes ({units.human(result.smallest_disk)})",
        )
    return result


def expert_recipe(p: Plan) -> List[str]:
    """partman-auto/expert_recipe, one line per item (the preseed joins them with backslashes)."""
    lines = ["xenlab :"]
    for part in p.partitions:
        size = f"{part.mb} {part.mb} {part.mb}"
        if part.role == "efi":
            lines += [
                f"{size} fat32",
                "$iflabel{ gpt } $reusemethod{ } method{ efi } format{ }",
                ".",
            ]
        elif part.role == "/":
            lines += [
                f"{size} ext4",
                "$primary{ } $bootable{ } method{ format } format{ }",
                "use_filesystem{ } filesystem{ ext4 } mountpoint{ / }",
                ".",
            ]
        else:
            lines += [f"{size} linux-swap", "$primary{ } method{ swap } format{ }", "."]
    # The placeholder: the last partition gets all that is left; first boot deletes it.
    lines += [
        f"{PLACEHOLDER_MIN_MB} {PLACEHOLDER_MIN_MB} -1 ext4",
        "$primary{ } method{ keep }",
        ".",
    ]
    return lines
