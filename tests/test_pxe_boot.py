"""`invoke pxe.serve` for real, in test namespaces.

Fast: a client namespace on a veth speaks DHCP, TFTP and HTTP to the server as a PXE ROM and
the installer would (full DHCP and proxy mode), without a VM.
Slow: the recipe's topology (../shared/recipes/pxe-in-netns.md): a bridge and taps, the
debian-12 boot tree from `invoke pxe.build`, qemu VMs booting from the network (full DHCP) to
the installer fetching its preseed: BIOS (SeaBIOS, iPXE's ROM taken as a plain PXE ROM) through
lpxelinux.0 with kernel and initrd over HTTP, and through pxelinux.0 all over TFTP with
pxe.http_boot off; UEFI (OVMF's own PXE client) through shim and GRUB with kernel and initrd
over HTTP; OVMF's HTTP Boot as far as Debian's GRUB goes; and an unarmed one (proxyDHCP beside
dnsmasq as the site's DHCP server) over iPXE/HTTP to the local-boot script and no preseed.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from pxe import dhcp, menus, tftp
from tests import qemu
from tests.conftest import CACHE, INVOKE, REPO, invoke, sh

SERVER = "10.77.0.1"
ARMED = "52:54:00:77:00:10"
UNARMED = "52:54:00:77:00:11"
THIRD = "52:54:00:77:00:12"
# pxe.build's downloads, kept between runs on this machine (beside, not in, pxe.build's own cache).
DOWNLOADS = CACHE / "pxe-test-downloads"


def site_env(tmp_path: Path, **extra: str) -> Dict[str, str]:
    env = {
        "INVOKE_INSTALL_PROFILE": "debian-12",
        "INVOKE_INSTALL_CACHE_DIR": str(DOWNLOADS),
        "INVOKE_PXE_TFTP_ROOT": str(tmp_path / "tree"),
        "INVOKE_PXE_STATE_DIR": str(tmp_path / "state"),
    }
    env.update(extra)
    return env


class Serve:
    """`invoke pxe.serve` inside a namespace, its output in a file; stopped by its PID."""

    def __init__(self, ns: str, args: List[str], env: Dict[str, str], log: Path):
        self.log_path = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *INVOKE, "pxe.serve", *args],
            cwd=str(REPO),
            env=dict(os.environ, **env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self, mac: Optional[str] = None) -> List[str]:
        return [line for line in self.text().splitlines() if mac is None or f" {mac} " in line]

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        while time.monotonic() < deadline:
            found = rx.search(self.text())
            if found:
                return found
            assert self.proc.poll() is None, (
                f"pxe.serve exited {self.proc.returncode}:\n{self.text()}"
            )
            time.sleep(0.5)
        raise AssertionError(f"pxe.serve never logged {pattern!r}; its log:\n{self.text()}")

    def terminate(self, signum: int = signal.SIGTERM) -> int:
        """SIGTERM (or `signum`) by PID; its exit code."""
        os.kill(self.proc.pid, signum)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._out.close()


@contextmanager
def serving(ns: str, args: List[str], env: Dict[str, str], log: Path) -> Iterator[Serve]:
    server = Serve(ns, args, env, log)
    try:
        server.wait_for(r"^serving on ", 60)
        yield server
    finally:
        server.kill()


@contextmanager
def inside(ns: str):
    """This thread in namespace `ns`: sockets made meanwhile belong to it."""
    from pyroute2 import netns as pr_netns

    pr_netns.pushns(ns)
    try:
        yield
    finally:
        pr_netns.popns()


# --- a PXE client without a VM ------------------------------------------------------------------
def pxe_packet(
    mac: str, kind: int, arch: int = 0, pxe: bool = True, vendor: str = "PXEClient", **fields
) -> dhcp.Packet:
    """A PXE ROM's packet; vendor="HTTPClient" makes it UEFI HTTP Boot's (arch 16 for x86-64),
    as OVMF sends it: "HTTPClient:Arch:00016:UNDI:003001"."""
    options = {dhcp.MESSAGE_TYPE: bytes([kind])}
    if pxe:
        options[dhcp.VENDOR_CLASS] = f"{vendor}:Arch:{arch:05d}:UNDI:003001".encode()
        options[dhcp.CLIENT_ARCH] = dhcp.arch_option(arch)
    return dhcp.Packet(xid=0x5A5A0001, chaddr=dhcp.mac_bytes(mac), options=options, **fields)


def dhcp_socket(ns: str, iface: str) -> socket.socket:
    with inside(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.bind(("0.0.0.0", 68))
    sock.settimeout(5)
    return sock


def exchange(sock: socket.socket, packet: dhcp.Packet, to=("255.255.255.255", 67)):
    """Send, and the first reply for this client's transaction; None on silence."""
    sock.sendto(dhcp.encode(packet), to)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            reply = dhcp.decode(sock.recv(4096))
        except socket.timeout:
            return None
        if reply.xid == packet.xid and reply.chaddr == packet.chaddr:
            return reply
    return None


def http_get(ns: str, path: str, source: Optional[str] = None):
    with inside(ns):
        conn = http.client.HTTPConnection(
            SERVER, 8080, timeout=20, source_address=(source, 0) if source else None
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def tftp_get(ns: str, name: str, bind: str = "", **options):
    with inside(ns):
        return tftp.download(
            (SERVER, 69), name, {k: str(v) for k, v in options.items()}, timeout=3, bind=bind
        )[0]


@pytest.fixture
def segment(netns):
    """srv (10.77.0.1/24 on pxe0) -- veth -- cl (eth0, no address yet)."""
    srv, cl = netns("pxes"), netns("pxec")
    sh("ip", "-n", srv, "link", "add", "pxe0", "type", "veth", "peer", "name", "eth0", "netns", cl)
    sh("ip", "-n", srv, "addr", "add", f"{SERVER}/24", "dev", "pxe0")
    sh("ip", "-n", srv, "link", "set", "pxe0", "up")
    sh("ip", "-n", cl, "link", "set", "eth0", "up")
    # a second, unrelated interface in the server's namespace: nothing may listen on it
    sh("ip", "-n", srv, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    sh("ip", "-n", srv, "addr", "add", "10.88.0.1/24", "dev", "other0")
    sh("ip", "-n", srv, "link", "set", "other0", "up")
    return srv, cl


@pytest.fixture
def stand_in_tree(tmp_path):
    """A boot tree with the files' names (not their contents): enough for everything but a VM."""
    tree = tmp_path / "tree"
    for rel, size in [
        ("bios/pxelinux.0", 42_430),
        ("bios/lpxelinux.0", 75_072),
        ("bios/ldlinux.c32", 119_524),
        ("bootx64.efi", 950_000),
        ("grubx64.efi", 1_500_000),
        ("installers/debian-12/linux", 3_000_000),
        ("installers/debian-12/initrd.gz", 5_000_001),
    ]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(os.urandom(size))
    return tree


def listening(ns: str) -> List[str]:
    out = sh("ip", "netns", "exec", ns, "ss", "-Hulnt").stdout
    return [line.split()[4] for line in out.splitlines() if line.strip()]


def test_full_dhcp_serve_to_a_client_namespace(segment, stand_in_tree, tmp_path):
    srv, cl = segment
    env = site_env(tmp_path)
    assert invoke("pxe.arm", "--mac", ARMED, env=env).returncode == 0
    args = ["--interface", "pxe0", "--mode", "dhcp", "--range", "10.77.0.50-10.77.0.60"]
    with serving(srv, args, env, tmp_path / "serve.log") as server:
        # Every socket on pxe0 only: the other interface's segment hears nothing.
        sockets = listening(srv)
        assert sorted(sockets) == sorted(
            ["0.0.0.0%pxe0:67", f"{SERVER}%pxe0:4011", f"{SERVER}%pxe0:69", f"{SERVER}%pxe0:8080"]
        ), sockets
        sock = dhcp_socket(cl, "eth0")
        try:
            sock.sendto(b"\x01\x01\x06garbage", ("255.255.255.255", 67))  # dropped, logged
            offer = exchange(sock, pxe_packet(ARMED, dhcp.DISCOVER))
            assert offer.message_type == dhcp.OFFER and offer.yiaddr == "10.77.0.50"
            assert offer.file == b"bios/lpxelinux.0"
            assert offer.options[dhcp.DNS] == dhcp.ip_option(SERVER)
            request = pxe_packet(ARMED, dhcp.REQUEST)
            request.options[dhcp.REQUESTED_IP] = dhcp.ip_option(offer.yiaddr)
            request.options[dhcp.SERVER_ID] = dhcp.ip_option(SERVER)
            ack = exchange(sock, request)
            assert ack.message_type == dhcp.ACK and ack.yiaddr == "10.77.0.50"
            # the unarmed host, booting as UEFI, gets the next address and the EFI loader
            offer2 = exchange(sock, pxe_packet(UNARMED, dhcp.DISCOVER, arch=7))
            assert offer2.yiaddr == "10.77.0.51" and offer2.file == menus.EFI_LOADER.encode()
            # UEFI HTTP Boot: shim's URL, vendor class HTTPClient echoed, no PXE options
            offer3 = exchange(sock, pxe_packet(THIRD, dhcp.DISCOVER, arch=16, vendor="HTTPClient"))
            assert offer3.yiaddr == "10.77.0.52"
            assert offer3.file == f"http://{SERVER}:8080/bootx64.efi".encode()
            assert offer3.options[dhcp.BOOTFILE] == offer3.file
            assert offer3.options[dhcp.VENDOR_CLASS] == b"HTTPClient"
            assert dhcp.VENDOR_OPTIONS not in offer3.options
            assert dhcp.TFTP_SERVER not in offer3.options
        finally:
            sock.close()
        sh("ip", "-n", cl, "addr", "add", "10.77.0.50/24", "dev", "eth0")
        sh("ip", "-n", cl, "addr", "add", "10.77.0.59/24", "dev", "eth0")

        loader = tftp_get(cl, "bios/pxelinux.0", bind="10.77.0.50", blksize=1468, tsize=0)
        assert loader == (stand_in_tree / "bios" / "pxelinux.0").read_bytes()
        with inside(cl):  # blocks are kept to the link's MTU (1500 - 32)
            _, oack = tftp.download((SERVER, 69), "bios/pxelinux.0", {"blksize": "65464"})
        assert oack == {"blksize": "1468"}
        menu = tftp_get(cl, "bios/pxelinux.cfg/01-" + ARMED.replace(":", "-"), bind="10.77.0.50")
        assert f"/preseed/{ARMED}.cfg".encode() in menu
        other_menu = tftp_get(cl, "bios/pxelinux.cfg/01-" + UNARMED.replace(":", "-"))
        assert b"preseed" not in other_menu and b"LOCALBOOT" in other_menu.upper()
        with pytest.raises(tftp.Refused) as err:
            tftp_get(cl, "../state/armed.json")
        assert err.value.code == tftp.ACCESS_VIOLATION

        for loader in ("bootx64.efi", "grubx64.efi"):  # UEFI HTTP Boot: shim fetches GRUB
            status, data = http_get(cl, f"/{loader}")
            assert status == 200 and data == (stand_in_tree / loader).read_bytes()
        status, kernel = http_get(cl, "/installers/debian-12/linux", source="10.77.0.50")
        assert status == 200
        assert kernel == (stand_in_tree / "installers/debian-12/linux").read_bytes()
        assert http_get(cl, "/installers/../state/armed.json")[0] in (403, 404)
        # The preseed: to the armed MAC's lease only.
        status, preseed = http_get(cl, f"/preseed/{ARMED}.cfg", source="10.77.0.50")
        assert status == 200 and f"http://{SERVER}:8080/callback/{ARMED}".encode() in preseed
        assert http_get(cl, f"/preseed/{ARMED}.cfg", source="10.77.0.59")[0] == 403
        assert http_get(cl, f"/preseed/{UNARMED}.cfg", source="10.77.0.50")[0] == 404
        # The installer's callback (the URL its preseed holds, with the arming's token when
        # there is one) disarms it, once.
        callback = re.search(rb"http://10\.77\.0\.1:8080(/callback/\S+)", preseed)
        assert callback, preseed
        assert http_get(cl, callback.group(1).decode(), source="10.77.0.50") == (
            200,
            b"disarmed\n",
        )
        assert http_get(cl, f"/preseed/{ARMED}.cfg", source="10.77.0.50")[0] in (404, 410)
        server.wait_for(rf"{ARMED} callback", 10)
        assert server.terminate() == 0

    log = server.lines(ARMED)
    for step in [
        "DHCP offer 10.77.0.50 bios/lpxelinux.0",
        "DHCP ack 10.77.0.50 bios/lpxelinux.0",
        "TFTP bios/pxelinux.0 (",
        "TFTP bios/pxelinux.cfg/01-52-54-00-77-00-10 (",
        "HTTP installers/debian-12/linux (",
        f"HTTP preseed/{ARMED}.cfg sent to 10.77.0.50 (preseed)",
        "preseed refused to 10.77.0.59",
        "callback from 10.77.0.50: installed, disarmed",
    ]:
        assert any(step in line for line in log), f"{step!r} not in:\n" + "\n".join(log)
    assert any("preseed refused" in line and "not armed" in line for line in server.lines(UNARMED))
    assert any("bad packet" in line for line in server.lines())
    assert server.lines()[-1].endswith("stopped")
    leases = json.loads((tmp_path / "state" / "leases.json").read_text())["leases"]
    assert leases[ARMED]["ip"] == "10.77.0.50"
    assert json.loads((tmp_path / "state" / "armed.json").read_text())["armed"] == {}


def test_proxy_mode_answers_pxe_clients_beside_another_dhcp_server(
    segment, stand_in_tree, tmp_path
):
    srv, cl = segment
    env = site_env(tmp_path)
    for mac in (ARMED, THIRD):
        assert invoke("pxe.arm", "--mac", mac, env=env).returncode == 0
    with serving(srv, ["--interface", "pxe0"], env, tmp_path / "serve.log") as server:
        sock = dhcp_socket(cl, "eth0")
        try:
            # An operating system's DHCP client is the site server's business: silence.
            assert exchange(sock, pxe_packet(UNARMED, dhcp.DISCOVER, pxe=False)) is None
            # UEFI HTTP Boot beside the site's server: a proxy offer with shim's URL
            http_offer = exchange(
                sock, pxe_packet(UNARMED, dhcp.DISCOVER, arch=16, vendor="HTTPClient")
            )
            assert http_offer.yiaddr == "0.0.0.0"
            assert http_offer.file == f"http://{SERVER}:8080/bootx64.efi".encode()
            assert http_offer.options[dhcp.VENDOR_CLASS] == b"HTTPClient"
            offer = exchange(sock, pxe_packet(ARMED, dhcp.DISCOVER))
        finally:
            sock.close()
        assert offer.message_type == dhcp.OFFER and offer.yiaddr == "0.0.0.0"
        assert offer.options[dhcp.VENDOR_CLASS] == b"PXEClient"
        assert offer.file == b"bios/lpxelinux.0"
        # The site's server gave it 10.77.0.23; it asks the proxy on 4011 for its boot file.
        sh("ip", "-n", cl, "addr", "add", "10.77.0.23/24", "dev", "eth0")
        with inside(cl):
            pxe_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            pxe_sock.bind(("10.77.0.23", 0))
            pxe_sock.settimeout(5)
            ack = exchange(
                pxe_sock, pxe_packet(ARMED, dhcp.REQUEST, ciaddr="10.77.0.23"), (SERVER, 4011)
            )
        finally:
            pxe_sock.close()
        assert ack.message_type == dhcp.ACK and ack.file == b"bios/lpxelinux.0"
        # The address learned from that request is the one the preseed goes to.
        status, _ = http_get(cl, f"/preseed/{ARMED}.cfg", source="10.77.0.23")
        assert status == 200
        # A third host is learned from its TFTP request for its own pxelinux menu.
        sh("ip", "-n", cl, "addr", "add", "10.77.0.24/24", "dev", "eth0")
        assert http_get(cl, f"/preseed/{THIRD}.cfg", source="10.77.0.24")[0] == 403
        menu = tftp_get(cl, "bios/pxelinux.cfg/01-" + THIRD.replace(":", "-"), bind="10.77.0.24")
        assert f"/preseed/{THIRD}.cfg".encode() in menu
        assert http_get(cl, f"/preseed/{THIRD}.cfg", source="10.77.0.24")[0] == 200
        assert http_get(cl, f"/preseed/{THIRD}.cfg", source="10.77.0.23")[0] == 403
        assert server.terminate(signal.SIGINT) == 0  # Ctrl-C
    log = "\n".join(server.lines(ARMED))
    assert "DHCP proxy offer bios/lpxelinux.0" in log
    assert "DHCP proxy ack 10.77.0.23 bios/lpxelinux.0" in log
    assert f"preseed/{ARMED}.cfg sent to 10.77.0.23 (preseed)" in log
    assert server.lines(UNARMED) == [
        line for line in server.lines(UNARMED) if "DHCP proxy offer http://" in line
    ]


@pytest.mark.parametrize(
    "args, extra_env, field",
    [
        ([], {}, "pxe.interface"),
        (["--interface", "nope0"], {}, "pxe.interface"),
        (["--interface", "pxe0", "--mode", "dhcp"], {}, "pxe.dhcp_range"),
        (["--interface", "pxe0", "--mode", "dhcp", "--range", "10.9.0.5-10.9.0.9"], {}, "pxe.dhcp_range"),
        (["--interface", "pxe0", "--mode", "dhcp", "--range", "10.77.0.9-10.77.0.5"], {}, "pxe.dhcp_range"),
        (["--interface", "pxe0", "--mode", "dhcp", "--range", "10.77.0.1-10.77.0.5"], {}, "pxe.dhcp_range"),
        (["--interface", "pxe0", "--mode", "relay"], {}, "pxe.mode"),
        (["--interface", "pxe0"], {"INVOKE_INSTALL_DISK_SIZE": "100G"}, "install.disk_size"),
    ],
)  # fmt: skip
def test_bad_input_is_exit_2_before_serving(
    segment, stand_in_tree, tmp_path, args, extra_env, field
):
    srv, _ = segment
    env = dict(os.environ, **site_env(tmp_path, **extra_env))
    proc = subprocess.run(
        ["ip", "netns", "exec", srv, *INVOKE, "pxe.serve", *args],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert field in proc.stderr
    assert not listening(srv)


def test_dry_run_says_what_it_would_serve_and_opens_nothing(segment, stand_in_tree, tmp_path):
    srv, _ = segment
    proc = subprocess.run(
        ["ip", "netns", "exec", srv, *INVOKE, "pxe.serve", "--interface", "pxe0",
         "--mode", "dhcp", "--range", "10.77.0.50-10.77.0.99", "--dry-run"],
        cwd=str(REPO), env=dict(os.environ, **site_env(tmp_path)), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "would serve on pxe0 (10.77.0.1): dhcp DHCP, range 10.77.0.50-10.77.0.99" in proc.stdout
    assert not listening(srv)
    assert not (tmp_path / "state").exists()


def test_missing_boot_tree_is_exit_1(segment, tmp_path):
    srv, _ = segment
    proc = subprocess.run(
        ["ip", "netns", "exec", srv, *INVOKE, "pxe.serve", "--interface", "pxe0"],
        cwd=str(REPO), env=dict(os.environ, **site_env(tmp_path)), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "pxe.build" in proc.stderr


# --- real boots ----------------------------------------------------------------------------------
@pytest.fixture
def lab(netns):
    """The recipe's topology: br-pxe 10.77.0.1/24 with two taps, in a namespace; and, on the
    same segment through a veth, a "site" namespace (10.77.0.254) for the site's DHCP server."""
    ns, site = netns("pxe"), netns("site")
    qemu.add_bridge(ns, "br-pxe", f"{SERVER}/24")
    qemu.add_tap(ns, "br-pxe", "tap-pxe0")
    qemu.add_tap(ns, "br-pxe", "tap-pxe1")
    sh(
        "ip",
        "-n",
        ns,
        "link",
        "add",
        "site0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        site,
    )
    sh("ip", "-n", ns, "link", "set", "site0", "master", "br-pxe", "up")
    sh("ip", "-n", site, "addr", "add", "10.77.0.254/24", "dev", "eth0")
    sh("ip", "-n", site, "link", "set", "eth0", "up")
    return ns, site


@contextmanager
def site_dhcp(site: str, log: Path) -> Iterator[Path]:
    """dnsmasq as the site's own DHCP server (addresses only, nothing about PXE); killed by PID."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", site, "dnsmasq", "--keep-in-foreground", "--port=0",
             "--interface=eth0", "--bind-interfaces", "--conf-file=/dev/null", "--pid-file",
             "--user=root", "--dhcp-range=10.77.0.100,10.77.0.150,1h",
             "--dhcp-option=6,10.77.0.254", "--log-dhcp", "--log-facility=-"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield log
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")  # Debian package ovmf
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Power-on to preseed under TCG on two shared cores takes minutes; these leave room for a loaded
# machine (measured in bench/pxe_boot.py).
BOOT_TIMEOUT = 1200
TIMINGS = Path(os.environ.get("XENLAB_PXE_TIMINGS", "/tmp/xenlab-pxe-boot-timings.txt"))


def boot_vm(vms, ns: str, tap: str, mac: str, tmp_path: Path, firmware: str = "bios"):
    """A VM on `tap` booting from the network: "bios" (SeaBIOS and qemu's iPXE ROM), "uefi"
    (OVMF's own PXE client: no option ROM) or "uefi-http" (OVMF's HTTP Boot: its PXE turned off)."""
    disk = tmp_path / f"{tap}.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", str(disk), "2G")
    nic = f"virtio-net-pci,netdev=n0,mac={mac}"
    args = []
    if firmware == "bios":
        args += ["-boot", "n"]
    else:
        if not OVMF_CODE.is_file():
            pytest.skip("OVMF is not installed (Debian package ovmf)")
        variables = tmp_path / f"{tap}.vars.fd"
        shutil.copyfile(str(OVMF_VARS), str(variables))
        args += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={variables}",
        ]  # fmt: skip
        nic += ",romfile=,bootindex=1"  # OVMF's own network stack, not iPXE's EFI driver
        if firmware == "uefi-http":
            for knob in ("IPv4PXESupport", "IPv6PXESupport"):
                args += ["-fw_cfg", f"name=opt/org.tianocore/{knob},string=n"]
    args += [
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", nic,
        "-drive", f"file={disk},if=virtio",
    ]  # fmt: skip
    return vms(tmp_path / f"{tap}.console", args, netns=ns, memory=1536)


PRESEED_SENT = rf"{ARMED} HTTP preseed/{ARMED}\.cfg sent to 10\.77\.0\.\d+ \(preseed\)"


def install_to_preseed(lab, vms, tmp_path, firmware: str, **config: str) -> str:
    """pxe.build, pxe.arm, pxe.serve (full DHCP) with INVOKE_PXE_* `config`, and the armed VM
    booted with `firmware` until the installer has fetched its preseed; the MAC's log lines."""
    ns, _ = lab
    env = site_env(tmp_path)
    built = invoke("pxe.build", "--quiet", env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    armed = invoke("pxe.arm", "--mac", ARMED, env=env)
    assert armed.returncode == 0, armed.stderr
    args = ["--interface", "br-pxe", "--mode", "dhcp", "--range", "10.77.0.50-10.77.0.99"]
    serve_env = dict(env, **{f"INVOKE_PXE_{k.upper()}": v for k, v in config.items()})
    with serving(ns, args, serve_env, tmp_path / "serve.log") as server:
        started = time.monotonic()
        vm = boot_vm(vms, ns, "tap-pxe0", ARMED, tmp_path, firmware)
        try:
            server.wait_for(PRESEED_SENT, BOOT_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nVM console:\n{vm.output()[-3000:]}") from None
        seconds = time.monotonic() - started
        vm.stop()
        assert server.terminate() == 0
    with open(TIMINGS, "a") as out:
        out.write(f"{time.strftime('%H:%M:%S')} {firmware} {config}: preseed {seconds:.0f} s\n")
    log = "\n".join(server.lines(ARMED))
    lease = re.search(r"DHCP ack (10\.77\.0\.\d+)$", log, re.M)  # the installer's own DHCP
    assert lease, log
    assert f"preseed/{ARMED}.cfg sent to {lease.group(1)} (preseed)" in log
    return log


def assert_steps(log: str, steps: List[str]) -> None:
    for step in steps:
        assert re.search(step, log, re.M), f"{step!r} not in:\n{log}"


@pytest.mark.slow
def test_bios_lpxelinux_loads_the_installer_over_http(lab, vms, tmp_path):
    """SeaBIOS and qemu's iPXE ROM, told not to take the iPXE script (pxe.ipxe_http off), runs
    lpxelinux.0 like any PXE ROM would: only it and its modules over TFTP, the rest over HTTP."""
    log = install_to_preseed(lab, vms, tmp_path, "bios", ipxe_http="0")
    assert_steps(log, [
        r"DHCP ack 10\.77\.0\.\d+ bios/lpxelinux\.0$",
        r"TFTP bios/lpxelinux\.0 \(",
        r"TFTP bios/ldlinux\.c32 \(",
        r"TFTP bios/pxelinux\.cfg/01-52-54-00-77-00-10 \(",
        r"HTTP installers/debian-12/linux \(",
        r"HTTP installers/debian-12/initrd\.gz \(",
    ])  # fmt: skip
    assert "TFTP installers/" not in log


@pytest.mark.slow
def test_bios_all_tftp_with_http_boot_off(lab, vms, tmp_path):
    """pxe.http_boot false: today's all-TFTP path, pxelinux.0 loading kernel and initrd itself."""
    log = install_to_preseed(lab, vms, tmp_path, "bios", ipxe_http="0", http_boot="0")
    assert_steps(log, [
        r"DHCP ack 10\.77\.0\.\d+ bios/pxelinux\.0$",
        r"TFTP bios/pxelinux\.0 \(",
        r"TFTP bios/ldlinux\.c32 \(",
        r"TFTP bios/pxelinux\.cfg/01-52-54-00-77-00-10 \(",
        r"TFTP installers/debian-12/linux \(",
        r"TFTP installers/debian-12/initrd\.gz \(",
    ])  # fmt: skip
    assert "HTTP installers/" not in log


@pytest.mark.slow
def test_uefi_shim_and_grub_load_the_installer_over_http(lab, vms, tmp_path):
    """OVMF's own PXE client: shim and GRUB over TFTP, GRUB's menus, then (http,SERVER:PORT)."""
    log = install_to_preseed(lab, vms, tmp_path, "uefi")
    assert_steps(log, [
        r"DHCP ack 10\.77\.0\.\d+ bootx64\.efi$",
        r"TFTP /?bootx64\.efi \(",
        r"TFTP /?grubx64\.efi \(",
        r"TFTP /?grub/grub\.cfg \(",
        rf"TFTP /?grub/mac/{ARMED}\.cfg \(",
        r"HTTP installers/debian-12/linux \(",
        r"HTTP installers/debian-12/initrd\.gz \(",
    ])  # fmt: skip
    assert "TFTP installers/" not in log and "TFTP /installers/" not in log


@pytest.mark.slow
def test_uefi_http_boot_needs_no_tftp(lab, vms, tmp_path):
    """OVMF's own HTTP Boot (its PXE turned off): vendor class HTTPClient gets shim's URL with
    HTTPClient echoed, OVMF fetches shim over HTTP and shim fetches GRUB beside it, no TFTP.

    That is as far as Debian 12's signed GRUB network image goes: it takes its network settings
    only from a PXE boot (the PXE base code's DHCP packets) and knows nothing of an HTTP Boot
    device path, so it finds no prefix and stops at its prompt without a request. The test holds
    the firmware side and says where GRUB stopped; PXE-booted UEFI clients get the installer
    over HTTP through GRUB (test_uefi_shim_and_grub_load_the_installer_over_http)."""
    ns, _ = lab
    env = site_env(tmp_path)
    built = invoke("pxe.build", "--quiet", env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert invoke("pxe.arm", "--mac", ARMED, env=env).returncode == 0
    args = ["--interface", "br-pxe", "--mode", "dhcp", "--range", "10.77.0.50-10.77.0.99"]
    with serving(ns, args, env, tmp_path / "serve.log") as server:
        started = time.monotonic()
        vm = boot_vm(vms, ns, "tap-pxe0", ARMED, tmp_path, "uefi-http")
        server.wait_for(rf"{ARMED} HTTP grubx64\.efi \(", BOOT_TIMEOUT)
        seconds = time.monotonic() - started
        console = vm.wait_for(r"grub>|GNU GRUB", 300)
        assert "UEFI HTTPv4" in vm.output()
        time.sleep(10)  # what GRUB would ask for next, if anything
        vm.stop()
        assert server.terminate() == 0
    with open(TIMINGS, "a") as out:
        out.write(f"{time.strftime('%H:%M:%S')} uefi-http: GRUB over HTTP {seconds:.0f} s\n")
    log = "\n".join(server.lines(ARMED))
    assert_steps(log, [
        rf"DHCP offer 10\.77\.0\.\d+ http://{SERVER}:8080/bootx64\.efi$",
        rf"DHCP ack 10\.77\.0\.\d+ http://{SERVER}:8080/bootx64\.efi$",
        r"HTTP bootx64\.efi \(\d+ bytes\)",
        r"HTTP grubx64\.efi \(\d+ bytes\)",
    ])  # fmt: skip
    assert "TFTP" not in log, log
    assert console.group(0)


@pytest.mark.slow
def test_unarmed_ipxe_in_proxy_mode_boots_the_local_disk(lab, vms, tmp_path):
    """Proxy mode beside the site's DHCP server (dnsmasq): the site gives the address, pxe.serve
    the iPXE script over HTTP, which boots the local disk; no installer, no preseed."""
    ns, site = lab
    env = site_env(tmp_path)
    built = invoke("pxe.build", "--quiet", env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    with site_dhcp(site, tmp_path / "site-dhcp.log") as site_log, serving(
        ns, ["--interface", "br-pxe"], env, tmp_path / "serve-proxy.log"
    ) as server:
        vm = boot_vm(vms, ns, "tap-pxe1", UNARMED, tmp_path)
        server.wait_for(rf"{UNARMED} HTTP ipxe/{UNARMED}\.ipxe$", 600)
        status, script = http_get(ns, f"/ipxe/{UNARMED}.ipxe")
        assert status == 200 and b"preseed" not in script and b"installers/" not in script
        time.sleep(20)  # time enough to have asked for a kernel or a preseed, if it were going to
        vm.stop()
        assert server.terminate() == 0
        assert re.search(rf"DHCPACK\(eth0\) 10\.77\.0\.1\d\d {UNARMED}", site_log.read_text())
    unarmed = "\n".join(server.lines(UNARMED))
    assert f"DHCP proxy offer http://{SERVER}:8080/ipxe/{UNARMED}.ipxe" in unarmed
    assert "preseed" not in unarmed and "installers/" not in unarmed
