"""`invoke image.build`: the cache key, the cache's atomicity, and real golden images.

The slow tests build for real into the default cache (/var/cache/xenlab/images), as a user
would: the suite pays each build once per machine, later runs reuse it.
"""

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Optional

import pytest
from ruamel.yaml import YAML

from pipeline import apt_sources, chroot
from pipeline.config import ImagesConfig
from pipeline.errors import BadInput, Failed
from pipeline.guest import image, profiles
from tests.conftest import invoke, sh

DEBIAN = profiles.PROFILES["debian-12"]
UBUNTU = profiles.PROFILES["ubuntu-18.04"]
MIRRORS = image.Mirrors("http://mirror.example/debian", "http://mirror.example/debian-security")


def copy_elements(dest: Path) -> Path:
    shutil.copytree(str(image.ELEMENTS_DIR), str(dest), symlinks=True)
    return dest


# --- the key ------------------------------------------------------------------------------------
def test_key_does_not_depend_on_the_checkout_path(tmp_path):
    one = copy_elements(tmp_path / "checkout-a" / "elements")
    two = copy_elements(tmp_path / "elsewhere" / "b" / "elements")
    keys = {
        image.make_plan(DEBIAN, MIRRORS, elements_dir=d).key for d in (image.ELEMENTS_DIR, one, two)
    }
    assert len(keys) == 1


def test_key_changes_when_an_element_file_changes(tmp_path):
    elements = copy_elements(tmp_path / "elements")
    before = image.make_plan(DEBIAN, MIRRORS, elements_dir=elements).key
    script = elements / "xenlab-pv-boot" / "pre-install.d" / "10-xenlab-initramfs-modules"
    script.write_text(script.read_text() + "# one more line\n")
    changed = image.make_plan(DEBIAN, MIRRORS, elements_dir=elements).key
    assert changed != before
    os.chmod(str(script), 0o644)  # the executable bit decides whether DIB runs it
    assert image.make_plan(DEBIAN, MIRRORS, elements_dir=elements).key not in (before, changed)
    (elements / "xenlab-guest" / "new-file").write_text("x\n")
    assert image.make_plan(DEBIAN, MIRRORS, elements_dir=elements).key != before


def test_key_changes_with_the_mirrors_and_the_profile():
    base = image.make_plan(DEBIAN, MIRRORS).key
    other_main = image.Mirrors("http://other.example/debian", MIRRORS.security)
    other_security = image.Mirrors(MIRRORS.main, "http://other.example/debian-security")
    keys = {
        base,
        image.make_plan(DEBIAN, other_main).key,
        image.make_plan(DEBIAN, other_security).key,
        image.make_plan(UBUNTU, image.Mirrors("http://mirror.example/ubuntu")).key,
        image.make_plan(DEBIAN, MIRRORS, dib="0.0.1").key,
    }
    assert len(keys) == 5
    assert image.make_plan(DEBIAN, MIRRORS).key == base  # and it is stable


def test_key_is_the_cache_key_of_every_input():
    """One key function for every cache (pipeline.chroot.cache_key), and the entry's name uses it."""
    plan = image.make_plan(DEBIAN, MIRRORS)
    assert plan.key == chroot.cache_key(plan.inputs)
    assert image.entry_path(Path("/c"), plan) == Path(f"/c/debian-12-{plan.key}")
    assert image.entries(Path("/nonexistent"), "debian-12") == []


# --- mirrors ------------------------------------------------------------------------------------
def write_sources(etc_apt: Path, text: str) -> Path:
    (etc_apt / "sources.list.d").mkdir(parents=True)
    (etc_apt / "sources.list.d" / "debian.sources").write_text(text)
    return etc_apt


SOURCES = """\
Types: deb
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirrors_come_from_the_config_else_the_apt_sources(tmp_path):
    etc_apt = write_sources(tmp_path / "apt", SOURCES)
    found = image.mirrors_for(DEBIAN, ImagesConfig(), etc_apt)
    assert found == image.Mirrors("http://deb.example/debian", "http://deb.example/debian-security")
    configured = ImagesConfig(
        mirror="http://m.example/debian/", security_mirror="http://s.example/ds"
    )
    assert image.mirrors_for(DEBIAN, configured, etc_apt) == image.Mirrors(
        "http://m.example/debian", "http://s.example/ds"
    )
    # Ubuntu: the machine has no bionic source here, so Ubuntu's own archive.
    assert image.mirrors_for(UBUNTU, ImagesConfig(), etc_apt).main == apt_sources.UBUNTU_ARCHIVE
    assert (
        image.mirrors_for(
            UBUNTU, ImagesConfig(ubuntu_mirror="http://u.example/ubuntu"), etc_apt
        ).main
        == "http://u.example/ubuntu"
    )


def test_a_debian_build_without_a_security_mirror_is_bad_input(tmp_path):
    etc_apt = write_sources(tmp_path / "apt", SOURCES.split("\n\n")[0] + "\n")
    with pytest.raises(BadInput) as err:
        image.mirrors_for(DEBIAN, ImagesConfig(), etc_apt)
    assert err.value.problems[0].field == "images.security_mirror"


# --- the task's bad input -------------------------------------------------------------------------
def test_bad_profile_exits_2_naming_the_flag(tmp_path):
    cache = tmp_path / "cache"
    done = invoke("image.build", "--profile", "windows-95",
                  env={"INVOKE_IMAGES_CACHE_DIR": str(cache)})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--profile" in done.stderr and "windows-95" in done.stderr
    assert "debian-12" in done.stderr  # it says what would work
    assert not cache.exists()


def test_bad_mirror_exits_2_naming_the_field(tmp_path):
    cache = tmp_path / "cache"
    done = invoke("image.build", "--profile", "debian-12",
                  env={"INVOKE_IMAGES_CACHE_DIR": str(cache),
                       "INVOKE_IMAGES_MIRROR": "ftp://mirror example/debian"})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "images.mirror" in done.stderr
    assert not cache.exists()


# --- the cache ------------------------------------------------------------------------------------
def test_a_failed_build_leaves_no_entry(tmp_path, monkeypatch):
    """Whatever the build made in its temporary directory goes; the cache has no entry."""
    cache = tmp_path / "cache"
    config = ImagesConfig(
        cache_dir=str(cache), mirror=MIRRORS.main, security_mirror=MIRRORS.security
    )

    def failing(plan, tmp, cache_dir, say):
        (tmp / "root" / "etc").mkdir(parents=True)
        (tmp / "root" / "etc" / "half").write_text("half a tree\n")
        raise Failed("disk-image-create exited 1")

    monkeypatch.setattr(image, "_build", failing)
    with pytest.raises(Failed):
        image.ensure("debian-12", config)
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".debian-12.lock")] == []

    def interrupted(plan, tmp, cache_dir, say):
        (tmp / "root").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(image, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        image.ensure("debian-12", config)
    assert not image.entries(cache, "debian-12")
    assert not list(cache.glob(".build-*"))


def test_a_ready_entry_is_reused_and_older_ones_are_replaced(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    config = ImagesConfig(
        cache_dir=str(cache), mirror=MIRRORS.main, security_mirror=MIRRORS.security
    )
    stale = cache / "debian-12-0123456789abcdef"
    (stale / "root").mkdir(parents=True)

    def fake(plan, tmp, cache_dir, say):
        (tmp / "root" / "boot").mkdir(parents=True)
        meta = {"profile": "debian-12", "key": plan.key, "distribution": "Debian 12 (bookworm)",
                "kernel": "boot/vmlinuz-1", "initrd": "boot/initrd.img-1"}  # fmt: skip
        (tmp / "image.json").write_text(json.dumps(meta))

    monkeypatch.setattr(image, "_build", fake)
    said = []
    built = image.ensure("debian-12", config, say=said.append)
    assert not built.reused and built.tree.is_dir()
    assert not stale.exists(), "the older entry of the profile is removed"
    first = os.stat(str(built.tree.parent))

    monkeypatch.setattr(image, "_build", None)  # a second call must not build
    again = image.ensure("debian-12", config, say=said.append)
    assert again.reused and again.tree == built.tree
    assert any(line.startswith("reused the cached debian-12 image") for line in said)
    assert os.stat(str(again.tree.parent)).st_ino == first.st_ino


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_an_interrupted_build_stops_every_process_it_started(tmp_path):
    """Ctrl-C during diskimage-builder: its whole session goes (debootstrap, apt in the chroot),
    not only the process ensure() started, before the build directory is removed."""
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; echo started; wait"

    def say(line: str) -> None:
        if line == "started":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        image._run_streamed(["sh", "-c", script], dict(os.environ), say)
    assert not alive(int(pidfile.read_text()))


def test_a_failing_build_command_says_why(tmp_path):
    with pytest.raises(Failed) as err:
        image._run_streamed(["sh", "-c", "echo step one; echo broken >&2; exit 3"], {}, print)
    assert "exited 3" in str(err.value) and "broken" in str(err.value)


def test_remove_tree_never_deletes_through_a_mount(tmp_path):
    """A killed build can leave its chroot's binds; removing the build must not follow them."""
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("host data\n")
    victim = tmp_path / "victim"
    (victim / "mnt" / "dev").mkdir(parents=True)
    sh("mount", "--bind", str(keep), str(victim / "mnt" / "dev"))
    try:
        image.remove_tree(victim)
    finally:
        sh("umount", "-l", str(victim / "mnt" / "dev"), check=False)
    assert not victim.exists()
    assert (keep / "precious").read_text() == "host data\n"


# --- real images ----------------------------------------------------------------------------------
def unmet_prerequisite(profile: str, images: Optional[ImagesConfig] = None) -> Optional[str]:
    """Why this machine cannot build `profile`'s golden image, or None when it can (or the image
    is cached already: then nothing is needed). Only what the machine lacks counts: a mirror its
    apt sources do not name, a tool that is not installed, a mirror it cannot reach. A build that
    fails for any other reason is a failure, not a skip. (The guest tests use this too.)"""
    images = images or ImagesConfig()  # the defaults of invoke.yaml, the same as the task's
    try:
        if image.ensure(profile, images, dry_run=True) is not None:
            return None
    except BadInput as exc:
        return f"the {profile} image needs a mirror this machine does not configure: {exc}"
    missing = image.missing_tools()
    if missing:
        return f"the {profile} image build needs: {'; '.join(missing)}"
    spec = profiles.profile_of(profile)
    mirrors = image.mirrors_for(spec, images)
    urls = [f"{mirrors.main}/dists/{spec.release}/Release"]
    if mirrors.security:
        urls.append(f"{mirrors.security}/dists/{spec.release}-security/Release")
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=15) as resp:
                resp.read(64)
        except OSError as exc:
            return f"{url} is not reachable from here ({exc}): the {profile} build needs it"
    return None


def test_a_machine_without_the_build_tools_is_told_which(monkeypatch):
    """The prerequisites are named, each with its package: what a user (and a test's skip) reads."""
    monkeypatch.setattr(shutil, "which", lambda tool, *a, **k: None)
    monkeypatch.setattr(image.sys, "executable", "/nonexistent/python")
    missing = image.missing_tools()
    assert (
        "debootstrap is not installed (Debian package debootstrap; ./setup installs it)" in missing
    )
    assert "sudo is not installed (Debian package sudo; ./setup installs it)" in missing
    assert "disk-image-create is not installed (pip package diskimage-builder)" in missing
    assert len(missing) == len(image.BUILD_TOOLS) + 1


def initramfs_listing(tree: Path, initrd: str) -> list:
    """The initrd's files, read with the image's own lsinitramfs (nothing is written)."""
    return sh("chroot", str(tree), "lsinitramfs", "/" + initrd).stdout.split()


def initramfs_modules(tree: Path, initrd: str) -> set:
    """Module names in the initrd and built into the kernel."""
    listing = initramfs_listing(tree, initrd)
    names = {Path(p).name.split(".ko")[0].replace("-", "_") for p in listing if ".ko" in p}
    version = initrd.split("initrd.img-", 1)[1]
    builtin = tree / "lib" / "modules" / version / "modules.builtin"
    if builtin.is_file():
        names |= {Path(p).name.split(".ko")[0].replace("-", "_")
                  for p in builtin.read_text().split()}  # fmt: skip
    return names


def effective_cloud_config(tree: Path) -> dict:
    """cloud.cfg, then cloud.cfg.d/*.cfg in lexical order, later keys winning (as cloud-init merges
    top-level keys)."""
    merged = {}
    files = [tree / "etc/cloud/cloud.cfg"] + sorted((tree / "etc/cloud/cloud.cfg.d").glob("*.cfg"))
    for path in files:
        if path.is_file():
            merged.update(YAML(typ="safe").load(path.read_text()) or {})
    return merged


def entry_stat(golden) -> tuple:
    entry = golden.tree.parent
    return tuple((os.stat(str(p)).st_ino, os.stat(str(p)).st_mtime_ns)
                 for p in (entry, golden.tree, entry / "image.json"))  # fmt: skip


@pytest.fixture(scope="module", params=["debian-12", "ubuntu-18.04"])
def golden(request):
    """The profile's golden image, built (or reused) by `invoke image.build` in the default cache."""
    reason = unmet_prerequisite(request.param)
    if reason:
        pytest.skip(reason)
    done = invoke("image.build", "--profile", request.param)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    images = ImagesConfig()  # the defaults of invoke.yaml, the same as the task's
    found = image.ensure(request.param, images)
    assert found.reused
    return found


@pytest.mark.slow
def test_golden_image_boots_as_a_xen_pv_guest(golden):
    tree = golden.tree
    assert (tree / golden.kernel).is_file() and (tree / golden.initrd).is_file()
    for mount_point in ("proc", "sys", "dev", "run", "tmp"):  # systemd mounts its API filesystems
        assert (tree / mount_point).is_dir(), f"/{mount_point} is missing"
    modules = initramfs_modules(tree, golden.initrd)
    for needed in ("xen_blkfront", "xen_netfront", "virtio_blk", "virtio_net", "virtio_pci"):
        assert needed in modules, f"{needed} is neither in {golden.initrd} nor built in"
    names = {Path(p).name for p in initramfs_listing(tree, golden.initrd)}
    assert {"fsck", "e2fsck", "fsck.ext4"} <= names, "the root is checked before it is mounted"

    grub = (tree / "boot/grub/grub.cfg").read_text()
    first = next(line.split() for line in grub.splitlines() if line.strip().startswith("linux "))
    assert first[1] == "/" + golden.kernel
    assert " ".join(first[2:]) == image.KERNEL_CMDLINE
    assert "root=/dev/xvda2" in first and "console=hvc0" in first
    assert "initrd /" + golden.initrd in grub
    hook = tree / "etc/kernel/postinst.d/zz-xenlab-pygrub"
    assert os.access(str(hook), os.X_OK), "kernel upgrades must rewrite grub.cfg"

    fstab = [line.split() for line in (tree / "etc/fstab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    assert ["LABEL=" + image.ROOT_LABEL, "/", "ext4"] == fstab[0][:3]
    assert any(f[0] == "LABEL=" + image.SWAP_LABEL and f[2] == "swap" for f in fstab)
    assert (tree / "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service").is_symlink()


@pytest.mark.slow
def test_golden_image_has_nocloud_sshd_and_no_way_in(golden):
    tree = golden.tree
    config = effective_cloud_config(tree)
    assert config["datasource_list"] == ["NoCloud", "None"]
    assert "default" not in (config.get("users") or []), "cloud-init's default user is disabled"
    assert config["ssh_pwauth"] is False and config["disable_root"] is True

    assert (tree / "usr/sbin/sshd").is_file()
    assert (tree / "etc/systemd/system/multi-user.target.wants/ssh.service").is_symlink()
    assert sorted(p.name for p in (tree / "etc/ssh").glob("ssh_host_*")) == []

    shadow = {line.split(":")[0]: line.split(":")[1]
              for line in (tree / "etc/shadow").read_text().splitlines() if line}  # fmt: skip
    assert shadow["root"].startswith(("!", "*")), "root is locked"
    usable = [name for name, hash_ in shadow.items() if hash_ and not hash_.startswith(("!", "*"))]
    assert usable == [], f"accounts with a password: {usable}"
    regular = [line.split(":")[0] for line in (tree / "etc/passwd").read_text().splitlines()
               if line and 1000 <= int(line.split(":")[2]) < 60000]  # fmt: skip
    assert regular == []
    assert (tree / "etc/machine-id").read_text() == "", "each guest makes its own machine-id"

    # What applies cloud-init's network-config v2 is installed and enabled.
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    if golden.profile == "ubuntu-18.04":
        assert (tree / "usr/sbin/netplan").is_file()
        assert (wants / "systemd-networkd.service").is_symlink()
    else:
        assert (tree / "sbin/ifup").is_file() or (tree / "usr/sbin/ifup").is_file()
        assert (wants / "networking.service").is_symlink()
    assert not list((tree / "etc/network/interfaces.d").glob("eth*")), "no DHCP stanza of DIB's"
    assert golden.distribution.startswith(("Debian 12", "Ubuntu 18.04"))


@pytest.mark.slow
def test_second_build_reuses_the_cache(golden):
    before = entry_stat(golden)
    done = invoke("image.build", "--profile", golden.profile)
    assert done.returncode == 0, done.stderr
    assert f"reused the cached {golden.profile} image {golden.key}" in done.stdout
    assert "diskimage-builder" not in done.stdout
    assert entry_stat(golden) == before, "the cache entry was not touched"
    # Only the newest entry of the profile is kept.
    assert image.entries(golden.tree.parent.parent, golden.profile) == [golden.tree.parent]


# --- what pygrub boots ------------------------------------------------------------------------------
def grub_tree(tmp_path: Path, cfg: str, files=("boot/vmlinuz-2", "boot/initrd.img-2")) -> Path:
    root = tmp_path / "root"
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text(cfg)
    for rel in files:
        (root / rel).write_text("x\n")
    return root


GRUB_CFG = """set default=0
menuentry 'Linux 2' {
    linux /boot/vmlinuz-2 root=/dev/xvda2 ro console=hvc0
    initrd /boot/initrd.img-2
}
menuentry 'Linux 1' {
    linux /boot/vmlinuz-1 root=/dev/xvda2 ro console=hvc0
    initrd /boot/initrd.img-1
}
"""


def test_the_golden_images_kernel_is_grub_cfgs_first_entry(tmp_path):
    """GoldenImage.kernel/initrd are what pygrub boots: the first entry, relative to the tree."""
    root = grub_tree(tmp_path, GRUB_CFG)
    assert image._boot_entry(root) == ("boot/vmlinuz-2", "boot/initrd.img-2")


def test_a_grub_cfg_naming_a_missing_kernel_fails_the_build(tmp_path):
    root = grub_tree(tmp_path, GRUB_CFG, files=("boot/initrd.img-2",))
    with pytest.raises(Failed, match=re.escape("names no existing kernel (boot/vmlinuz-2)")):
        image._boot_entry(root)


# --- the elements -----------------------------------------------------------------------------------
def test_labels_and_kernel_command_line_are_the_elements_as_bash_reads_them():
    """One source: the xenlab-pv-boot element's environment.d file; xenlab reads the same values."""
    script = f'. "{image.PV_BOOT_ENV}"; printf "%s\\n" "$XENLAB_ROOT_LABEL" "$XENLAB_SWAP_LABEL" '
    script += '"$XENLAB_KERNEL_CMDLINE"'
    # The environment cannot override them: the cache key covers only the file.
    env = dict(os.environ, XENLAB_ROOT_LABEL="other", XENLAB_KERNEL_CMDLINE="other")
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.splitlines() == [image.ROOT_LABEL, image.SWAP_LABEL, image.KERNEL_CMDLINE]
    assert "XENLAB_ROOT_LABEL" not in image.build_env(DEBIAN, MIRRORS)


@pytest.mark.parametrize(
    "line,problem",
    [
        ("export XENLAB_ROOT_LABEL=${XENLAB_ROOT_LABEL:-x}", "is not a literal value"),
        ("XENLAB_ROOT_LABEL=x", "not an `export NAME=VALUE` line"),
        ("export XENLAB_KERNEL_CMDLINE=root=/dev/xvda2 ro", "not an `export NAME=VALUE` line"),
    ],
)
def test_element_settings_refuse_what_bash_would_read_otherwise(tmp_path, line, problem):
    path = tmp_path / "10-settings.bash"
    path.write_text(f"# a comment's quote\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ")) as err:
        image.element_settings(path)
    assert problem in str(err.value)


def test_no_element_script_is_a_copy_of_another():
    """A step two phases need is one file: the other phase links to it."""
    seen = {}
    for path in sorted(image.ELEMENTS_DIR.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.parent.name.endswith(".d"):
            seen.setdefault(path.read_bytes(), []).append(str(path.relative_to(image.ELEMENTS_DIR)))
    copies = [paths for paths in seen.values() if len(paths) > 1]
    assert copies == []
    # The fstab is written in install.d (for the initramfs) and again in finalise.d (over
    # diskimage-builder's own), by the same script; diskimage-builder runs a link to it.
    again = image.ELEMENTS_DIR / "xenlab-pv-boot/finalise.d/50-xenlab-fstab"
    assert again.is_symlink()
    assert again.resolve() == (image.ELEMENTS_DIR / "xenlab-pv-boot/install.d/50-xenlab-fstab")
    assert os.readlink(str(again)) == "../install.d/50-xenlab-fstab"  # relative: DIB copies it


def test_element_scripts_are_executable_and_bash_clean():
    scripts = [p for p in image.ELEMENTS_DIR.rglob("*")
               if p.is_file() and p.parent.name.endswith(".d") and p.name[:2].isdigit()]  # fmt: skip
    assert scripts
    for script in scripts:
        if not script.parent.name == "environment.d":
            assert os.access(str(script), os.X_OK), f"{script} is not executable: DIB skips it"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


@pytest.mark.slow
def test_golden_image_boots_to_a_login_prompt(golden, tmp_path, vms):
    """Its own kernel and initrd find the root on virtio (root=/dev/vda, no seed) and it comes up
    with sshd running (host keys made at boot, none baked in) and a getty on the serial port."""
    disk = tmp_path / "root.img"
    sh("truncate", "-s", "3G", str(disk))
    # Ubuntu 18.04's 4.15 kernel refuses the ext4 features e2fsprogs 1.47 turns on by default.
    features = (
        ["-O", "^orphan_file,^metadata_csum_seed"] if golden.profile == "ubuntu-18.04" else []
    )
    sh(
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        image.ROOT_LABEL,
        *features,
        "-d",
        str(golden.tree),
        str(disk),
    )
    vm = vms(
        tmp_path / "console.log",
        [
            "-kernel", str(golden.tree / golden.kernel),
            "-initrd", str(golden.tree / golden.initrd),
            "-append", "root=/dev/vda ro console=ttyS0",
            "-drive", f"file={disk},if=virtio,format=raw",
            "-nic", "none",
        ],
        memory=1024,
    )  # fmt: skip
    vm.wait_for(r"Started .*OpenBSD Secure Shell server", timeout=900)
    vm.wait_for(r"login: ", timeout=300)
    console = vm.output()
    failed = re.findall(r"Failed to start .*", console)
    assert failed == [], failed
    assert "fsck not present" not in console and "while executing fsck" not in console
    assert "Invalid cloud-config" not in console, "the image's own cloud-init config is valid"


@pytest.mark.slow
def test_kernel_hook_keeps_grub_cfg_right(golden, tmp_path):
    """The image's postinst/postrm hook run against a /boot with kernels coming and going (in a
    private mount namespace: the host's /boot is not touched)."""
    boot = tmp_path / "boot"
    boot.mkdir()
    for version, initrd in (
        ("6.1.0-9-amd64", True),
        ("6.1.0-10-amd64", True),
        ("6.1.0-11-amd64", False),
    ):
        (boot / f"vmlinuz-{version}").write_text("kernel\n")
        if initrd:  # 6.1.0-11 is half installed: no initrd yet, so not booted
            (boot / f"initrd.img-{version}").write_text("initrd\n")
    hook = golden.tree / "etc/kernel/postinst.d/zz-xenlab-pygrub"
    postrm = golden.tree / "etc/kernel/postrm.d/zz-xenlab-pygrub"
    assert os.readlink(str(postrm)) == "../postinst.d/zz-xenlab-pygrub"

    def run_hook() -> list:
        script = f"mount --bind {boot} /boot && exec {hook} 6.1.0 /boot/vmlinuz-6.1.0"
        sh("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
        text = (boot / "grub/grub.cfg").read_text()
        return [line.split()[1] for line in text.splitlines() if line.strip().startswith("linux ")]

    assert run_hook() == ["/boot/vmlinuz-6.1.0-10-amd64", "/boot/vmlinuz-6.1.0-9-amd64"]
    (boot / "initrd.img-6.1.0-11-amd64").write_text("initrd\n")  # an upgrade finishes
    assert run_hook()[0] == "/boot/vmlinuz-6.1.0-11-amd64"
    for name in ("vmlinuz-6.1.0-11-amd64", "initrd.img-6.1.0-11-amd64"):  # and is removed
        (boot / name).unlink()
    assert run_hook()[0] == "/boot/vmlinuz-6.1.0-10-amd64"
    # The hook's own default command line (no /etc/default/xenlab-pygrub here) is the element's.
    assert (
        f"vmlinuz-6.1.0-10-amd64 {image.KERNEL_CMDLINE}\n" in (boot / "grub/grub.cfg").read_text()
    )


def test_dry_run_says_what_it_would_build_and_makes_nothing(tmp_path):
    cache = tmp_path / "cache"
    done = invoke("image.build", "--profile", "debian-12", "--dry-run",
                  env={"INVOKE_IMAGES_CACHE_DIR": str(cache)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "would build the debian-12 image" in done.stdout
    assert "xenlab-guest" in done.stdout and "nothing was built" in done.stdout
    assert not cache.exists()
