"""The wheelhouse pxe.build prepares and pxe.serve serves at /wheelhouse/: xenlab for the new host.

The new host reaches no Python package index, so everything it needs comes from here:
- xenlab's own wheel, built from this checkout (a staged copy, so the checkout gets no build/);
- every dependency as a wheel for the install profile's Python (ubuntu-18.04: CPython 3.8 on
  x86_64, manylinux wheels where a package has compiled parts), and pip itself (bionic's pip 9
  cannot read manylinux2014 wheels, so the late setup first runs this pip from its wheel);
- `xenlab-app.tar.gz`: what is not in a wheel, tasks.py, README.md and images/ (the
  diskimage-builder elements, which pipeline/guest/image.py finds beside the venv);
- `SHA256SUMS` of all of them, and an index page for `pip --find-links`.

Each file goes into the boot tree through the runner: a second pxe.build that makes the same
bytes changes nothing (the wheel and the tarball are built reproducibly: SOURCE_DATE_EPOCH).
"""

import email
import hashlib
import html
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from pipeline.errors import Failed
from pipeline.runner import Runner, checked

DIR = "wheelhouse"  # in the boot tree; served at /wheelhouse/
APP = "xenlab-app.tar.gz"
SUMS = "SHA256SUMS"
PIP = "pip==25.0.1"  # the newest pip that runs on Python 3.8
REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "netlink", "pxe", "cloudinit")  # pyproject's [tool.setuptools] packages
# Not invoke.yaml: on the host, invoke.yaml is its own site file (the late setup links it), so no
# default site (documentation addresses, /dev/sda) is merged under it.
APP_FILES = ("tasks.py", "README.md")
APP_DIRS = ("images",)
EPOCH = 315532800  # 1980-01-01: the earliest time a zip (wheel) can hold
_SKIP = re.compile(r"(^|/)(__pycache__|\.[^/]*)(/|$)|\.py[co]$")


@dataclass(frozen=True)
class Target:
    """The Python the installed host runs xenlab on, and the release packages that give it."""

    python_version: str  # pip --python-version
    abi: str  # pip --abi
    python: str  # the interpreter's command on the host
    apt_packages: Tuple[str, ...]  # what the late setup installs for it


# Per install profile (pxe/profiles.py's names).
TARGETS: Dict[str, Target] = {
    # bionic's newest Python, from bionic-updates; distutils for pip's install scheme on 3.8
    "ubuntu-18.04": Target(
        "3.8", "cp38", "python3.8", ("python3.8", "python3.8-venv", "python3-distutils")
    ),
    "debian-12": Target("3.11", "cp311", "python3", ("python3", "python3-venv")),
}
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux2010_x86_64",
             "manylinux1_x86_64", "manylinux_2_5_x86_64", "linux_x86_64", "any")  # fmt: skip


@dataclass
class Wheelhouse:
    files: Dict[str, bytes]  # name -> content, SHA256SUMS and index.html included
    xenlab: str  # the requirement that installs xenlab, e.g. "xenlab==0.1.0"


def target_for(profile: str) -> Target:
    return TARGETS[profile]


def _copy(src: Path, dest: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if _SKIP.search(rel) or not path.is_file():
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(path), str(out))


def _pip(args: List[str], env: Optional[Dict[str, str]] = None, say=None) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
    checked(subprocess.CompletedProcess(argv, proc.returncode, tail), f"pip {' '.join(args[:1])}")


def _requirements(wheel: Path) -> Tuple[str, List[str]]:
    """(name==version, Requires-Dist without extras) of a wheel, from its METADATA."""
    with zipfile.ZipFile(str(wheel)) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    requires = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    return f"{meta['Name']}=={meta['Version']}", requires


def _packaging():
    """packaging's requirements, markers and names: the package, else the copy inside pip."""
    try:
        from packaging import requirements, utils
    except ImportError:  # pragma: no cover - pip always carries one
        from pip._vendor.packaging import requirements, utils  # type: ignore[no-redef]
    return requirements, utils


def _environment(target: Target) -> Dict[str, str]:
    """The marker environment of the target host (PEP 508)."""
    return {
        "python_version": target.python_version,
        "python_full_version": f"{target.python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{target.python_version}.0",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def missing_requirements(folder: Path, target: Target) -> List[str]:
    """Requirements of the wheels in `folder` that apply on `target` and no wheel there meets;
    Failed when a wheel there has a version another one rules out."""
    requirements, utils = _packaging()
    wheels = {}
    for wheel in sorted(Path(folder).glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        wheels[utils.canonicalize_name(name)] = (version, wheel)
    environment = _environment(target)
    missing = []
    for version_and_wheel in wheels.values():
        _, requires = _requirements(version_and_wheel[1])
        for line in requires:
            req = requirements.Requirement(line)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            found = wheels.get(utils.canonicalize_name(req.name))
            if found is None:
                req.marker = None
                missing.append(str(req))
            elif not req.specifier.contains(found[0], prereleases=True):
                raise Failed(f"the wheelhouse has {req.name} {found[0]}, but {line} is required")
    return sorted(set(missing))


def _app_tarball(repo: Path) -> bytes:
    """tasks.py, invoke.yaml and images/ as a reproducible .tar.gz (sorted, fixed times, root)."""
    buf = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=EPOCH) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            paths = [repo / name for name in APP_FILES]
            for d in APP_DIRS:
                paths += sorted(
                    p for p in (repo / d).rglob("*")
                    if not _SKIP.search(p.relative_to(repo).as_posix())
                )  # fmt: skip
            for path in paths:
                info = tar.gettarinfo(str(path), arcname=path.relative_to(repo).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "root", "root"
                if info.isfile():
                    with open(str(path), "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def index_page(names: List[str]) -> bytes:
    """The page `pip --find-links URL` reads: one link per file."""
    links = "".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a><br>\n' for n in sorted(names))
    return f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode()


def sums(files: Dict[str, bytes]) -> bytes:
    return "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    ).encode()


def make(profile: str, say: Callable[[str], None], repo: Path = REPO) -> Wheelhouse:
    """Build the wheelhouse for `profile`'s host in memory (it is about 15 MB)."""
    if not (repo / "pyproject.toml").is_file() or not (repo / "tasks.py").is_file():
        raise Failed(f"the wheelhouse is built from xenlab's source checkout; {repo} is not one")
    target = target_for(profile)
    with tempfile.TemporaryDirectory(prefix="xenlab-wheelhouse-") as tmp:
        work = Path(tmp)
        stage, out = work / "stage", work / "wheels"
        for name in PACKAGES:
            _copy(repo / name, stage / name)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(str(repo / name), str(stage / name))
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
        say(f"wheelhouse: building xenlab's wheel from {repo}")
        _pip(["wheel", "-q", "--no-deps", "-w", str(out), str(stage)], env)
        (wheel,) = out.glob("xenlab-*.whl")
        xenlab, requires = _requirements(wheel)
        say(
            f"wheelhouse: fetching {len(requires)} dependencies and pip for Python"
            f" {target.python_version} (x86_64)"
        )
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        download = ["download", "-q", "-d", str(out), "--only-binary=:all:",
                    "--python-version", target.python_version, "--implementation", "cp",
                    "--abi", target.abi, "--abi", "abi3", "--abi", "none", *platforms]  # fmt: skip
        _pip([*download, PIP, *requires], env)
        # pip evaluates environment markers (`python_version < "3.9"`) with the Python it runs
        # on, not the target's: add what the target's markers ask for, until nothing is missing.
        for _ in range(10):
            missing = missing_requirements(out, target)
            if not missing:
                break
            say(
                f"wheelhouse: adding what Python {target.python_version} needs: {', '.join(missing)}"
            )
            _pip([*download, "--no-deps", *missing], env)
        else:
            raise Failed(f"the wheelhouse's dependencies do not close: {', '.join(missing)}")
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".whl"}
    files[APP] = _app_tarball(repo)
    files[SUMS] = sums(files)
    files["index.html"] = index_page(list(files))
    return Wheelhouse(files, xenlab)


def place(runner: Runner, tree_root: Path, house: Wheelhouse) -> List[str]:
    """Write the wheelhouse into `tree_root`/wheelhouse (files that differ only), remove files
    of an older one; the names that changed."""
    folder = Path(tree_root) / DIR
    changed = []
    for name, data in sorted(house.files.items()):
        target = folder / name
        if runner.write_bytes(str(target), data, mode=0o644, under_root=False):
            changed.append(name)
    if folder.is_dir():
        for old in sorted(folder.iterdir()):
            if old.is_file() and old.name not in house.files and not old.name.startswith("."):
                runner.change(f"remove the older {old}", old.unlink)
                changed.append(old.name)
    return changed


def build(
    runner: Runner, tree_root: Path, profile: str, say: Callable[[str], None], repo: Path = REPO
) -> List[str]:
    """pxe.build's step: the wheelhouse in the boot tree; in a dry run only the plan."""
    folder = Path(tree_root) / DIR
    if runner.dry_run:
        target = target_for(profile)
        runner.change(
            f"build the wheelhouse in {folder}: xenlab's wheel from {repo}, its dependencies"
            f" and {PIP} for Python {target.python_version}, {APP}",
            lambda: None,
        )
        return []
    return place(runner, tree_root, make(profile, say, repo))


def xenlab_requirement(tree_root: Path) -> Optional[str]:
    """'xenlab==VERSION' of the wheel in the boot tree's wheelhouse, or None when there is none."""
    folder = Path(tree_root) / DIR
    for wheel in sorted(folder.glob("xenlab-*.whl")):
        return f"xenlab=={wheel.name.split('-')[1]}"
    return None
