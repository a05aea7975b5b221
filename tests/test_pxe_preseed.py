"""The preseed one armed host gets: debconf accepts it, and it carries the lab's setup.

Checked with real consumers where this machine has them: debconf-set-selections -c for the
preseed, sh -n for the setup script it carries, tic/infocmp for the terminfo, and sfdisk on a
loop device for freeing the placeholder partition partman leaves.
"""

import base64
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from pipeline import apt_sources, ubuntu_keyring
from pipeline.config import InstallConfig
from pipeline.errors import BadInput
from pxe import preseed, profiles
from tests import chroots
from tests.conftest import CACHE, invoke, sh

MAC = "52:54:00:77:00:10"
CALLBACK = f"http://10.77.0.1:8080/callback/{MAC}"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINK8TURiX6CkORKLAwF54/TNnQDRPurs5bUJp0JZzFsU admin@lab"
HASH = "$6$rounds=4096$saltsalt$" + "x" * 86


def lab(**over) -> InstallConfig:
    values = dict(
        profile="ubuntu-18.04",
        user="admin",
        ssh_authorized_keys=[KEY],
        packages=["openssh-server", "neovim", "zsh", "lvm2", "tmux"],
        timezone="Europe/Amsterdam",
    )
    values.update(over)
    return InstallConfig(**values)


def values(text: str) -> dict:
    """'owner question type value' lines (continuations joined) -> {question: value}."""
    joined = re.sub(r"\\\n", " ", text)
    found = {}
    for line in joined.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        _, question, _, *value = line.split(None, 3)
        found[question] = value[0] if value else ""
    return found


def setup_of(text: str) -> str:
    b64 = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d", text).group(1)
    return base64.b64decode(b64).decode()


def debconf_check(tmp_path, text: str) -> None:
    path = tmp_path / "preseed.cfg"
    path.write_text(text)
    proc = subprocess.run(
        ["debconf-set-selections", "-c", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@pytest.mark.parametrize("profile", ["ubuntu-18.04", "debian-12"])
@pytest.mark.parametrize("password", [None, HASH])
def test_debconf_accepts_the_preseed(tmp_path, profile, password):
    debconf_check(
        tmp_path, preseed.render(lab(profile=profile, password_hash=password), MAC, CALLBACK)
    )


def test_debconf_check_is_real(tmp_path):
    """The check above can fail: a line debconf cannot parse is reported."""
    path = tmp_path / "bad.cfg"
    path.write_text("d-i netcfg/get_hostname\n")
    proc = subprocess.run(
        ["debconf-set-selections", "-c", str(path)], capture_output=True, text=True
    )
    assert proc.returncode != 0 or proc.stderr.strip()


def test_user_packages_locale_and_mirror():
    text = preseed.render(lab(), MAC, CALLBACK)
    v = values(text)
    assert v["passwd/username"] == "admin"
    assert v["passwd/root-login"] == "false"
    assert v["passwd/user-password-crypted"] == "!"  # locked: keys only
    include = v["pkgsel/include"].split()
    for pkg in ("openssh-server", "neovim", "zsh", "lvm2", "tmux", "sudo"):
        assert pkg in include
    assert len(include) == len(set(include))
    assert v["time/zone"] == "Europe/Amsterdam"
    assert v["debian-installer/locale"] == "en_US.UTF-8"
    assert v["mirror/suite"] == "bionic"
    scheme, host, path = profiles.host_and_path(apt_sources.UBUNTU_ARCHIVE)
    assert v[f"mirror/{scheme}/hostname"] == host
    assert v[f"mirror/{scheme}/directory"] == path
    assert v["apt-setup/universe"] == "true"  # neovim is in universe on bionic


def test_password_hash_is_carried_when_set():
    v = values(preseed.render(lab(password_hash=HASH), MAC, CALLBACK))
    assert v["passwd/user-password-crypted"] == HASH
    assert "sudoers" not in setup_of(preseed.render(lab(password_hash=HASH), MAC, CALLBACK))


def test_debian_mirror_comes_from_the_machines_apt_sources():
    try:
        main, _ = apt_sources.debian_mirrors()
    except BadInput:
        pytest.skip("this machine has no Debian apt source")
    v = values(preseed.render(lab(profile="debian-12"), MAC, CALLBACK))
    scheme, host, path = profiles.host_and_path(main)
    assert v[f"mirror/{scheme}/hostname"] == host
    assert v[f"mirror/{scheme}/directory"] == path
    assert v["mirror/suite"] == "bookworm"


def test_configured_mirror_wins():
    v = values(preseed.render(lab(mirror="http://mirror.example.net:3142/ubuntu/"), MAC, CALLBACK))
    assert v["mirror/http/hostname"] == "mirror.example.net:3142"
    assert v["mirror/http/directory"] == "/ubuntu"


def test_partition_recipe_is_present_for_the_disk():
    v = values(preseed.render(lab(disk="/dev/vda"), MAC, CALLBACK))
    assert v["partman-auto/disk"] == "/dev/vda"
    assert v["partman-auto/method"] == "regular"
    assert v["partman-auto/choose_recipe"] == "xenlab"
    recipe = " ".join(v["partman-auto/expert_recipe"].split())
    assert recipe.startswith("xenlab :")
    assert "mountpoint{ / }" in recipe and "method{ swap }" in recipe
    assert recipe.rstrip().endswith("$primary{ } method{ keep } .")
    assert v["grub-installer/bootdev"] == "/dev/vda"


def test_late_command_sets_up_then_calls_back():
    text = preseed.render(lab(), MAC, CALLBACK)
    late = values(text)["preseed/late_command"]
    steps = [s.strip() for s in late.split("&&")]
    assert steps[0].startswith("in-target sh -c 'echo ")
    assert steps[1] == "in-target sh /tmp/xenlab-setup.sh"
    # the callback is last, and only runs when the setup worked
    assert steps[-1] == f"wget -q -O /dev/null {CALLBACK}"


def test_setup_script_hardens_sshd_and_sets_up_the_user():
    script = setup_of(preseed.render(lab(), MAC, CALLBACK))
    assert sh("sh", "-n", "-c", script).returncode == 0
    assert "'PermitRootLogin no' 'PasswordAuthentication no'" in script
    assert "/usr/sbin/sshd -t" in script  # the new config is tested before it is used
    assert re.search(r"^user=admin$", script, re.M)
    assert f"\n{KEY}\nXENLAB_KEYS\n" in script
    assert "shell=$(command -v zsh)" in script and 'usermod -s "$shell"' in script
    assert "NOPASSWD" in script  # locked password: sudo must not ask for it
    assert "infocmp xterm-kitty" in script


def test_sshd_block_rewrites_a_real_config(tmp_path):
    """The sshd part of the script, run on a copy of a Debian-style sshd_config."""
    script = setup_of(preseed.render(lab(), MAC, CALLBACK))
    block = script.split("# sshd: keys only")[1].split("# The admin's keys.")[0]
    block = block.split("\n", 2)[2]  # from the first command on
    cfg = tmp_path / "sshd_config"
    cfg.write_text(
        "Include /etc/ssh/sshd_config.d/*.conf\n#PermitRootLogin prohibit-password\n"
        "PasswordAuthentication yes\n  PermitRootLogin yes\nUsePAM yes\n"
    )
    block = block.replace("/etc/ssh/sshd_config", str(cfg)).replace("/usr/sbin/sshd", "true")
    block = block.replace("mkdir -p /run/sshd", ":")
    proc = subprocess.run(["sh", "-eu", "-c", block], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = cfg.read_text().splitlines()
    assert lines[1:3] == ["PermitRootLogin no", "PasswordAuthentication no"]
    assert [ln for ln in lines if "PermitRootLogin" in ln] == ["PermitRootLogin no"]
    assert [ln for ln in lines if "PasswordAuthentication" in ln] == ["PasswordAuthentication no"]
    assert "UsePAM yes" in lines and lines[3].startswith("Include")


@pytest.mark.skipif(shutil.which("tic") is None, reason="tic (ncurses-bin) is not installed")
def test_carried_terminfo_compiles_to_xterm_kitty(tmp_path):
    script = setup_of(preseed.render(lab(), MAC, CALLBACK))
    source = script.split("<<'XENLAB_TERMINFO'\n")[1].split("XENLAB_TERMINFO\n")[0]
    (tmp_path / "kitty.ti").write_text(source)
    sh("tic", "-x", "-o", str(tmp_path / "db"), str(tmp_path / "kitty.ti"))
    out = sh("infocmp", "-x", "-A", str(tmp_path / "db"), "xterm-kitty").stdout
    assert "xterm-kitty|" in out and "colors#0x100" in out


def test_unknown_terminfo_is_bad_input():
    with pytest.raises(BadInput) as err:
        preseed.render(lab(terminfo=["foot"]), MAC, CALLBACK)
    assert err.value.problems[0].field == "install.terminfo"


def test_callback_url_names_the_server_port_and_mac():
    assert preseed.callback_for(MAC, "10.77.0.1", 8080) == CALLBACK
    assert preseed.callback_for(MAC, "pxe-server", 80) == f"http://pxe-server:80/callback/{MAC}"


def test_preflight_gives_the_partition_plan_the_preseed_carries():
    plan = preseed.preflight(lab(disk="/dev/vda"))
    assert plan.disk == "/dev/vda"
    assert plan.keep_free == lab().keep_free


@pytest.mark.parametrize(
    "over, field",
    [
        (dict(terminfo=["foot"]), "install.terminfo"),
        (dict(disk_size="20G", root_size="20G"), "install.disk_size"),
    ],
)
def test_preflight_refuses_what_the_preseed_cannot_be_made_from(over, field):
    with pytest.raises(BadInput) as err:
        preseed.preflight(lab(**over))
    assert err.value.problems[0].field == field


@pytest.mark.parametrize(
    "mac, callback",
    [("52:54:00:77:00", CALLBACK), (MAC, "http://10.77.0.1/cb'; reboot"), (MAC, "ftp://x/y")],
)
def test_bad_mac_or_callback_is_refused(mac, callback):
    with pytest.raises(BadInput):
        preseed.render(lab(), mac, callback)


def test_freeing_the_placeholder_on_a_real_disk(loop_disk):
    """The script's last block on a loop device partitioned as partman leaves it."""
    install = lab(disk_size="6G", root_size="1G", swap_size="1G", keep_free="2G")
    script = setup_of(preseed.render(install, MAC, CALLBACK))
    block = "set -eu\n" + script.split("# Leave the rest of")[1].split("\n", 2)[2]
    device = loop_disk("6G")
    layout = "label: dos\n,1GiB,83,*\n,1GiB,82\n,,83\n"
    subprocess.run(["sfdisk", "-q", device], input=layout, text=True, check=True)
    sh("partx", "-u", device, check=False)
    before = sh("sfdisk", "--dump", device).stdout
    assert f"{device}p3" in before
    proc = subprocess.run(
        ["sh", "-c", block.replace(install.disk, device)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    after = sh("sfdisk", "--dump", device).stdout
    assert f"{device}p1" in after and f"{device}p2" in after and f"{device}p3" not in after
    assert "left unpartitioned" in proc.stdout


def test_freeing_refuses_a_placeholder_smaller_than_keep_free(loop_disk):
    install = lab(disk_size="6G", root_size="1G", swap_size="1G", keep_free="2G")
    script = setup_of(preseed.render(install, MAC, CALLBACK))
    block = "set -eu\n" + script.split("# Leave the rest of")[1].split("\n", 2)[2]
    device = loop_disk("6G")
    # a disk laid out by someone else: the last partition is small
    subprocess.run(
        ["sfdisk", "-q", device], input="label: dos\n,4GiB,83\n,1GiB,83\n", text=True, check=True
    )
    proc = subprocess.run(
        ["sh", "-c", block.replace(install.disk, device)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "keep_free" in proc.stderr
    assert f"{device}p2" in sh("sfdisk", "--dump", device).stdout


def test_pxe_preseed_prints_what_the_host_would_get(tmp_path):
    r = invoke(
        "pxe.preseed",
        "--mac",
        "52-54-00-77-00-10",
        "--address",
        "192.0.2.1",
        "--root",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# xenlab: the preseed for 52:54:00:77:00:10")
    assert "http://192.0.2.1:8080/callback/52:54:00:77:00:10" in r.stdout
    assert "not armed" in r.stderr


def test_pxe_preseed_bad_mac_is_exit_2():
    r = invoke("pxe.preseed", "--mac", "52:54:00:zz:00:10")
    assert r.returncode == 2 and "--mac" in r.stderr


# --- the setup script on the host's own release ---------------------------------------------------
# What the late_command runs inside the new host, run here inside a bionic chroot (debootstrapped
# once, plus the packages the preseed installs) on a loop disk partitioned the way partman leaves
# it: bionic's sshd checks the config, bionic's tic compiles the terminfo, sfdisk frees the space.
BIONIC_ARCHIVE = os.environ.get("XENLAB_UBUNTU_ARCHIVE", apt_sources.UBUNTU_ARCHIVE).rstrip("/")
CHROOTS = CACHE / "chroots"
TARGET_PACKAGES = ["openssh-server", "zsh", "sudo"]


def _bionic_target_layer() -> Path:
    keyring = ubuntu_keyring.archive_keyring(CHROOTS.parent / "keyrings", BIONIC_ARCHIVE)
    base = chroots.cached_root(
        "bionic",
        BIONIC_ARCHIVE,
        CHROOTS,
        variant="minbase",
        components=["main", "universe"],
        keyring=keyring,
    )
    key = chroots.cache_key("pxe-target-1", base.parent.name, TARGET_PACKAGES)

    def build(tmp: Path) -> None:
        root = tmp / "root"
        sh("cp", "-a", "--reflink=auto", str(base), str(root))
        (root / "etc/apt/sources.list").write_text(
            "".join(
                f"deb {BIONIC_ARCHIVE} {suite} main universe\n"
                for suite in ("bionic", "bionic-updates")
            )
        )
        policy = root / "usr/sbin/policy-rc.d"  # no service starts in the chroot
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", str(resolv))
        install = "apt-get update -q && apt-get install -y -q --no-install-recommends " + " ".join(
            TARGET_PACKAGES
        )
        chroots.run_in_chroot(
            root, ["sh", "-c", install], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=1800
        )

    return chroots.cached_dir(CHROOTS / f"bionic-pxe-target-{key}", build) / "root"


@pytest.fixture(scope="module")
def bionic_target():
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("needs root and debootstrap")
    try:
        with urllib.request.urlopen(f"{BIONIC_ARCHIVE}/dists/bionic/Release", timeout=10):
            pass
    except OSError:
        pytest.skip(f"the Ubuntu archive is unreachable: {BIONIC_ARCHIVE}")
    return _bionic_target_layer()


@pytest.mark.slow
def test_setup_script_on_bionic(bionic_target, loop_disk, tmp_path):
    device = loop_disk("4G")
    subprocess.run(
        ["sfdisk", "-q", device],
        input="label: dos\n,1GiB,83,*\n,1GiB,82\n,,83\n",
        text=True,
        check=True,
    )
    install = lab(disk=device, disk_size="4G", root_size="1G", swap_size="1G", keep_free="1G")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/setup.sh").write_text(setup_of(preseed.render(install, MAC, CALLBACK)))
    for d in ("upper", "work", "merged"):
        (tmp_path / d).mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return chroots.run_in_chroot(
            tmp_path / "merged",
            list(argv),
            overlay=(bionic_target, tmp_path / "upper", tmp_path / "work"),
            binds=[(tmp_path / "out", "/mnt/out")],
            check=False,
            timeout=600,
        )

    # what user-setup did before late_command: the user, with a locked password
    script = "useradd -m -s /bin/bash admin && passwd -l admin >/dev/null && sh /mnt/out/setup.sh"
    proc = run("sh", "-c", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "left unpartitioned" in proc.stdout
    upper = tmp_path / "upper"

    sshd = run("sh", "-c", "mkdir -p /run/sshd && /usr/sbin/sshd -T")
    assert sshd.returncode == 0, sshd.stderr
    effective = dict(line.split(" ", 1) for line in sshd.stdout.splitlines() if " " in line)
    assert effective["permitrootlogin"] == "no"
    assert effective["passwordauthentication"] == "no"

    keys = upper / "home/admin/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n"
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert run("stat", "-c", "%U", "/home/admin/.ssh/authorized_keys").stdout.strip() == "admin"
    shell = run("getent", "passwd", "admin").stdout.strip().split(":")[-1]
    assert shell.endswith("/zsh")
    assert run("sudo", "-l", "-U", "admin").stdout.count("NOPASSWD: ALL") == 1
    assert run("infocmp", "xterm-kitty").returncode == 0  # compiled by bionic's tic

    after = sh("sfdisk", "--dump", device).stdout
    assert f"{device}p2" in after and f"{device}p3" not in after


# --- zero touch: the late setup also installs xenlab and its unit --------------------------------
TOKEN = "t0ken-Of-This-Arming_0123456789abcdef"


def provision_for(site_yaml: str = "host:\n  subnet: 192.0.2.0/28\n", **over) -> preseed.Provision:
    values = dict(
        base_url="http://10.77.0.1:8080",
        mac=MAC,
        token=TOKEN,
        site_yaml=site_yaml,
        xenlab="xenlab==0.1.0",
        pip_wheel="pip-25.0.1-py3-none-any.whl",
        python="python3.8",
        python_packages=("python3.8", "python3.8-venv", "python3-distutils"),
    )
    values.update(over)
    return preseed.Provision(**values)


def test_zero_touch_preseed_is_accepted_and_its_script_parses(tmp_path):
    callback = preseed.callback_for(MAC, "10.77.0.1", 8080, TOKEN)
    text = preseed.render(lab(), MAC, callback, provision_for())
    debconf_check(tmp_path, text)
    assert values(text)["preseed/late_command"].endswith(f"/callback/{MAC}/{TOKEN}")
    script = setup_of(text)
    (tmp_path / "setup.sh").write_text(script)
    assert subprocess.run(["sh", "-n", str(tmp_path / "setup.sh")]).returncode == 0
    assert f"http://10.77.0.1:8080/progress/{MAC}/{TOKEN}" in script
    assert "--no-index --find-links" in script and "xenlab==0.1.0" in script
    assert "systemctl enable xenlab-provision.service" in script


@pytest.mark.parametrize(
    "over",
    [
        {"token": "short"},
        {"token": TOKEN + "'; reboot; '"},
        {"base_url": "http://10.77.0.1:8080/x y"},
        {"xenlab": "xenlab==0.1.0 --index-url=http://evil"},
        {"python_packages": ("python3.8; rm -rf /",)},
    ],
)
def test_provision_values_are_checked_before_rendering(over):
    with pytest.raises(BadInput):
        preseed.setup_script(lab(), provision_for(**over))


def test_the_unit_runs_host_provision_until_it_finished_once():
    unit = preseed.unit_file()
    assert "Type=oneshot" in unit and "After=network-online.target" in unit
    assert f"ConditionPathExists=!{preseed.DONE_FILE}" in unit
    assert "ExecStart=/opt/xenlab/.venv/bin/invoke host.provision --report-file" in unit
    assert "WantedBy=multi-user.target" in unit


PYTHON_PACKAGES = ["python3.8", "python3.8-venv", "python3-distutils"]


@pytest.mark.slow
def test_zero_touch_setup_on_bionic(bionic_target, loop_disk, tmp_path, netns):
    """The late setup with zero touch, in the bionic target (in a client namespace with no route
    to any package index; Python 3.8 comes from the release's archive first, as the installer's
    apt would give it): xenlab installed from pxe.serve's wheelhouse, the site file without the
    install's secrets, xenlab-provision.service enabled and accepted by systemd-analyze verify."""
    import time

    from pipeline.runner import Runner
    from pxe import wheelhouse
    from tests.test_pxe_boot import serving, site_env

    tree = tmp_path / "tree"
    wheelhouse.build(Runner(), tree, "ubuntu-18.04", print)
    # the segment: srv (10.77.0.1) -- veth -- cl (10.77.0.50)
    srv, cl = netns("zts"), netns("ztc")
    sh("ip", "-n", srv, "link", "add", "pxe0", "type", "veth", "peer", "name", "eth0", "netns", cl)
    sh("ip", "-n", srv, "addr", "add", "10.77.0.1/24", "dev", "pxe0")
    sh("ip", "-n", srv, "link", "set", "pxe0", "up")
    sh("ip", "-n", cl, "addr", "add", "10.77.0.50/24", "dev", "eth0")
    sh("ip", "-n", cl, "link", "set", "eth0", "up")

    device = loop_disk("4G")
    subprocess.run(
        ["sfdisk", "-q", device], input="label: dos\n,1GiB,83,*\n,1GiB,82\n,,83\n", text=True,
        check=True,
    )  # fmt: skip
    install = lab(
        disk=device, disk_size="4G", root_size="1G", swap_size="1G", keep_free="1G",
        password_hash=HASH,
    )  # fmt: skip
    site_yaml = "host:\n  subnet: 192.0.2.0/28\n  storage:\n    device: /dev/sdb\n"
    pips = sorted((tree / "wheelhouse").glob("pip-*.whl"))
    provision = provision_for(
        site_yaml, xenlab=wheelhouse.xenlab_requirement(tree), pip_wheel=pips[-1].name
    )
    text = preseed.render(
        install, MAC, preseed.callback_for(MAC, "10.77.0.1", 8080, TOKEN), provision
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out/setup.sh").write_text(setup_of(text))
    for d in ("upper", "work", "merged"):
        (tmp_path / d).mkdir()
    upper = tmp_path / "upper"

    def argv(*command: str):
        return chroots.chroot_argv(
            tmp_path / "merged", list(command),
            overlay=(bionic_target, upper, tmp_path / "work"),
            binds=[(tmp_path / "out", "/mnt/out")],
        )  # fmt: skip

    # the installer's apt, before late_command: the release's Python 3.8
    apt = (
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
        + " ".join(PYTHON_PACKAGES)
    )
    proc = subprocess.run(argv("sh", "-c", apt), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    env = site_env(tmp_path, INVOKE_PXE_TFTP_ROOT=str(tree))
    script = "useradd -m -s /bin/bash admin && passwd -l admin >/dev/null && sh /mnt/out/setup.sh"
    with serving(srv, ["--interface", "pxe0"], env, tmp_path / "serve.log"):
        started = time.monotonic()
        proc = subprocess.run(
            ["ip", "netns", "exec", cl, *argv("sh", "-c", script)],
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "xenlab-provision.service enabled" in proc.stdout

    app = upper / "opt/xenlab"
    assert (app / ".venv/bin/invoke").is_file() and (app / "tasks.py").is_file()
    listed = subprocess.run(
        argv("sh", "-c", "cd /opt/xenlab && .venv/bin/invoke --list && .venv/bin/pip list"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert listed.returncode == 0 and "host.provision" in listed.stdout, listed.stderr
    assert "xenlab" in listed.stdout
    site = upper / "etc/xenlab/site.yaml"
    assert site.read_text() == site_yaml
    assert oct(site.stat().st_mode & 0o777) == "0o600"
    assert HASH not in site.read_text()
    assert os.readlink(str(app / "invoke.yaml")) == "/etc/xenlab/site.yaml"
    report = upper / "etc/xenlab/report-url"
    assert report.read_text() == provision.report_url + "\n"
    assert oct(report.stat().st_mode & 0o777) == "0o600"
    unit = upper / "etc/systemd/system/xenlab-provision.service"
    assert unit.read_text() == preseed.unit_file()
    wants = upper / "etc/systemd/system/multi-user.target.wants/xenlab-provision.service"
    assert os.readlink(str(wants)) == "/etc/systemd/system/xenlab-provision.service"
    # systemd-analyze verify on this machine, with the unit's paths (/opt/xenlab) from the chroot
    verify = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs /opt && mkdir /opt/xenlab && mount --bind {app} /opt/xenlab"
         f" && systemd-analyze verify {unit}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    print(f"\nzero-touch late setup in the bionic chroot: {seconds:.0f} s")
