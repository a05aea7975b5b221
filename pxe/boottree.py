"""`pxe.build`: the boot tree at pxe.tftp_root (under --root), what pxe.serve serves.

    bios/pxelinux.0, bios/lpxelinux.0,      pxelinux (lpxelinux: with HTTP, for pxe.http_boot)
    bios/ldlinux.c32 ...                    and the modules its menus use (pxe/menus.py)
    bootx64.efi, grubx64.efi                shim and Debian's signed GRUB network image
    grub/x86_64-efi/http.mod                GRUB's HTTP client (for pxe.http_boot)
    installers/<profile>/linux, initrd.gz   the installer
    wheelhouse/                             xenlab and its dependencies for the installed host
                                            (pxe/wheelhouse.py), served over HTTP only

The menus and preseeds are not files: pxe.serve makes them per request (pxe/menus.py). Where
each piece comes from:
- the installer: `--installer PATH` (a folder with linux and initrd.gz or a netboot tree, a
  netboot tarball, or a .deb such as debian-installer-12-netboot-amd64); else the profile's
  default: for debian-12 the Debian package, for ubuntu-18.04 the netboot images of
  bionic-updates on the Ubuntu archive (install.installer_url overrides), checked against the
  images' SHA256SUMS.
- pxelinux: from the installer's own tree when it has pxelinux.0, lpxelinux.0 and every module
  (they must be of one syslinux build), else from the Debian packages pxelinux and
  syslinux-common (Debian's and Ubuntu's netboot trees have no lpxelinux.0).
- shim and GRUB: the Debian packages shim-signed and grub-efi-amd64-signed.
Packages come through the machine's apt (`apt-get download`, checked by apt) and are unpacked
with `dpkg-deb -x` into install.cache_dir: nothing needs to be installed.
"""

import filecmp
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from pipeline.config import InstallConfig, PxeConfig
from pipeline.errors import BadInput, Failed
from pipeline.runner import Runner
from pxe import menus, profiles, wheelhouse
from pxe.download import Cache, fetch_text, parse_sha256sums

SYSLINUX_PACKAGES = ("pxelinux", "syslinux-common")
PXELINUX_IN_PACKAGE = "usr/lib/PXELINUX/pxelinux.0"  # lpxelinux.0 beside it
MODULES_IN_PACKAGE = "usr/lib/syslinux/modules/bios"
SHIM_PACKAGE, SHIM_IN_PACKAGE = "shim-signed", "usr/lib/shim/shimx64.efi.signed"
GRUB_PACKAGE, GRUB_IN_PACKAGE = (
    "grub-efi-amd64-signed",
    "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
)
# GRUB's modules of the same build (http.mod: pxe/menus.py EFI_GRUB_MODULES)
GRUB_MODULES_PACKAGE, GRUB_MODULES_IN_PACKAGE = "grub-efi-amd64-bin", "usr/lib/grub/x86_64-efi"
NOT_REACHABLE_HINT = (
    "get the netboot tarball (netboot.tar.gz) or its linux and initrd.gz some other way and "
    "give it with `invoke pxe.build --installer PATH`"
)


@dataclass(frozen=True)
class Source:
    path: Path  # the file to copy (symlinks resolved)
    origin: str  # said to the user


@dataclass
class BootTree:
    root: Path  # the tree on disk
    files: List[str]  # relative to root
    changed: List[str] = field(default_factory=list)
    origins: Dict[str, str] = field(default_factory=dict)


def _file(path: Path, inside: Path, what: str) -> Path:
    """`path` with its symlinks resolved, refusing links that leave `inside`."""
    real = path.resolve()
    if not real.is_file():
        raise Failed(f"{what}: {path} is not a file")
    if inside not in real.parents:
        raise Failed(f"{what}: {path} links outside {inside}")
    return real


def _find(tree: Path, name: str) -> Optional[Path]:
    """The shallowest file called `name` under `tree` (links resolved), or None."""
    best = None
    for path in tree.rglob(name):
        if path.is_file() and (best is None or len(path.parts) < len(best.parts)):
            best = path
    return best


def _installer_in_tree(
    tree: Path, profile: profiles.InstallerProfile, origin: str
) -> Tuple[Tuple[Source, Source], Path]:
    """Kernel and initrd in an unpacked installer (flat, a netboot tree, or a package's tree),
    and the folder they were found in (where its pxelinux is looked for: a package holds more
    than one image tree)."""
    roots = [tree]
    if profile.package_tree and (tree / profile.package_tree).is_dir():
        roots.insert(0, tree / profile.package_tree)
    for root in roots:
        for kernel, initrd in (
            ("linux", "initrd.gz"),
            (profile.tree_kernel, profile.tree_initrd),
        ):
            if (root / kernel).exists() and (root / initrd).exists():
                return (
                    Source(_file(root / kernel, tree, "--installer"), origin),
                    Source(_file(root / initrd, tree, "--installer"), origin),
                ), root
    raise BadInput(
        "--installer",
        origin,
        f"has neither linux and initrd.gz nor {profile.tree_kernel} and {profile.tree_initrd}",
    )


def _unpack_local(path: Path, cache: Cache) -> Path:
    if path.is_dir():
        return path.resolve()
    if not path.is_file():
        raise BadInput("--installer", str(path), "does not exist")
    if path.name.endswith(".deb"):
        return cache.unpacked_deb(path.resolve())
    if any(path.name.endswith(s) for s in (".tar.gz", ".tgz", ".tar", ".tar.xz")):
        return cache.unpacked_tarball(path.resolve())
    raise BadInput(
        "--installer",
        str(path),
        "is not a folder with linux and initrd.gz, a netboot tarball (.tar.gz) or a .deb",
    )


def _installer(
    install: InstallConfig, installer: Optional[str], cache: Cache
) -> Tuple[Tuple[Source, Source], Optional[Path]]:
    """(kernel, initrd) and the unpacked tree they came from (None for bare downloads)."""
    profile = profiles.get(install.profile)
    if installer:
        return _installer_in_tree(_unpack_local(Path(installer), cache), profile, installer)
    if profile.package and not install.installer_url:
        tree = cache.package(profile.package)
        return _installer_in_tree(tree, profile, f"the Debian package {profile.package}")
    base = profile.images_url(install)
    try:
        sums = parse_sha256sums(fetch_text(base + "SHA256SUMS"))
    except Failed as exc:
        raise Failed(
            f"the {profile.name} installer is not reachable from here ({exc}): "
            + NOT_REACHABLE_HINT
        ) from None
    kernel = cache.checked_url(base, profile.kernel, sums)
    initrd = cache.checked_url(base, profile.initrd, sums)
    return (Source(kernel, base + profile.kernel), Source(initrd, base + profile.initrd)), None


def _bios(tree: Optional[Path], cache: Cache) -> Dict[str, Source]:
    names = menus.BIOS_LOADERS + menus.BIOS_MODULES
    if tree is not None:
        found = {name: _find(tree, name) for name in names}
        if all(found.values()):
            return {
                f"bios/{n}": Source(_file(p, tree, "installer tree"), "the installer's tree")
                for n, p in found.items()
            }
    pxelinux = cache.package(SYSLINUX_PACKAGES[0])
    modules = cache.package(SYSLINUX_PACKAGES[1])
    sources = {
        f"bios/{name}": Source(
            _file((pxelinux / PXELINUX_IN_PACKAGE).with_name(name), pxelinux, "pxelinux"),
            "the package pxelinux",
        )
        for name in menus.BIOS_LOADERS
    }
    for name in menus.BIOS_MODULES:
        path = modules / MODULES_IN_PACKAGE / name
        sources[f"bios/{name}"] = Source(
            _file(path, modules, "syslinux-common"), "the package syslinux-common"
        )
    return sources


def _efi(cache: Cache) -> Dict[str, Source]:
    shim = cache.package(SHIM_PACKAGE)
    grub = cache.package(GRUB_PACKAGE)
    grub_modules = cache.package(GRUB_MODULES_PACKAGE)
    modules = {
        f"{menus.EFI_GRUB_MODULE_DIR}/{name}": Source(
            _file(grub_modules / GRUB_MODULES_IN_PACKAGE / name, grub_modules, name),
            f"the package {GRUB_MODULES_PACKAGE}",
        )
        for name in menus.EFI_GRUB_MODULES
    }
    return {
        **modules,
        menus.EFI_LOADER: Source(
            _file(shim / SHIM_IN_PACKAGE, shim, SHIM_PACKAGE), f"the package {SHIM_PACKAGE}"
        ),
        menus.EFI_GRUB: Source(
            _file(grub / GRUB_IN_PACKAGE, grub, GRUB_PACKAGE), f"the package {GRUB_PACKAGE}"
        ),
    }


def sources(install: InstallConfig, installer: Optional[str], cache: Cache) -> Dict[str, Source]:
    """Every file of the tree (relative path) and where it comes from, fetched into the cache."""
    (kernel, initrd), tree = _installer(install, installer, cache)
    linux_path, initrd_path = menus.installer_files(install.profile)
    files = {linux_path: kernel, initrd_path: initrd}
    files.update(_bios(tree, cache))
    files.update(_efi(cache))
    return files


def _place(runner: Runner, target: Path, source: Source, rel: str) -> bool:
    """Copy `source` to `target` unless it is already there; True when it changed (or would)."""
    if (
        target.is_file()
        and not target.is_symlink()
        and filecmp.cmp(str(source.path), str(target), shallow=False)
    ):
        return False
    existed = target.exists() or target.is_symlink()
    missing = [p for p in reversed(target.parents) if not p.exists()]
    backup = target.with_name(f".{target.name}.xenlab-old")

    def do() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.")
        os.close(fd)
        try:
            shutil.copyfile(str(source.path), tmp)
            os.chmod(tmp, 0o644)
            if existed:
                os.replace(str(target), str(backup))
            os.replace(tmp, str(target))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def undo() -> None:
        if existed and (backup.exists() or backup.is_symlink()):
            os.replace(str(backup), str(target))
        elif target.exists():
            target.unlink()
        for d in reversed(missing):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    verb = "replace" if existed else "install"
    runner.change(f"{verb} {rel} (from {source.origin})", do, undo)
    return True


def _planned_origin(install: InstallConfig, installer: Optional[str]) -> Callable[[str], str]:
    profile = profiles.get(install.profile)
    if installer:
        kernel_from = f"from {installer}"
    elif profile.package and not install.installer_url:
        kernel_from = f"from the Debian package {profile.package}"
    else:
        kernel_from = f"from {profile.images_url(install)}, checked against its SHA256SUMS"

    def origin(rel: str) -> str:
        if rel.startswith("installers/"):
            return kernel_from
        if rel.startswith("bios/"):
            return "from the installer's tree or the packages " + " and ".join(SYSLINUX_PACKAGES)
        return f"from the packages {SHIM_PACKAGE}, {GRUB_PACKAGE} and {GRUB_MODULES_PACKAGE}"

    return origin


def build(
    install: InstallConfig,
    pxe_cfg: PxeConfig,
    runner: Runner,
    installer: Optional[str],
    say: Callable[[str], None],
    progress: bool = True,
) -> BootTree:
    """Assemble the tree; a second run changes nothing. In dry-run nothing is fetched either:
    the plan names the files and where they would come from."""
    root = runner.path(pxe_cfg.tftp_root)
    profile = profiles.get(install.profile)
    if installer is not None and not Path(installer).exists():
        raise BadInput("--installer", installer, "does not exist")
    wanted = (
        menus.installer_files(profile.name)
        + [f"bios/{n}" for n in menus.BIOS_LOADERS + menus.BIOS_MODULES]
        + [menus.EFI_LOADER, menus.EFI_GRUB]
        + [f"{menus.EFI_GRUB_MODULE_DIR}/{n}" for n in menus.EFI_GRUB_MODULES]
    )
    tree = BootTree(root=root, files=wanted)
    cache_dir = runner.path(install.cache_dir)
    if runner.dry_run:
        # the plan without fetching (the cache is left alone too): what the tree would hold
        origin = _planned_origin(install, installer)
        for rel in wanted:
            target = root / rel
            verb = "install or refresh" if target.exists() else "install"
            runner.change(f"{verb} {rel} ({origin(rel)})", lambda: None)
        wheelhouse.build(runner, root, profile.name, say)
        return tree
    cache = Cache(cache_dir, say=say, progress=progress)
    files = sources(install, installer, cache)
    with runner.transaction():
        for rel, source in files.items():
            tree.origins[rel] = source.origin
            if _place(runner, root / rel, source, rel):
                tree.changed.append(rel)
        # the installed host's xenlab (zero touch): pxe.serve serves it at /wheelhouse/
        house = wheelhouse.build(runner, root, profile.name, say)
        tree.changed += [f"{wheelhouse.DIR}/{name}" for name in house]
    if not runner.dry_run:
        for rel in tree.changed:  # the run went through: drop what it replaced
            backup = (root / rel).with_name(f".{(root / rel).name}.xenlab-old")
            if backup.exists():
                backup.unlink()
    return tree
