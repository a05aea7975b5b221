"""The built guest boots: its own kernel and initrd, its disk, swap and seed under qemu (tcg), its
NIC on a tap in a test namespace whose bridge has the bridge address. From the namespace: it
answers ping on its configured IP, its sshd (with the host keys made on the host) accepts the
configured key, refuses a password, and refuses the key from outside the allowed networks.

Under Xen the same disk boots through pygrub as xvda2; qemu's direct kernel boot stands in for
pygrub here (no Xen on these machines), with the root found by the image's label.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import mac
from pipeline.config import ImagesConfig, Site
from pipeline.guest import build as guest
from pipeline.guest import image, volumes
from pipeline.runner import Runner
from tests import qemu
from tests.conftest import sh
from tests.test_image import unmet_prerequisite

BRIDGE = "192.0.2.1/28"
GUEST_IP = "192.0.2.2"
OUTSIDE = "198.51.100.1/24"  # a second address on the bridge, not in ssh_allow_from


@pytest.fixture
def golden(request):
    """The profile's golden image, from the machine's cache (built once per machine if missing).

    Skipped only when the machine lacks what the build needs (a tool, a mirror), with the reason;
    a build that fails fails the test.
    """
    reason = unmet_prerequisite(request.param)
    if reason:
        pytest.skip(reason)
    return image.ensure(request.param, ImagesConfig(), say=print)


def in_ns(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


def ssh_argv(key: Path, known_hosts: str, *extra: str) -> list:
    return [
        "ssh", "-i", str(key), "-F", "/dev/null",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        # The host keys must be the ones guest.build made and put in the seed.
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        *extra,
    ]  # fmt: skip


def wait_until(what: str, check, timeout: float, vm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if vm.proc.poll() is not None:
            break
        time.sleep(3)
    raise AssertionError(f"{what} within {timeout} s; console tail:\n{vm.output()[-3000:]}")


@pytest.fixture
def storage(request, tmp_path, loop_disk):
    """host.storage for the guest: sparse files, or LVs in a VG on a loop device."""
    if request.param == "dir":
        return {"kind": "dir", "dir": str(tmp_path / "xen")}
    device = loop_disk("16G")
    vg = f"xlboot{os.getpid()}"
    sh("pvcreate", "-q", "-y", device)
    sh("vgcreate", "-q", vg, device)
    return {"kind": "lvm", "volume_group": vg}


@pytest.mark.slow
@pytest.mark.parametrize(
    "golden,storage",
    [
        ("debian-12", "dir"),
        ("debian-12", "lvm"),
        ("ubuntu-18.04", "dir"),
    ],
    indirect=True,
)
def test_built_guest_boots_answers_ping_and_key_only_ssh(
    tmp_path, golden, storage, lv_mapper, netns, vms
):
    key = tmp_path / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@xenlab", "-f", str(key))
    site = Site.model_validate(
        {
            "host": {"subnet": "192.0.2.0/28", "storage": storage},
            "guests": {
                "guest-01": {
                    "memory": "1024M",
                    "vcpus": 2,
                    "disk": "10G",
                    "swap": "1G",
                    "profile": golden.profile,
                    "ip": GUEST_IP,
                    "ssh_authorized_keys": [key.with_suffix(".pub").read_text().strip()],
                    "ssh_allow_from": ["192.0.2.0/28"],
                    "dns": ["192.0.2.1"],
                }
            },
        }
    )  # fmt: skip
    root = tmp_path / "root"
    root.mkdir()
    built = guest.build(
        site,
        "guest-01",
        Runner(root=root),
        start=False,
        activate=lv_mapper,
        image=lambda p: golden,
        say=print,
    )
    disk, swap = built.volumes
    tree = Path(golden.tree)
    ids = volumes.fstab_ids(tree)
    kind, value = ids["/"]

    ns = netns("guest")
    qemu.add_bridge(ns, "br0", BRIDGE, OUTSIDE)
    qemu.add_tap(ns, "br0", "tap-guest0")
    console = tmp_path / "console.log"
    vm = vms(
        console,
        [
            "-kernel", str(tree / golden.kernel),
            "-initrd", str(tree / golden.initrd),
            "-append", f"root={kind}={value} ro console=ttyS0",
            "-drive", f"file={disk},if=virtio,format=raw",
            "-drive", f"file={swap},if=virtio,format=raw",
            "-drive", f"file={built.seed},media=cdrom,readonly=on",
            "-netdev", "tap,id=n0,ifname=tap-guest0,script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac.derive('guest-01')}",
        ],
        netns=ns,
        memory=1024,
    )  # fmt: skip

    # Boot under TCG takes a minute or two, cloud-init more: generous waits.
    vm.wait_for(r"Cloud-init v\. \S+ finished", timeout=900)
    wait_until(
        f"no ping answer from {GUEST_IP}",
        lambda: in_ns(ns, "ping", "-c1", "-W2", GUEST_IP).returncode == 0,
        300,
        vm,
    )

    ssh = ssh_argv(key, built.known_hosts)
    probe = "hostname; sudo -n grep ^root: /etc/shadow"
    result = {}

    def logged_in() -> bool:
        result["proc"] = in_ns(ns, *ssh, f"admin@{GUEST_IP}", probe)
        return result["proc"].returncode == 0

    wait_until("ssh with the configured key never got in", logged_in, 300, vm)
    lines = result["proc"].stdout.splitlines()
    assert lines[0] == "guest-01"
    # root's password is the one in the host's 0600 file (its hash matches), never sent in clear.
    shadow_hash = lines[-1].split(":")[1]
    secret = Path(built.password_file).read_text().strip()
    salt = shadow_hash.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=secret + "\n", capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert again == shadow_hash
    # The swap volume is the one the image's fstab names: `swapon -a` finds it by its label.
    # (At boot, the fstab's short device timeout can run out under software emulation.)
    assert "swap" in ids, "the image's fstab names no swap"
    swaps = in_ns(
        ns, *ssh, f"admin@{GUEST_IP}",
        "sudo -n swapon -a; cat /proc/swaps",
    )  # fmt: skip
    assert swaps.returncode == 0, swaps.stderr
    swap_lines = [ln.split() for ln in swaps.stdout.splitlines() if ln.startswith("/dev/")]
    assert swap_lines and int(swap_lines[0][2]) > 900 * 1024, swaps.stdout

    # The seed's name server reached the resolver (Debian: ifupdown through resolvconf; Ubuntu:
    # networkd's list behind systemd-resolved's stub).
    resolvers = in_ns(
        ns, *ssh, f"admin@{GUEST_IP}",
        "cat /etc/resolv.conf /run/systemd/resolve/resolv.conf 2>/dev/null; true",
    )  # fmt: skip
    assert "nameserver 192.0.2.1" in resolvers.stdout, resolvers.stdout

    # A password is refused: the server offers publickey only.
    password_try = in_ns(
        ns, *ssh_argv(key, built.known_hosts, "-o", "PubkeyAuthentication=no",
                      "-o", "PreferredAuthentications=password,keyboard-interactive"),
        f"admin@{GUEST_IP}", "true",
    )  # fmt: skip
    assert password_try.returncode == 255
    assert "Permission denied (publickey)" in password_try.stderr

    # The right key from an address outside ssh_allow_from is refused too: by AllowUsers
    # (Debian 12: "Permission denied") or by libwrap before any authentication (Ubuntu 18.04).
    outside = in_ns(
        ns,
        *ssh_argv(key, built.known_hosts, "-b", OUTSIDE.split("/")[0]),
        f"admin@{GUEST_IP}",
        "echo got-in",
    )
    assert outside.returncode == 255 and "got-in" not in outside.stdout, outside.stderr
    reason = "Permission denied" if golden.profile == "debian-12" else "closed"
    assert reason in outside.stderr or "reset" in outside.stderr, outside.stderr

    # root cannot log in over ssh, whatever the key.
    as_root = in_ns(ns, *ssh, f"root@{GUEST_IP}", "true")
    assert as_root.returncode == 255
