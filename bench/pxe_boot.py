"""Power-on to preseed-fetched time of a qemu VM booting from `invoke pxe.serve`: over TFTP
(pxelinux loads the installer) and over HTTP (iPXE loads it), one VM each, one after the other.

    .venv/bin/python bench/pxe_boot.py [--rounds 1]

The recipe's topology (../shared/recipes/pxe-in-netns.md) in a fresh namespace: a bridge with
a tap, full DHCP; the debian-12 boot tree from `invoke pxe.build` (downloads cached in
$XENLAB_CACHE/pxe-test-downloads, shared with the tests). qemu runs under TCG, so the figures
depend on the machine's load; run it on a quiet machine. Prints the seconds from qemu's start
to each step as the server logs it. Run as root; everything it makes is removed at the end.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INVOKE = [sys.executable, "-m", "invoke"]
MAC = "52:54:00:79:00:10"
CACHE = Path(os.environ.get("XENLAB_CACHE", "/var/cache/xenlab")) / "pxe-test-downloads"
STEPS = [
    ("dhcp", r"DHCP ack 10\.77\.0\.\d+ \S"),
    ("loader", r"(TFTP bios/pxelinux\.0|HTTP ipxe/)"),
    ("kernel", r"(TFTP|HTTP) installers/debian-12/linux \("),
    ("initrd", r"(TFTP|HTTP) installers/debian-12/initrd\.gz \("),
    ("installer dhcp", r"DHCP ack 10\.77\.0\.\d+$"),
    ("preseed", r"\(preseed\)$"),
]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def boot_once(ns: str, env: dict, work: Path, ipxe_http: bool, timeout: float) -> dict:
    log_path = work / f"serve-{'http' if ipxe_http else 'tftp'}.log"
    serve_env = dict(os.environ, **env, INVOKE_PXE_IPXE_HTTP="1" if ipxe_http else "0")
    with open(log_path, "w") as out:
        serve = subprocess.Popen(
            ["ip", "netns", "exec", ns, *INVOKE, "pxe.serve", "--interface", "br-pxe",
             "--mode", "dhcp", "--range", "10.77.0.50-10.77.0.99"],
            cwd=str(REPO), env=serve_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    vm = None
    seen = {}
    try:
        deadline = time.monotonic() + 60
        while "serving on" not in log_path.read_text():
            if time.monotonic() > deadline or serve.poll() is not None:
                raise SystemExit(f"pxe.serve did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        disk = work / "disk.qcow2"
        sh("qemu-img", "create", "-f", "qcow2", str(disk), "2G")
        t0 = time.monotonic()
        vm = subprocess.Popen(
            ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-accel", "tcg,thread=multi",
             "-cpu", "qemu64", "-m", "1536", "-smp", "2", "-display", "none", "-monitor", "none",
             "-no-reboot", "-serial", f"file:{work / 'console.log'}", "-boot", "n",
             "-netdev", "tap,id=n0,ifname=tap-pxe0,script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
             "-drive", f"file={disk},if=virtio"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while "preseed" not in seen:
            now = time.monotonic() - t0
            if now > timeout:
                break
            lines = [line for line in log_path.read_text().splitlines() if f" {MAC} " in line]
            for name, pattern in STEPS:
                if name not in seen and any(re.search(pattern, line) for line in lines):
                    seen[name] = now
            time.sleep(0.2)
    finally:
        for proc, sig in ((vm, signal.SIGKILL), (serve, signal.SIGTERM)):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, sig)
                proc.wait(timeout=30)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    ns = f"xl-bpxe-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="xenlab-bench-pxe-"))
    env = {
        "INVOKE_INSTALL_PROFILE": "debian-12",
        "INVOKE_INSTALL_CACHE_DIR": str(CACHE),
        "INVOKE_PXE_TFTP_ROOT": str(work / "tree"),
        "INVOKE_PXE_STATE_DIR": str(work / "state"),
    }
    results = {"tftp": [], "http": []}
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "br-pxe", "type", "bridge", "forward_delay", "0",
           "stp_state", "0")  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", "10.77.0.1/24", "dev", "br-pxe")
        sh("ip", "-n", ns, "link", "set", "br-pxe", "up")
        sh("ip", "-n", ns, "tuntap", "add", "dev", "tap-pxe0", "mode", "tap")
        sh("ip", "-n", ns, "link", "set", "tap-pxe0", "master", "br-pxe", "up")
        full_env = dict(os.environ, **env)
        for task in (["pxe.build", "--quiet"], ["pxe.arm", "--mac", MAC]):
            subprocess.run(INVOKE + task, cwd=str(REPO), env=full_env, check=True,
                           capture_output=True)  # fmt: skip
        for _ in range(args.rounds):
            for kind, ipxe_http in (("tftp", False), ("http", True)):
                seen = boot_once(ns, env, work, ipxe_http, args.timeout)
                results[kind].append(seen)
                steps = "  ".join(f"{name} {seen[name]:6.1f}" for name, _ in STEPS if name in seen)
                print(f"{kind:4} (s after power-on): {steps}", flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    best = {
        k: min((r.get("preseed", float("inf")) for r in v), default=None)
        for k, v in results.items()
    }
    print(f"\npower-on to preseed fetched: TFTP/pxelinux {best['tftp']:.1f} s, "
          f"HTTP/iPXE {best['http']:.1f} s, ratio {best['tftp'] / best['http']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
