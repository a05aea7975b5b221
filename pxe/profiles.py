"""The installers xenlab knows: where each comes from and what the preseed needs to know of it.

The installer's profile table; a guest's golden image has its own, of the same names
(pipeline/guest/profiles.py): netboot images and the preseed are not a guest's root filesystem.

No mirror of this machine is written here: Debian's comes from the machine's apt sources at run
time (pipeline/apt_sources.py) unless install.mirror names one; Ubuntu's default is its public
archive.
"""

from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import urlsplit

from pipeline import apt_sources
from pipeline.config import InstallConfig
from pipeline.errors import BadInput


@dataclass(frozen=True)
class InstallerProfile:
    name: str
    distro: str  # ubuntu | debian
    suite: str  # the release the installer installs
    # the netboot images directory below a mirror (holds SHA256SUMS and netboot/...)
    images_path: str
    # kernel and initrd as SHA256SUMS names them (relative to images_path)
    kernel: str
    initrd: str
    # the netboot tarball (relative to images_path) and where kernel/initrd sit inside it
    tarball: str
    tree_kernel: str
    tree_initrd: str
    # a Debian package holding the netboot tree, and the tree's folder inside it
    package: Optional[str] = None
    package_tree: Optional[str] = None

    def default_mirror(self) -> str:
        if self.distro == "ubuntu":
            return apt_sources.UBUNTU_ARCHIVE
        main, _ = apt_sources.debian_mirrors()
        return main

    def mirror(self, install: InstallConfig) -> str:
        """install.mirror, else the profile's default (BadInput naming install.mirror if none)."""
        if install.mirror:
            return install.mirror.rstrip("/")
        try:
            return self.default_mirror().rstrip("/")
        except BadInput as exc:
            raise BadInput("install.mirror", None, exc.problems[0].reason) from None

    def security_mirror(self, install: InstallConfig) -> Optional[str]:
        """Debian's security mirror from the machine's sources when install.mirror is not set."""
        if self.distro != "debian" or install.mirror:
            return None
        try:
            return apt_sources.debian_mirrors()[1]
        except BadInput:
            return None

    def images_url(self, install: InstallConfig) -> str:
        """Where the netboot images are: install.installer_url, else below the mirror."""
        if install.installer_url:
            return install.installer_url.rstrip("/") + "/"
        return f"{self.mirror(install)}/{self.images_path}"


PROFILES = {
    "ubuntu-18.04": InstallerProfile(
        name="ubuntu-18.04",
        distro="ubuntu",
        suite="bionic",
        images_path="dists/bionic-updates/main/installer-amd64/current/images/",
        kernel="netboot/ubuntu-installer/amd64/linux",
        initrd="netboot/ubuntu-installer/amd64/initrd.gz",
        tarball="netboot/netboot.tar.gz",
        tree_kernel="ubuntu-installer/amd64/linux",
        tree_initrd="ubuntu-installer/amd64/initrd.gz",
    ),
    "debian-12": InstallerProfile(
        name="debian-12",
        distro="debian",
        suite="bookworm",
        images_path="dists/bookworm/main/installer-amd64/current/images/",
        kernel="netboot/debian-installer/amd64/linux",
        initrd="netboot/debian-installer/amd64/initrd.gz",
        tarball="netboot/netboot.tar.gz",
        tree_kernel="debian-installer/amd64/linux",
        tree_initrd="debian-installer/amd64/initrd.gz",
        package="debian-installer-12-netboot-amd64",
        package_tree="usr/lib/debian-installer/images/12/amd64/text",
    ),
}


def get(name: str) -> InstallerProfile:
    return PROFILES[name]


def host_and_path(url: str) -> Tuple[str, str, str]:
    """'http://host:80/ubuntu' -> ('http', 'host:80', '/ubuntu'): the preseed's mirror/* keys."""
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path or "/"
