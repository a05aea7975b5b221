"""`invoke pxe.build` for real: Debian 12's installer from its Debian package, local installers
(folder, tarball), a download checked against SHA256SUMS (served on loopback), idempotence.

The downloads are cached in one folder for the module, so the packages are fetched once.
"""

import hashlib
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from tests.conftest import invoke

pytestmark = pytest.mark.slow

BIOS = ["pxelinux.0", "lpxelinux.0", "ldlinux.c32", "vesamenu.c32", "libcom32.c32", "libutil.c32"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pxe-build")


def build(root: Path, tree: str, *args: str, **config: str):
    """pxe.build under `root` into /TREE, the module's shared cache, extra config as INVOKE_*."""
    env = {
        "INVOKE_PXE_TFTP_ROOT": f"/{tree}",
        "INVOKE_INSTALL_CACHE_DIR": "/cache",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    env.update({f"INVOKE_INSTALL_{k.upper()}": v for k, v in config.items()})
    return invoke("pxe.build", "-q", "--root", str(root), *args, env=env)


def snapshot(tree: Path) -> dict:
    return {
        str(p.relative_to(tree)): (p.stat().st_mtime_ns, p.stat().st_mode, p.is_symlink())
        for p in sorted(tree.rglob("*"))
    }


def test_debian_12_from_the_debian_package(root):
    r = build(root, "deb12", "--profile", "debian-12")
    assert r.returncode == 0, r.stdout + r.stderr
    tree = root / "deb12"
    unpacked = next((root / "cache/unpacked").glob("debian-installer-12-netboot-amd64_*"))
    d_i = unpacked / "usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64"
    for name in ("linux", "initrd.gz"):
        got = tree / "installers/debian-12" / name
        assert got.is_file() and not got.is_symlink()
        assert got.read_bytes() == (d_i / name).read_bytes()
    for name in BIOS:
        assert (tree / "bios" / name).is_file() and not (tree / "bios" / name).is_symlink()
    # The installer's tree has no lpxelinux.0 (pxe.http_boot's BIOS loader), so pxelinux,
    # lpxelinux and the modules all come from the packages, of one syslinux build.
    assert not list(unpacked.rglob("lpxelinux.0"))
    pxelinux = next((root / "cache/unpacked").glob("pxelinux_*")) / "usr/lib/PXELINUX"
    modules = next((root / "cache/unpacked").glob("syslinux-common_*"))
    for name in ("pxelinux.0", "lpxelinux.0"):
        assert (tree / "bios" / name).read_bytes() == (pxelinux / name).read_bytes()
    want = modules / "usr/lib/syslinux/modules/bios/ldlinux.c32"
    assert (tree / "bios/ldlinux.c32").read_bytes() == want.read_bytes()
    for name in ("bootx64.efi", "grubx64.efi"):  # PE images: shim and the signed GRUB
        assert (tree / name).read_bytes()[:2] == b"MZ"
    assert b"x86_64-efi/grub.cfg" in (tree / "grubx64.efi").read_bytes()
    # GRUB's http module, which the signed image lacks, from grub-efi-amd64-bin of its build
    http_mod = tree / "grub/x86_64-efi/http.mod"
    assert http_mod.read_bytes()[:4] == b"\x7fELF"
    (bin_deb,) = (root / "cache/debs").glob("grub-efi-amd64-bin_*.deb")
    (signed_deb,) = (root / "cache/debs").glob("grub-efi-amd64-signed_*.deb")
    version = bin_deb.name.split("_")[1].replace("%2b", "+")
    assert version.replace("-", "+") in signed_deb.name.replace("%2b", "+")
    assert "installers/debian-12/linux" in r.stdout


def test_second_run_says_no_changes(root):
    tree = root / "deb12"
    if not tree.is_dir():
        assert build(root, "deb12", "--profile", "debian-12").returncode == 0
    before = snapshot(tree)
    r = build(root, "deb12", "--profile", "debian-12")
    assert r.returncode == 0, r.stderr
    assert "no changes" in r.stdout
    assert snapshot(tree) == before


def test_a_changed_file_is_put_back(root):
    tree = root / "deb12"
    if not tree.is_dir():
        assert build(root, "deb12", "--profile", "debian-12").returncode == 0
    good = (tree / "bios/ldlinux.c32").read_bytes()
    (tree / "bios/ldlinux.c32").write_bytes(b"broken")
    r = build(root, "deb12", "--profile", "debian-12")
    assert r.returncode == 0 and "replace bios/ldlinux.c32" in r.stdout, r.stdout + r.stderr
    assert (tree / "bios/ldlinux.c32").read_bytes() == good
    assert not list(tree.rglob("*.xenlab-old")), "no backup left behind"


def test_dry_run_changes_nothing(root):
    r = build(root, "dry", "--profile", "debian-12", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would install installers/debian-12/linux" in r.stdout
    assert not (root / "dry").exists()


def fake_installer(where: Path) -> Path:
    where.mkdir(parents=True)
    (where / "linux").write_bytes(b"kernel " + os.urandom(64))
    (where / "initrd.gz").write_bytes(b"initrd " + os.urandom(64))
    return where


def test_installer_from_a_local_folder(root, tmp_path):
    src = fake_installer(tmp_path / "bionic")
    r = build(root, "local", "--installer", str(src))  # ubuntu-18.04, the default
    assert r.returncode == 0, r.stdout + r.stderr
    tree = root / "local"
    for name in ("linux", "initrd.gz"):
        assert (tree / "installers/ubuntu-18.04" / name).read_bytes() == (src / name).read_bytes()
    # the folder has no pxelinux: it comes from the Debian packages, all of one build
    pkg = next((root / "cache/unpacked").glob("syslinux-common_*"))
    for name in BIOS[2:]:
        want = (pkg / "usr/lib/syslinux/modules/bios" / name).read_bytes()
        assert (tree / "bios" / name).read_bytes() == want
    assert "the package pxelinux" in r.stdout


def test_installer_from_a_netboot_tarball_with_links(root, tmp_path):
    src = fake_installer(tmp_path / "files")
    tarball = tmp_path / "netboot.tar.gz"
    with tarfile.open(str(tarball), "w:gz") as tar:
        tar.add(str(src / "linux"), "./ubuntu-installer/amd64/linux")
        tar.add(str(src / "initrd.gz"), "./ubuntu-installer/amd64/initrd.gz.real")
        link = tarfile.TarInfo("./ubuntu-installer/amd64/initrd.gz")
        link.type, link.linkname = tarfile.SYMTYPE, "initrd.gz.real"
        tar.addfile(link)
    r = build(root, "tarball", "--installer", str(tarball))
    assert r.returncode == 0, r.stdout + r.stderr
    got = root / "tarball/installers/ubuntu-18.04/initrd.gz"
    assert got.is_file() and not got.is_symlink()
    assert got.read_bytes() == (src / "initrd.gz").read_bytes()


def test_tarball_reaching_outside_is_refused(root, tmp_path):
    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(str(tarball), "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../../etc/evil")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    r = build(root, "evil", "--installer", str(tarball))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--installer" in r.stderr and "outside" in r.stderr
    assert not (root / "evil").exists()


def test_missing_installer_path_is_bad_input(root, tmp_path):
    r = build(root, "missing", "--installer", str(tmp_path / "nope"))
    assert r.returncode == 2 and "--installer" in r.stderr


@pytest.fixture
def images(tmp_path):
    """A netboot images folder on loopback HTTP: (base URL, folder)."""
    folder = tmp_path / "www/images"
    d_i = folder / "netboot/ubuntu-installer/amd64"
    d_i.mkdir(parents=True)
    (d_i / "linux").write_bytes(b"kernel " + os.urandom(4096))
    (d_i / "initrd.gz").write_bytes(b"initrd " + os.urandom(4096))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def handler(*args, **kwargs):
        return Quiet(*args, directory=str(tmp_path / "www"), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/images/", folder
    server.shutdown()
    server.server_close()


def write_sums(folder: Path, wrong: str = "") -> None:
    lines = []
    for rel in ("netboot/ubuntu-installer/amd64/linux", "netboot/ubuntu-installer/amd64/initrd.gz"):
        digest = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        if rel.endswith(wrong) and wrong:
            digest = hashlib.sha256(b"something else").hexdigest()
        lines.append(f"{digest}  ./{rel}\n")
    (folder / "SHA256SUMS").write_text("".join(lines))


def test_download_checked_against_sha256sums(root, images):
    url, folder = images
    write_sums(folder)
    r = build(root, "url", installer_url=url)
    assert r.returncode == 0, r.stdout + r.stderr
    got = root / "url/installers/ubuntu-18.04/linux"
    assert got.read_bytes() == (folder / "netboot/ubuntu-installer/amd64/linux").read_bytes()


def test_bad_checksum_is_refused(root, images):
    url, folder = images
    write_sums(folder, wrong="initrd.gz")
    r = build(root, "badsum", installer_url=url)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SHA256" in r.stderr and "refusing" in r.stderr
    assert not (root / "badsum").exists(), "nothing is installed from a bad download"
    claimed = hashlib.sha256(b"something else").hexdigest()[:16]
    assert not list((root / "cache/downloads").glob(f"{claimed}-*")), "the cache keeps no bad file"


def test_unreachable_installer_says_what_to_do(root, images):
    url, _ = images  # no SHA256SUMS in the folder: 404
    r = build(root, "gone", installer_url=url)
    assert r.returncode == 1
    assert "not reachable" in r.stderr and "--installer PATH" in r.stderr


def test_a_corrupt_cached_package_is_fetched_again(root):
    if not (root / "deb12").is_dir():
        assert build(root, "deb12", "--profile", "debian-12").returncode == 0
    (deb,) = (root / "cache/debs").glob("shim-signed_*.deb")
    good = deb.read_bytes()
    deb.write_bytes(good[: len(good) // 2])
    r = build(root, "deb12", "--profile", "debian-12")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "downloading the Debian package shim-signed" in r.stdout
    assert deb.read_bytes() == good
    assert "no changes" in r.stdout  # the tree itself was right all along
