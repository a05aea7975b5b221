"""Power-on to preseed-fetched time of a qemu VM booting from `invoke pxe.serve`, for each path
a machine can take, one VM at a time, the paths taking turns round by round:

- bios-http: SeaBIOS, iPXE's ROM taken as a plain PXE ROM (pxe.ipxe_http off): lpxelinux.0 over
  TFTP, kernel and initrd over HTTP (pxe.http_boot, the default);
- uefi-http: OVMF's own PXE client: shim and GRUB over TFTP, kernel and initrd over HTTP;
- bios-tftp: pxe.http_boot off: pxelinux.0 loads kernel and initrd over TFTP (the old path);
- ipxe: iPXE's script over HTTP (pxe.ipxe_http, for reference; not in the default set).

    .venv/bin/python bench/pxe_boot.py [--rounds 1] [--paths bios-http,uefi-http,bios-tftp]

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
import statistics
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
    ("loader", r"(TFTP (bios/l?pxelinux\.0|/?bootx64\.efi) |HTTP ipxe/)"),
    ("kernel", r"(TFTP|HTTP) installers/debian-12/linux \("),
    ("initrd", r"(TFTP|HTTP) installers/debian-12/initrd\.gz \("),
    ("installer dhcp", r"DHCP ack 10\.77\.0\.\d+$"),
    ("preseed", r"\(preseed\)$"),
]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


OVMF_CODE, OVMF_VARS = "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"
PATHS = {  # name: (pxe.* settings, firmware)
    "bios-http": ({"ipxe_http": "0", "http_boot": "1"}, "bios"),
    "uefi-http": ({"http_boot": "1"}, "uefi"),
    "bios-tftp": ({"ipxe_http": "0", "http_boot": "0"}, "bios"),
    "ipxe": ({"ipxe_http": "1"}, "bios"),
}


def firmware_args(firmware: str, work: Path) -> list:
    """qemu arguments for the firmware, and the NIC's extra options."""
    if firmware == "bios":
        return ["-boot", "n"], ""
    variables = work / "vars.fd"
    shutil.copyfile(OVMF_VARS, str(variables))
    return [
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={variables}",
    ], ",romfile=,bootindex=1"  # fmt: skip


def boot_once(ns: str, env: dict, work: Path, path: str, timeout: float) -> dict:
    settings, firmware = PATHS[path]
    log_path = work / f"serve-{path}.log"
    serve_env = dict(
        os.environ, **env, **{f"INVOKE_PXE_{k.upper()}": v for k, v in settings.items()}
    )
    # A preseed is served once per arming: arm the MAC again for every boot.
    subprocess.run(INVOKE + ["pxe.arm", "--mac", MAC], cwd=str(REPO), env=dict(os.environ, **env),
                   check=True, capture_output=True)  # fmt: skip
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
        fw, nic = firmware_args(firmware, work)
        t0 = time.monotonic()
        vm = subprocess.Popen(
            ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-accel", "tcg,thread=multi",
             "-cpu", "qemu64", "-m", "1536", "-smp", "2", "-display", "none", "-monitor", "none",
             "-no-reboot", "-serial", f"file:{work / 'console.log'}", *fw,
             "-netdev", "tap,id=n0,ifname=tap-pxe0,script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=n0,mac={MAC}{nic}",
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
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--paths", default="bios-http,uefi-http,bios-tftp", help=", ".join(PATHS))
    args = ap.parse_args()
    ns = f"xl-bpxe-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="xenlab-bench-pxe-"))
    env = {
        "INVOKE_INSTALL_PROFILE": "debian-12",
        "INVOKE_INSTALL_CACHE_DIR": str(CACHE),
        "INVOKE_PXE_TFTP_ROOT": str(work / "tree"),
        "INVOKE_PXE_STATE_DIR": str(work / "state"),
    }
    paths = [p for p in args.paths.split(",") if p]
    for p in paths:
        if p not in PATHS:
            raise SystemExit(f"--paths: {p!r} is not one of {', '.join(PATHS)}")
    results = {p: [] for p in paths}
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
        subprocess.run(INVOKE + ["pxe.build", "--quiet"], cwd=str(REPO), env=full_env,
                       check=True, capture_output=True)  # fmt: skip
        for turn in range(args.rounds):
            for path in paths if turn % 2 == 0 else paths[::-1]:
                seen = boot_once(ns, env, work, path, args.timeout)
                results[path].append(seen)
                steps = "  ".join(f"{name} {seen[name]:6.1f}" for name, _ in STEPS if name in seen)
                print(f"round {turn + 1} {path:9} (s after power-on): {steps}", flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\npower-on to preseed fetched, median of {args.rounds} round(s):")
    for path, runs in results.items():
        times = [r.get("preseed", float("inf")) for r in runs]
        kernel = [r["initrd"] - r["kernel"] for r in runs if "initrd" in r and "kernel" in r]
        extra = (
            f" (kernel logged to initrd logged: {statistics.median(kernel):.1f} s)"
            if kernel
            else ""
        )
        print(f"  {path:9} {statistics.median(times):6.1f} s{extra}")


if __name__ == "__main__":
    main()
