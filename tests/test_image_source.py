"""image.build with `images.source`: the golden image fetched from pxe.serve (the install machine's
image cache), checked against its SHA256, unpacked and reused; a corrupted tarball is refused and
leaves no cache entry. pxe.serve runs in a server namespace, the "host" in a client namespace."""

import json
import os
from pathlib import Path

import pytest

from pipeline.config import ImagesConfig
from pipeline.errors import Failed
from pipeline.guest import image
from tests import test_pxe_boot
from tests.conftest import INVOKE, REPO, sh
from tests.test_pxe_boot import SERVER, inside, serving, site_env

segment = test_pxe_boot.segment
stand_in_tree = test_pxe_boot.stand_in_tree
KEY = "0123456789abcdef"
SOURCE = f"http://{SERVER}:8080/images"


def golden_entry(cache: Path) -> Path:
    """A small image cache entry as image.build leaves it: root/ and image.json."""
    entry = cache / f"debian-12-{KEY}"
    (entry / "root/boot").mkdir(parents=True)
    (entry / "root/boot/vmlinuz-6.1.0-28-amd64").write_bytes(os.urandom(300_000))
    (entry / "root/boot/initrd.img-6.1.0-28-amd64").write_bytes(os.urandom(200_000))
    (entry / "root/etc").mkdir()
    (entry / "root/etc/hostname").write_text("golden\n")
    os.chmod(str(entry / "root/etc/hostname"), 0o600)
    meta = {
        "profile": "debian-12",
        "key": KEY,
        "distribution": "Debian 12 (bookworm)",
        "kernel": "boot/vmlinuz-6.1.0-28-amd64",
        "initrd": "boot/initrd.img-6.1.0-28-amd64",
    }
    (entry / "image.json").write_text(json.dumps(meta))
    return entry


def files(tree: Path) -> dict:
    return {
        str(p.relative_to(tree)): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(tree.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def served(segment, stand_in_tree, tmp_path):
    srv, cl = segment
    entry = golden_entry(tmp_path / "server-images")
    env = site_env(tmp_path, INVOKE_IMAGES_CACHE_DIR=str(tmp_path / "server-images"))
    with serving(srv, ["--interface", "pxe0"], env, tmp_path / "serve.log") as server:
        sh("ip", "-n", cl, "addr", "add", "10.77.0.50/24", "dev", "eth0")
        yield cl, entry, server


def test_fetched_verified_unpacked_and_reused(served, tmp_path):
    cl, entry, server = served
    config = ImagesConfig(cache_dir=str(tmp_path / "host-images"), source=SOURCE)
    with inside(cl):
        golden = image.ensure("debian-12", config)
        again = image.ensure("debian-12", config)
    assert golden.key == KEY and not golden.reused
    assert golden.tree == tmp_path / "host-images" / f"debian-12-{KEY}" / "root"
    assert files(golden.tree) == files(entry / "root")  # contents and modes
    assert golden.kernel == "boot/vmlinuz-6.1.0-28-amd64"
    assert again.reused and again.tree == golden.tree
    assert [
        p.name for p in (tmp_path / "host-images").iterdir() if not p.name.endswith(".lock")
    ] == [f"debian-12-{KEY}"]
    assert "HTTP images/index.json" in server.text()

    # The task, as the installed host runs it (its site file sets images.source): reused.
    site = tmp_path / "site.yaml"
    site.write_text(f"images:\n  cache_dir: {tmp_path / 'host-images'}\n  source: {SOURCE}\n")
    proc = sh(
        "ip", "netns", "exec", cl, "env", "COLUMNS=200", "sh", "-c",
        f"cd {REPO} && exec {' '.join(INVOKE)} -f {site} image.build --profile debian-12",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"reused the cached image {KEY}" in proc.stdout


def test_a_corrupted_tarball_is_refused_and_leaves_no_entry(served, tmp_path):
    cl, entry, _ = served
    config = ImagesConfig(cache_dir=str(tmp_path / "host-images"), source=SOURCE)
    with inside(cl):
        image.ensure("debian-12", config, dry_run=True)  # the server packs it (index.json)
    tarball = entry.parent / ".export" / f"debian-12-{KEY}.tar"
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte somewhere in the middle
    tarball.write_bytes(bytes(data))
    with inside(cl), pytest.raises(Failed) as err:
        image.ensure("debian-12", config)
    assert "SHA256" in str(err.value) and "refused" in str(err.value)
    left = [p.name for p in (tmp_path / "host-images").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # no entry, no half download
