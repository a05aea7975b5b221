"""The Ubuntu archive keyring, for debootstrapping Ubuntu from a machine that has no ubuntu-keyring package.

The keyring comes from Ubuntu's own ubuntu-keyring .deb. The .deb's SHA256 is pinned here: that hash
is the trust anchor (the download is plain HTTP, like apt's), so a changed or tampered file is refused
and never reaches the cache. The extracted keyring is cached: a second call downloads nothing.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

from pipeline.apt_sources import UBUNTU_ARCHIVE
from pipeline.errors import Failed
from pipeline.runner import checked

DEB_PATH = "pool/main/u/ubuntu-keyring/ubuntu-keyring_2018.09.18.1~18.04.2_all.deb"
# The trust anchor: sha256 of DEB_PATH as published by Ubuntu.
DEB_SHA256 = "5d8609563fb3074026b254d7d5248f90d393c7dbafcac48916f333bf3c90fed9"
KEYRING_IN_DEB = "usr/share/keyrings/ubuntu-archive-keyring.gpg"
TIMEOUT = 60


class KeyringError(Failed):
    """The keyring could not be fetched or did not match its pinned hash."""


def _silent(_: str) -> None:
    pass


def deb_url(archive: str = UBUNTU_ARCHIVE) -> str:
    return f"{archive.rstrip('/')}/{DEB_PATH}"


def archive_keyring(
    cache_dir: Path, archive: str = UBUNTU_ARCHIVE, say: Callable[[str], None] = _silent
) -> Path:
    """The path of ubuntu-archive-keyring.gpg, downloaded and verified once into `cache_dir`."""
    cache_dir = Path(cache_dir)
    entry = cache_dir / f"ubuntu-keyring-{DEB_SHA256[:16]}"
    keyring = entry / KEYRING_IN_DEB
    if keyring.is_file():
        return keyring
    cache_dir.mkdir(parents=True, exist_ok=True)
    url = deb_url(archive)
    tmp = Path(tempfile.mkdtemp(dir=str(cache_dir), prefix=f".{entry.name}.tmp-"))
    try:
        deb = tmp / "ubuntu-keyring.deb"
        say(f"downloading {url}")
        got = _download(url, deb)
        if got != DEB_SHA256:
            raise KeyringError(
                f"{url} has sha256 {got}, expected {DEB_SHA256}: refusing the Ubuntu keyring"
            )
        tree = tmp / "tree"
        checked(
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True),
            f"dpkg-deb -x {url}",
        )
        if not (tree / KEYRING_IN_DEB).is_file():
            raise KeyringError(f"{url} holds no {KEYRING_IN_DEB}")
        try:
            os.rename(str(tree), str(entry))
        except OSError:
            if not keyring.is_file():  # not a concurrent run that got there first
                raise
    finally:
        shutil.rmtree(str(tmp), ignore_errors=True)
    return keyring


def _download(url: str, dest: Path) -> str:
    """Fetch `url` into `dest`; its sha256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp, open(str(dest), "wb") as out:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:  # URLError, HTTPError, timeouts
        raise KeyringError(f"cannot download {url}: {exc}") from None
    return digest.hexdigest()
