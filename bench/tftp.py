"""TFTP throughput of pxe.serve's server against dnsmasq's, in the same namespaces, in one run.

    .venv/bin/python bench/tftp.py [--size-mb 64] [--clients 20] [--window 16] [--rounds 1]

Two namespaces joined by a veth (MTU 1500, so blksize 1468 fills a frame): the server side runs
pxe/tftp.py's TftpServer, then `dnsmasq --port=0 --enable-tftp`, on the same file; the client
side runs the same client (pxe/tftp.py's download, one process per client, all started at the
same moment) against each, and curl (blksize only) once. Cases: blksize 1468 alone and with --window (RFC 7440), one client
and --clients at once. dnsmasq does not implement windowsize: it ignores the option, and the
client then goes block by block. Prints seconds and MB/s per case, and xenlab/dnsmasq ratios.
Run as root; the namespaces are deleted at the end.
"""

import argparse
import json
import os
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
sys.path.insert(0, str(REPO))

SERVER, CLIENT = "10.79.0.1", "10.79.0.2"
PY = sys.executable


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def client_main(args) -> None:
    """One download, in the client namespace; prints {"seconds", "bytes", "oack"}."""
    from pxe import tftp

    options = {"blksize": str(args.blksize)}
    if args.window > 1:
        options["windowsize"] = str(args.window)
    got = [0]

    def sink(data: bytes) -> None:
        got[0] += len(data)

    while time.time() < args.start_at:
        time.sleep(0.001)
    t0 = time.monotonic()
    _, oack = tftp.download((SERVER, 69), "big.bin", options, timeout=2, retries=10, sink=sink)
    print(json.dumps({"seconds": time.monotonic() - t0, "bytes": got[0], "oack": oack}))


def run_clients(ns: str, n: int, blksize: int, window: int) -> dict:
    start_at = time.time() + 1.0 + 0.05 * n  # every process up before the first request
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                PY,
                __file__,
                "--client",
                "--blksize",
                str(blksize),
                "--window",
                str(window),
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(n)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"client failed: {err.strip()[-500:]}")
        results.append(json.loads(out))
    wall = max(r["seconds"] for r in results)
    total = sum(r["bytes"] for r in results)
    return {
        "wall": wall,
        "mb_s": total / wall / 1e6,
        "per_client": statistics.median(r["seconds"] for r in results),
        "window_acked": results[0]["oack"].get("windowsize", "-"),
    }


def run_curl(ns: str, blksize: int) -> float:
    """One download with curl (another client, to see that ours is not what limits), seconds."""
    t0 = time.monotonic()
    subprocess.run(
        ["ip", "netns", "exec", ns, "curl", "-sS", "-o", "/dev/null", "--tftp-blksize",
         str(blksize), f"tftp://{SERVER}/big.bin"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.monotonic() - t0


def start_xenlab(ns: str, root: Path) -> subprocess.Popen:
    code = (
        "import signal,sys,threading; from pathlib import Path; from pxe.tftp import TftpServer\n"
        f"s = TftpServer(Path({str(root)!r}), {SERVER!r}, 69, 'veth-s')\n"
        "signal.signal(signal.SIGTERM, lambda *a: s.shutdown())\n"
        "print('ready', flush=True); s.serve_forever(); s.close()\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, PY, "-c", code], cwd=str(REPO),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    return proc


def start_dnsmasq(ns: str, root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--port=0",
         "--enable-tftp", f"--tftp-root={root}", "--interface=veth-s", "--bind-interfaces",
         "--conf-file=/dev/null", "--pid-file", "--tftp-max=100", "--user=root",
         "--log-facility=-"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1)
    if proc.poll() is not None:
        raise SystemExit(f"dnsmasq did not start: {proc.stderr.read()[-500:]}")
    proc.stderr.close()  # it logs every transfer: nobody reads it, so it must not block
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--blksize", type=int, default=1468)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args)
        return
    if not shutil.which("dnsmasq"):
        raise SystemExit("dnsmasq is needed (Debian package dnsmasq-base)")
    tag = uuid.uuid4().hex[:6]
    srv, cl = f"xl-bsrv-{tag}", f"xl-bcl-{tag}"
    root = Path(tempfile.mkdtemp(prefix="xenlab-bench-tftp-"))
    rows = []
    curl = {}
    try:
        for ns in (srv, cl):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", srv, "link", "add", "veth-s", "type", "veth", "peer", "name", "veth-c",
           "netns", cl)  # fmt: skip
        sh("ip", "-n", srv, "addr", "add", f"{SERVER}/24", "dev", "veth-s")
        sh("ip", "-n", cl, "addr", "add", f"{CLIENT}/24", "dev", "veth-c")
        sh("ip", "-n", srv, "link", "set", "veth-s", "up")
        sh("ip", "-n", cl, "link", "set", "veth-c", "up")
        with open(root / "big.bin", "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1 << 20))
        cases = [(1, 1), (1, args.window), (args.clients, 1), (args.clients, args.window)]
        for name, start in (("xenlab", start_xenlab), ("dnsmasq", start_dnsmasq)):
            server = start(srv, root)
            try:
                for clients, window in cases:
                    runs = [
                        run_clients(cl, clients, args.blksize, window) for _ in range(args.rounds)
                    ]
                    best = min(runs, key=lambda r: r["wall"])
                    rows.append((name, clients, window, best))
                    print(
                        f"{name:8} clients={clients:<3} blksize={args.blksize} "
                        f"windowsize={window:<3} (acked: {best['window_acked']:>2}) "
                        f"wall {best['wall']:7.2f} s  {best['mb_s']:7.1f} MB/s total  "
                        f"median per client {best['per_client']:6.2f} s",
                        flush=True,
                    )
                if shutil.which("curl"):
                    seconds = min(run_curl(cl, args.blksize) for _ in range(args.rounds))
                    curl[name] = seconds
                    print(
                        f"{name:8} curl, 1 client, blksize={args.blksize}: wall {seconds:7.2f} s  "
                        f"{args.size_mb * 1048576 / seconds / 1e6:7.1f} MB/s",
                        flush=True,
                    )
            finally:
                stop(server)
    finally:
        for ns in (srv, cl):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    by = {(n, c, w): r for n, c, w, r in rows}
    print("\nratios (dnsmasq wall / xenlab wall; above 1: xenlab faster)")
    for clients, window in cases:
        x, d = by[("xenlab", clients, window)], by[("dnsmasq", clients, window)]
        print(f"  clients={clients:<3} windowsize={window:<3} {d['wall'] / x['wall']:5.2f}")
    if len(curl) == 2:
        print(f"  curl, 1 client            {curl['dnsmasq'] / curl['xenlab']:5.2f}")


if __name__ == "__main__":
    main()
