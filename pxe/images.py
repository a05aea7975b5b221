"""The install machine's golden images, served by pxe.serve at /images/ so no host builds its own.

An image cache entry (pipeline/guest/image.py) is a folder holding `root/` (the extracted tree)
and `image.json` (its profile and key among them). Here each entry becomes, once, a tarball of
both (numeric owners, xattrs, as the build extracted them) in `CACHE/.export/`, with its SHA256
beside it; `/images/index.json` lists them by profile:

    {"images": {"debian-12": {"key": "e954c1ba61a3fe4d", "file": "debian-12-e954c1ba61a3fe4d.tar",
                              "sha256": "...", "size": 812345344}}}

and `/images/<file>` and `/images/<file>.sha256` are the files. A host's image.build with
`images.source` fetches, verifies and unpacks them (pipeline/guest/image.py).
"""

import hashlib
import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, Optional

from pipeline.runner import checked

EXPORT = ".export"
INDEX = "index.json"
_KEY = re.compile(r"^[0-9a-f]{16}$")
_PROFILE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_FILE = re.compile(r"^([a-z0-9][a-z0-9.-]*)-([0-9a-f]{16})\.tar(\.sha256)?$")
_lock = threading.Lock()


def _silent(_: str) -> None:
    pass


def cached(cache_dir: Path) -> Dict[str, Path]:
    """{profile: entry folder} of the complete entries in `cache_dir` (the newest per profile)."""
    found: Dict[str, Path] = {}
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return found
    for entry in sorted(cache_dir.iterdir(), key=lambda p: p.stat().st_mtime):
        meta_file = entry / "image.json"
        if entry.name.startswith(".") or not (entry / "root").is_dir() or not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            continue
        profile, key = meta.get("profile"), meta.get("key")
        if (
            isinstance(profile, str) and _PROFILE.fullmatch(profile)
            and isinstance(key, str) and _KEY.fullmatch(key)
            and entry.name == f"{profile}-{key}"
        ):  # fmt: skip
            found[profile] = entry
    return found


def export(entry: Path, say: Callable[[str], None] = _silent) -> Dict[str, object]:
    """The tarball of `entry` in its cache's .export folder (made once); its index record."""
    meta = json.loads((entry / "image.json").read_text())
    name = f"{entry.name}.tar"
    folder = entry.parent / EXPORT
    tarball, digest_file = folder / name, folder / f"{name}.sha256"
    with _lock:
        if not (tarball.is_file() and digest_file.is_file()):
            folder.mkdir(mode=0o755, exist_ok=True)
            for old in folder.glob(f"{meta['profile']}-*"):
                old.unlink()  # an older image of this profile
            say(f"images: packing {entry} into {tarball} (once)")
            tmp = folder / f".{name}.{os.getpid()}"
            digest = hashlib.sha256()
            proc = subprocess.Popen(
                ["tar", "-C", str(entry), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                 "-cf", "-", "image.json", "root"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                with open(str(tmp), "wb") as out:
                    for block in iter(lambda: proc.stdout.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                checked(subprocess.CompletedProcess("tar", proc.wait(), "", err), f"tar of {entry}")
                os.replace(str(tmp), str(tarball))
            except BaseException:
                proc.kill()
                proc.wait()
                if tmp.exists():
                    tmp.unlink()
                raise
            digest_file.write_text(f"{digest.hexdigest()}  {name}\n")
    return {
        "key": meta["key"],
        "file": name,
        "sha256": digest_file.read_text().split()[0],
        "size": tarball.stat().st_size,
    }


def index(cache_dir: Path, say: Callable[[str], None] = _silent) -> bytes:
    """/images/index.json: every cached profile, exported if it was not yet."""
    images = {profile: export(entry, say) for profile, entry in sorted(cached(cache_dir).items())}
    return (json.dumps({"images": images}, indent=2, sort_keys=True) + "\n").encode()


def file_for(cache_dir: Path, name: str) -> Optional[Path]:
    """The exported tarball (or its .sha256) called `name`, or None."""
    if not _FILE.fullmatch(name):
        return None
    path = Path(cache_dir) / EXPORT / name
    return path if path.is_file() else None
