"""Golden guest root filesystems: built with diskimage-builder and the project's elements, cached.

A profile (distro element, release, the project's elements) plus the mirrors it is built from
make a cache key; the entry `CACHE/PROFILE-KEY/` holds the extracted root tree (`root/`) and
`image.json`. A build runs `disk-image-create -t tar` in a temporary directory next to the
entry, extracts the tarball there (numeric owners, xattrs) and renames the directory into place
under a per-profile lock: a failed or interrupted build never leaves a half entry. After a build,
older entries of the same profile are removed, so the cache holds one tree per profile.

With `images.source` (pxe.serve's /images/ on the install machine) an image is fetched instead
of built: the source's index names each profile's key, tarball and SHA256; the tarball is
downloaded next to the entry, checked, unpacked and renamed into place the same way, so a
corrupted download is refused and leaves no entry, and a second call reuses the entry.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple

from pipeline import apt_sources, checksums, chroot, ubuntu_keyring
from pipeline.config import ImagesConfig
from pipeline.errors import BadInput, Failed
from pipeline.guest.profiles import ImageProfile, profile_of
from pipeline.runner import checked, run_checked

FORMAT = 2  # bump when the build procedure (not its inputs) changes what an entry holds


def _elements_dir() -> Path:
    """images/elements of the checkout; installed from a wheel (the zero-touch host), the one
    beside the venv (/opt/xenlab/images/elements for /opt/xenlab/.venv)."""
    checkout = Path(__file__).resolve().parents[2] / "images" / "elements"
    beside_venv = Path(sys.prefix).resolve().parent / "images" / "elements"
    return beside_venv if not checkout.is_dir() and beside_venv.is_dir() else checkout


ELEMENTS_DIR = _elements_dir()
PV_BOOT_ENV = ELEMENTS_DIR / "xenlab-pv-boot" / "environment.d" / "10-xenlab-pv-boot.bash"


def element_settings(path: Path = PV_BOOT_ENV) -> Dict[str, str]:
    """The `export NAME=VALUE` lines of an element's environment.d file, as bash reads them.

    Only literal values: anything bash would expand ($, `) is refused rather than misread.
    """
    settings = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) != 2 or words[0] != "export" or "=" not in words[1]:
            raise ValueError(f"{path}:{number}: not an `export NAME=VALUE` line: {line}")
        name, value = words[1].split("=", 1)
        if "$" in line or "`" in line:
            raise ValueError(f"{path}:{number}: {name} is not a literal value: {line}")
        settings[name] = value
    return settings


# The labels of the image's filesystems (its /etc/fstab names them) and the kernel command line
# its grub.cfg boots with: set by the xenlab-pv-boot element, read from it here.
_PV_BOOT = element_settings()
ROOT_LABEL = _PV_BOOT["XENLAB_ROOT_LABEL"]
SWAP_LABEL = _PV_BOOT["XENLAB_SWAP_LABEL"]
KERNEL_CMDLINE = _PV_BOOT["XENLAB_KERNEL_CMDLINE"]


@dataclass(frozen=True)
class GoldenImage:
    profile: str
    key: str
    tree: Path  # the extracted root tree: read it, never write into it
    reused: bool  # True when the cache entry existed before this call
    kernel: str  # relative to tree, e.g. "boot/vmlinuz-6.1.0-28-amd64" (grub.cfg's first entry)
    initrd: str  # relative to tree
    distribution: str  # e.g. "Debian 12 (bookworm)"


@dataclass(frozen=True)
class Mirrors:
    main: str
    security: Optional[str] = None  # Debian's separate security archive


@dataclass(frozen=True)
class Plan:
    """Everything that goes into one build, and the key made from it."""

    profile: ImageProfile
    mirrors: Mirrors
    key: str
    inputs: Dict[str, object] = field(compare=False)


def _silent(_: str) -> None:
    pass


# --- inputs and the key ---------------------------------------------------------------------------
def mirrors_for(
    profile: ImageProfile, images: ImagesConfig, etc_apt: Path = Path("/etc/apt")
) -> Mirrors:
    """The archives `profile` is built from: the config's, else the machine's apt sources."""
    if profile.distro == "ubuntu":
        if images.ubuntu_mirror:
            return Mirrors(images.ubuntu_mirror)
        for source in apt_sources.read(etc_apt):
            if profile.release in source.suites:
                return Mirrors(source.uri)
        return Mirrors(apt_sources.UBUNTU_ARCHIVE)
    main = images.mirror
    security = images.security_mirror
    if main is None or security is None:
        found_main, found_security = apt_sources.debian_mirrors(etc_apt)
        main = main or found_main
        security = security or found_security
    if security is None:
        # Without it diskimage-builder falls back to security.debian.org, unreachable here.
        raise BadInput(
            "images.security_mirror",
            None,
            f"no Debian security mirror is configured and none is in {etc_apt}",
        )
    return Mirrors(main, security)


def elements_digest(elements_dir: Path = ELEMENTS_DIR) -> Dict[str, str]:
    """sha256 (and the executable bit) of every file of the project's elements, by relative path.

    Relative paths only: the same elements in another checkout give the same digest.
    """
    digest = {}
    for path in sorted(Path(elements_dir).rglob("*")):
        rel = path.relative_to(elements_dir).as_posix()
        if "__pycache__" in rel.split("/") or rel.endswith(".pyc"):
            continue
        if path.is_symlink():
            digest[rel] = "link:" + os.readlink(str(path))
        elif path.is_file():
            mark = "x" if os.access(str(path), os.X_OK) else "-"
            digest[rel] = mark + checksums.file_digest(path)
    return digest


def dib_version() -> str:
    try:
        from importlib.metadata import version

        return version("diskimage-builder")
    except Exception:  # not installed: the build will say so
        return "unknown"


def build_env(profile: ImageProfile, mirrors: Mirrors) -> Dict[str, str]:
    """The DIB_* settings of a build (but no path: those must not change the key).

    The elements' own settings (labels, kernel command line) are in their environment.d files,
    which are in the key through their digest.
    """
    env = {
        "DIB_RELEASE": profile.release,
        "DIB_DISTRIBUTION_MIRROR": mirrors.main,
    }
    if mirrors.security:
        env["DIB_DEBIAN_SECURITY_MIRROR"] = mirrors.security
    env.update(dict(profile.env))
    return env


def make_plan(
    profile: ImageProfile,
    mirrors: Mirrors,
    elements_dir: Path = ELEMENTS_DIR,
    dib: Optional[str] = None,
) -> Plan:
    inputs: Dict[str, object] = {
        "format": FORMAT,
        "profile": profile.name,
        "distro": profile.distro,
        "base_element": profile.base_element,
        "release": profile.release,
        "elements": list(profile.elements),
        "env": build_env(profile, mirrors),
        "element_files": elements_digest(elements_dir),
        "diskimage_builder": dib or dib_version(),
        # Ubuntu is debootstrapped with this keyring, pinned by its .deb's hash.
        "keyring": ubuntu_keyring.DEB_SHA256 if profile.distro == "ubuntu" else None,
    }
    return Plan(profile, mirrors, chroot.cache_key(inputs), inputs)


# --- the cache -------------------------------------------------------------------------------------
def entry_path(cache_dir: Path, plan: Plan) -> Path:
    return Path(cache_dir) / f"{plan.profile.name}-{plan.key}"


def _entry_re(profile: str) -> "re.Pattern[str]":
    return re.compile(rf"^{re.escape(profile)}-[0-9a-f]{{16}}$")


def _golden(entry: Path, reused: bool) -> GoldenImage:
    meta = json.loads((entry / "image.json").read_text())
    return GoldenImage(
        profile=meta["profile"],
        key=meta["key"],
        tree=entry / "root",
        reused=reused,
        kernel=meta["kernel"],
        initrd=meta["initrd"],
        distribution=meta["distribution"],
    )


def _ready(entry: Path) -> bool:
    return (entry / "image.json").is_file() and (entry / "root").is_dir()


def _mounts_under(path: Path) -> List[str]:
    """Mount points at or below `path` (a build's chroot may still have /proc, /dev... mounted)."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if (point + "/").startswith(prefix):
                found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf `path`, but never through a mount: a leftover bind of /dev would take the host's with it."""
    path = Path(path)
    if not os.path.lexists(str(path)):
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-R", "-l", point], capture_output=True)
    left = _mounts_under(path)
    if left:
        raise Failed(f"cannot remove {path}: still mounted below it: {', '.join(left)}")
    for device in _loops_under(path):  # diskimage-builder's build filesystem, if it was killed
        subprocess.run(["losetup", "-d", device], capture_output=True)
    shutil.rmtree(str(path))


def _loops_under(path: Path) -> List[str]:
    proc = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
    )
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in proc.stdout.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[1].strip().startswith(prefix):
            found.append(words[0])
    return found


def entries(cache_dir: Path, profile: str) -> List[Path]:
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    pattern = _entry_re(profile)
    return sorted(p for p in cache_dir.iterdir() if pattern.match(p.name) and p.is_dir())


# --- the build -------------------------------------------------------------------------------------
def _tool(name: str) -> str:
    """A command from the venv this runs in (diskimage-builder's scripts), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise Failed(f"{name} is not installed (pip package diskimage-builder)")
    return found


# What a build runs on this machine besides diskimage-builder, and the Debian package with it:
# diskimage-builder calls sudo even as root, debootstraps, and makes its build filesystem on a
# loop device (losetup, mkfs.ext4, fstrim) before the tarball.
BUILD_TOOLS = (
    ("sudo", "sudo"),
    ("debootstrap", "debootstrap"),
    ("losetup", "util-linux"),
    ("fstrim", "util-linux"),
    ("mkfs.ext4", "e2fsprogs"),
    ("tar", "tar"),
)


def missing_tools() -> List[str]:
    """What a build needs of this machine and does not find here, one sentence each."""
    missing = [
        f"{tool} is not installed (Debian package {package}; ./setup installs it)"
        for tool, package in BUILD_TOOLS
        if shutil.which(tool) is None
    ]
    try:
        _tool("disk-image-create")
    except Failed as exc:
        missing.append(str(exc))
    return missing


def _run_streamed(argv: List[str], env: Dict[str, str], say: Callable[[str], None]) -> None:
    """Run `argv` in its own session, its output line by line to `say`.

    Interrupted (Ctrl-C, a failing caller), the whole session gets SIGTERM: diskimage-builder's
    trap unmounts its chroot, and debootstrap or apt inside stop too, before the caller removes
    the build directory.
    """
    tail: Deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            say(line)
        code = proc.wait()
    except BaseException:
        _stop_session(proc)
        raise
    checked(subprocess.CompletedProcess(argv, code, "\n".join(tail)), argv[0])


def _stop_session(proc: "subprocess.Popen[str]", grace: float = 120) -> None:
    """SIGTERM (once: a second one would cut diskimage-builder's cleanup short) to every process
    of `proc`'s session; wait until all are gone, SIGKILL after `grace` seconds."""
    import signal

    deadline = time.monotonic() + grace
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        while True:
            proc.poll()  # reap the leader, so that only live processes keep the group
            os.killpg(proc.pid, 0)
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.5)
    except ProcessLookupError:
        pass
    proc.wait()


def _boot_entry(root: Path) -> Tuple[str, str]:
    """(kernel, initrd) of grub.cfg's first entry, relative to `root`: what pygrub boots."""
    cfg = root / "boot" / "grub" / "grub.cfg"
    if not cfg.is_file():
        raise Failed(f"the image has no {cfg.relative_to(root)} for pygrub")
    kernel = initrd = None
    for line in cfg.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "linux" and kernel is None:
            kernel = words[1].lstrip("/")
        elif len(words) >= 2 and words[0] == "initrd" and initrd is None:
            initrd = words[1].lstrip("/")
    for what, rel in (("kernel", kernel), ("initrd", initrd)):
        if rel is None or not (root / rel).is_file():
            raise Failed(f"the image's grub.cfg names no existing {what} ({rel})")
    return kernel, initrd  # type: ignore[return-value]


def _build(plan: Plan, tmp: Path, cache_dir: Path, say: Callable[[str], None]) -> None:
    """diskimage-builder into `tmp`, leaving `tmp/root` and `tmp/image.json`."""
    missing = missing_tools()
    if missing:
        raise Failed("; ".join(missing))
    profile = plan.profile
    env = dict(os.environ)
    env.update(build_env(profile, plan.mirrors))
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "ELEMENTS_PATH": str(ELEMENTS_DIR),
            "TMP_DIR": str(tmp / "dib"),
            "DIB_IMAGE_CACHE": str(Path(cache_dir) / ".dib-cache"),
            "DIB_DEBUG_TRACE": "0",
        }
    )
    if profile.distro == "ubuntu":
        keyring = ubuntu_keyring.archive_keyring(
            Path(cache_dir) / ".keyrings", plan.mirrors.main, say=say
        )
        # For debootstrap only: DIB_APT_KEYRING would also `apt-key add` it in a chroot that has
        # no gnupg yet; the chroot's apt trusts the ubuntu-keyring package debootstrap installs.
        env["DIB_DEBOOTSTRAP_EXTRA_ARGS"] = f"--keyring={keyring}"
    (tmp / "dib").mkdir()
    argv = [
        _tool("disk-image-create"),
        "-a", "amd64",
        "-t", "tar",
        "--no-tmpfs",
        "-n",  # no `base` element: the project's elements say what goes in
        "-o", str(tmp / "image"),
        profile.base_element,
        *profile.elements,
    ]  # fmt: skip
    say(f"building the {profile.name} image with diskimage-builder (key {plan.key})")
    _run_streamed(argv, env, say)
    tarball = tmp / "image.tar"
    if not tarball.is_file():
        raise Failed(f"disk-image-create made no {tarball}")
    root = tmp / "root"
    root.mkdir()
    say(f"extracting the root tree into {root}")
    run_checked(
        ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*",
         "-xpf", str(tarball)],
    )  # fmt: skip
    tarball.unlink()
    remove_tree(tmp / "dib")
    # diskimage-builder's tarball leaves out /proc and /sys themselves, but systemd needs the
    # mount points; the empty lost+found of its build filesystem is mkfs's business, not the tree's.
    for mount_point in ("proc", "sys"):
        (root / mount_point).mkdir(mode=0o555, exist_ok=True)
        os.chmod(str(root / mount_point), 0o555)
    lost = root / "lost+found"
    if lost.is_dir() and not any(lost.iterdir()):
        lost.rmdir()
    kernel, initrd = _boot_entry(root)
    meta = {
        "profile": profile.name,
        "key": plan.key,
        "distribution": profile.distribution,
        "kernel": kernel,
        "initrd": initrd,
        "root_label": ROOT_LABEL,
        "swap_label": SWAP_LABEL,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": plan.inputs,
    }
    (tmp / "image.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def ensure(
    profile: str,
    images: ImagesConfig,
    say: Callable[[str], None] = _silent,
    rebuild: bool = False,
    dry_run: bool = False,
) -> Optional[GoldenImage]:
    """The golden image of `profile`, built once per set of inputs; `rebuild` builds it anyway.

    BadInput (nothing touched) for an unknown profile or when no mirror is known. In a dry run,
    None when it would have to be built (the plan is said instead).
    """
    spec = profile_of(profile)
    if images.source:
        return fetch(spec.name, images.source, Path(images.cache_dir), say, rebuild, dry_run)
    plan = make_plan(spec, mirrors_for(spec, images))
    cache_dir = Path(images.cache_dir)
    entry = entry_path(cache_dir, plan)
    if not rebuild and _ready(entry):
        say(f"reused the cached {profile} image {plan.key} ({entry})")
        return _golden(entry, reused=True)
    if dry_run:
        say(
            f"would build the {profile} image {plan.key} into {entry} with diskimage-builder:"
            f" {spec.base_element} {' '.join(spec.elements)}, from {plan.mirrors.main}"
            + (f" and {plan.mirrors.security}" if plan.mirrors.security else "")
        )
        return None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Failed(f"cannot create images.cache_dir {cache_dir}: {exc.strerror}") from None
    with chroot.locked(cache_dir / f".{profile}.lock"):
        if not rebuild and _ready(entry):  # built by another run while this one waited
            say(f"reused the cached {profile} image {plan.key} ({entry})")
            return _golden(entry, reused=True)
        # Leftovers of builds that were killed (not interrupted: those clean up after themselves).
        for stale in cache_dir.glob(f".build-{profile}-*"):
            remove_tree(stale)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(dir=str(cache_dir), prefix=f".build-{profile}-{plan.key}-"))
        try:
            os.chmod(str(tmp), 0o755)  # the entry it becomes: readable like any root tree
            _build(plan, tmp, cache_dir, say)
            old = None
            if os.path.lexists(str(entry)):  # --rebuild (or a half entry of an older xenlab)
                old = cache_dir / f".build-{profile}-old-{plan.key}"
                remove_tree(old)
                os.rename(str(entry), str(old))
            try:
                os.rename(str(tmp), str(entry))
            except OSError:
                if old is not None:  # put the previous entry back
                    os.rename(str(old), str(entry))
                raise
        except BaseException as exc:
            try:
                remove_tree(tmp)
            except Exception as cleanup:  # keep the build's own error; say what is left
                say(f"could not remove {tmp}: {cleanup}")
                if isinstance(exc, Failed):
                    raise Failed(f"{exc}\n(and {tmp} is left: {cleanup})") from None
            raise
        if old is not None:
            remove_tree(old)
        for other in entries(cache_dir, profile):
            if other != entry:
                say(f"removing the older {profile} image {other}")
                remove_tree(other)
    say(f"built the {profile} image {plan.key} in {time.monotonic() - started:.0f} s ({entry})")
    return _golden(entry, reused=False)


# --- images.source: fetched from the install machine ------------------------------------------------
_KEY = re.compile(r"^[0-9a-f]{16}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
FETCH_TIMEOUT = 900  # seconds: the server packs an image once before its first answer


def _source_entry(source: str, profile: str) -> Dict[str, object]:
    """The source's index record of `profile`: key, file, sha256, size (each checked)."""
    import urllib.request

    url = f"{source.rstrip('/')}/index.json"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as resp:
            index = json.loads(resp.read().decode())
    except (OSError, ValueError) as exc:
        raise Failed(f"cannot read the image source's index {url}: {exc}") from None
    record = (index.get("images") or {}).get(profile) if isinstance(index, dict) else None
    if not isinstance(record, dict):
        raise Failed(f"the image source {source} has no {profile} image (its index: {url})")
    key, sha, name = record.get("key"), record.get("sha256"), record.get("file")
    if not (
        isinstance(key, str) and _KEY.fullmatch(key)
        and isinstance(sha, str) and _SHA256.fullmatch(sha)
        and name == f"{profile}-{key}.tar"
    ):  # fmt: skip
        raise Failed(f"the image source's index {url} has a malformed {profile} record")
    return record


def _download(url: str, dest: Path, say: Callable[[str], None]) -> str:
    """`url` into `dest`; its sha256."""
    import hashlib
    import urllib.request

    digest = hashlib.sha256()
    done, shown = 0, time.monotonic()
    try:
        resp = urllib.request.urlopen(url, timeout=FETCH_TIMEOUT)
        with resp, open(str(dest), "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            for block in iter(lambda: resp.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
                done += len(block)
                if time.monotonic() - shown > 5:
                    shown = time.monotonic()
                    say(f"  {done >> 20} of {total >> 20} MiB")
    except OSError as exc:
        raise Failed(f"cannot fetch {url}: {exc}") from None
    return digest.hexdigest()


def fetch(
    profile: str,
    source: str,
    cache_dir: Path,
    say: Callable[[str], None] = _silent,
    refetch: bool = False,
    dry_run: bool = False,
) -> Optional[GoldenImage]:
    """The golden image of `profile` from `source` (pxe.serve's /images/): fetched, its SHA256
    checked, unpacked into the cache; reused when the cache holds that key already."""
    record = _source_entry(source, profile)
    key = str(record["key"])
    entry = Path(cache_dir) / f"{profile}-{key}"
    url = f"{source.rstrip('/')}/{record['file']}"
    if not refetch and _ready(entry):
        say(f"reused the cached {profile} image {key} ({entry})")
        return _golden(entry, reused=True)
    if dry_run:
        say(f"would fetch the {profile} image {key} from {url} ({record.get('size')} bytes),"
            f" check its SHA256 and unpack it into {entry}")  # fmt: skip
        return None
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Failed(f"cannot create images.cache_dir {cache_dir}: {exc.strerror}") from None
    with chroot.locked(Path(cache_dir) / f".{profile}.lock"):
        if not refetch and _ready(entry):
            say(f"reused the cached {profile} image {key} ({entry})")
            return _golden(entry, reused=True)
        for stale in Path(cache_dir).glob(f".fetch-{profile}-*"):
            remove_tree(stale)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(dir=str(cache_dir), prefix=f".fetch-{profile}-{key}-"))
        try:
            tarball = tmp / "image.tar"
            say(f"fetching the {profile} image {key} from {url}")
            got = _download(url, tarball, say)
            if got != record["sha256"]:
                raise Failed(
                    f"the {profile} image from {url} has SHA256 {got}, not {record['sha256']}"
                    " as the source's index says: refused, nothing cached"
                )
            unpacked = tmp / "entry"
            unpacked.mkdir(mode=0o755)
            run_checked(
                ["tar", "-C", str(unpacked), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                 "-xpf", str(tarball)],
            )  # fmt: skip
            tarball.unlink()
            meta = json.loads((unpacked / "image.json").read_text())
            if meta.get("profile") != profile or meta.get("key") != key or not _ready(unpacked):
                raise Failed(f"the {profile} image from {url} is not the {profile} image {key}")
            if os.path.lexists(str(entry)):
                remove_tree(entry)
            os.rename(str(unpacked), str(entry))
        finally:
            remove_tree(tmp)
        for other in entries(Path(cache_dir), profile):
            if other != entry:
                say(f"removing the older {profile} image {other}")
                remove_tree(other)
    say(f"fetched the {profile} image {key} in {time.monotonic() - started:.0f} s ({entry})")
    return _golden(entry, reused=False)
