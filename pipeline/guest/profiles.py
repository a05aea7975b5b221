"""The guest profiles: what a guest of each profile is made of and what its release can do.

One table for every fact that differs between the guests' distributions: image.py builds the
golden image from it (diskimage-builder's element, the release, extra settings), build.py
personalises a guest by it (what its sshd supports, what its kernel's ext4 mounts). The
installer's profiles of the same names (pxe/profiles.py) are another concern: netboot images and
preseed, not a guest's root filesystem.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

from cloudinit.user_data import Sshd
from pipeline.errors import BadInput


@dataclass(frozen=True)
class ImageProfile:
    name: str
    distro: str  # "debian" or "ubuntu"
    base_element: str  # diskimage-builder's element that debootstraps the distro
    release: str
    distribution: str  # for people
    sshd: Sshd  # what the release's OpenSSH can be told (tcp-wrappers, sshd_config.d)
    old_kernel: bool  # before 5.15: no orphan_file/metadata_csum_seed in its ext4
    elements: Tuple[str, ...] = ("xenlab-guest",)
    env: Tuple[Tuple[str, str], ...] = ()  # extra DIB_* settings of the profile


PROFILES: Dict[str, ImageProfile] = {
    p.name: p
    for p in (
        # Debian 12: OpenSSH 9.2 without tcp-wrappers, with sshd_config.d; kernel 6.1.
        ImageProfile(
            "debian-12",
            "debian",
            "debian-minimal",
            "bookworm",
            "Debian 12 (bookworm)",
            sshd=Sshd(libwrap=False, dropin=True),
            old_kernel=False,
        ),
        # Ubuntu 18.04: OpenSSH 7.6 with libwrap, no sshd_config.d; kernel 4.15.
        ImageProfile(
            "ubuntu-18.04",
            "ubuntu",
            "ubuntu-minimal",
            "bionic",
            "Ubuntu 18.04 (bionic)",
            sshd=Sshd(libwrap=True, dropin=False),
            old_kernel=True,
            # The kernel for VMs: Xen front-ends and virtio built in, no hardware drivers.
            env=(("DIB_UBUNTU_KERNEL", "linux-image-virtual"),),
        ),
    )
}


def profile_of(name: str) -> ImageProfile:
    """The profile `name`; BadInput naming --profile (and the known ones) for any other name."""
    if name not in PROFILES:
        raise BadInput("--profile", name, f"is not a profile; known: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]
