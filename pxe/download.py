"""Downloads into a cache: checked against a SHA256 before use, written atomically, shown with progress.

Three kinds of source: a URL checked against its release's SHA256SUMS, a Debian package through
the machine's own apt (`apt-get download`, checked against the hash apt's signed indexes give),
and its contents unpacked with `dpkg-deb -x` (which works while dpkg itself is busy and needs
nothing installed). The cache is only ever filled: a file in it is whole and checked, or absent.
"""

import hashlib
import os
import re
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

from pipeline.checksums import file_digest
from pipeline.errors import BadInput, Failed
from pipeline.runner import run_checked

CHUNK = 1 << 20
TIMEOUT = 60


def parse_sha256sums(text: str) -> Dict[str, str]:
    """SHA256SUMS ('HEX  ./netboot/x' or 'HEX *x') -> {'netboot/x': HEX}."""
    sums = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or not re.match(r"^[0-9a-f]{64}$", parts[0]):
            continue
        name = parts[1].strip().lstrip("*")
        if name.startswith("./"):
            name = name[2:]
        sums[name] = parts[0]
    return sums


def _context() -> ssl.SSLContext:
    # HTTPS may go through a proxy with its own CA, named by the usual variables.
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)


def _open(url: str):
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT, context=_context())
    except urllib.error.HTTPError as exc:
        raise Failed(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Failed(f"cannot reach {url}: {reason}") from None


def fetch_text(url: str) -> str:
    with _open(url) as resp:
        return resp.read().decode("utf-8", "replace")


@contextmanager
def _progress(enabled: bool, name: str, total: Optional[int]) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)


@dataclass
class Cache:
    root: Path
    say: Callable[[str], None]
    progress: bool = True

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def url(self, url: str, sha256: str) -> Path:
        """The file at `url` whose SHA256 must be `sha256`, from the cache or downloaded into it."""
        name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
        target = self._dir("downloads") / f"{sha256[:16]}-{name}"
        if target.is_file() and file_digest(target) == sha256:
            return target
        self.say(f"downloading {url}")
        fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{name}.")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, _open(url) as resp:
                total = resp.headers.get("Content-Length")
                with _progress(self.progress, name, int(total) if total else None) as advance:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        out.write(block)
                        digest.update(block)
                        advance(len(block))
            if digest.hexdigest() != sha256:
                raise Failed(
                    f"{url} has SHA256 {digest.hexdigest()}, but its SHA256SUMS says {sha256}: "
                    "refusing it"
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def checked_url(self, base: str, name: str, sums: Dict[str, str]) -> Path:
        if name not in sums:
            raise Failed(f"{base}SHA256SUMS lists no {name}")
        return self.url(base + name, sums[name])

    def deb(self, package: str) -> Path:
        """The .deb of `package` as the machine's apt would install it (`apt-get download`)."""
        proc = subprocess.run(
            ["apt-get", "download", "--print-uris", package], capture_output=True, text=True
        )
        # apt prints the strongest hash its index has: SHA256 (Debian, Ubuntu) or SHA512
        found = re.search(
            r"^'([^']+)' (\S+) ([0-9]+) (SHA256|SHA512):([0-9a-f]+)", proc.stdout, re.M
        )
        if proc.returncode != 0 or not found:
            raise Failed(
                f"apt cannot find the package {package}: "
                f"{proc.stderr.strip() or proc.stdout.strip() or 'no download URI'}"
                " (is it in the machine's apt sources? apt-get update?)"
            )
        _, filename, _, algorithm, digest = found.groups()
        debs = self._dir("debs")
        target = debs / filename
        if target.is_file() and file_digest(target, algorithm) == digest:
            return target
        self.say(f"downloading the Debian package {package}")
        with tempfile.TemporaryDirectory(dir=str(debs), prefix=".apt.") as tmp:
            os.chmod(tmp, 0o755)  # apt's sandbox user writes there when it can
            run_checked(["apt-get", "download", "-q", package], cwd=tmp)
            got = Path(tmp) / filename
            if not got.is_file():
                raise Failed(f"apt-get download {package} gave no {filename}")
            if file_digest(got, algorithm) != digest:
                raise Failed(
                    f"{filename} does not match the {algorithm} apt's indexes give: refusing it"
                )
            os.replace(got, target)
        return target

    def unpacked_deb(self, deb: Path) -> Path:
        """The contents of `deb` (dpkg-deb -x), unpacked once."""
        target = self._dir("unpacked") / deb.name[: -len(".deb")]
        if target.is_dir():
            return target
        self.say(f"unpacking {deb.name}")
        tmp = Path(tempfile.mkdtemp(dir=str(target.parent), prefix=".unpack."))
        try:
            run_checked(["dpkg-deb", "-x", str(deb), str(tmp)])
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target

    def package(self, package: str) -> Path:
        return self.unpacked_deb(self.deb(package))

    def unpacked_tarball(self, tarball: Path, field: str = "--installer") -> Path:
        """A netboot tarball's contents, unpacked once (by its SHA256); members that would land
        outside (absolute, '..', devices) are refused."""
        target = self._dir("unpacked") / f"tar-{file_digest(tarball)[:16]}"
        if target.is_dir():
            return target
        self.say(f"unpacking {tarball.name}")
        tmp = Path(tempfile.mkdtemp(dir=str(target.parent), prefix=".unpack."))
        try:
            try:
                with tarfile.open(str(tarball)) as tar:
                    members = tar.getmembers()
                    for member in members:
                        _check_member(member, tarball, field)
                    tar.extractall(str(tmp), members=members)
            except tarfile.TarError as exc:
                raise BadInput(field, str(tarball), f"is not a readable tarball: {exc}") from None
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target


def _inside(name: str) -> bool:
    parts = Path(name).parts
    return not name.startswith("/") and ".." not in parts


def _check_member(member: tarfile.TarInfo, tarball: Path, field: str) -> None:
    bad = None
    if not _inside(member.name):
        bad = "a path outside the tarball"
    elif not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        bad = "a device or fifo"
    elif member.issym():
        target = os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
        if member.linkname.startswith("/") or not _inside(target):
            bad = "a link that points outside it"
    elif member.islnk() and not _inside(member.linkname):
        bad = "a hard link that points outside it"
    if bad:
        raise BadInput(field, str(tarball), f"holds {member.name!r}, {bad}: refusing it")
