"""TFTP throughput of pxe.serve's server against dnsmasq's, in the same namespaces, in one run.

    .venv/bin/python bench/tftp.py [--size-mb 64] [--clients 20,50] [--window 16] [--rounds 3]

Two namespaces joined by a veth (MTU 1500, so blksize 1468 fills a frame): the server side runs
pxe/tftp.py's TftpServer, then `dnsmasq --port=0 --enable-tftp`, on the same file; the client
side runs the same client (pxe/tftp.py's download, one process per client, each from its own
address as a rack of machines would be, all started at the same moment) against each, and curl
(blksize only) once. Cases: blksize 1468 lockstep and with --window (RFC 7440), one client and
each count of --clients at once. dnsmasq does not implement windowsize: it ignores the option,
and the client then goes block by block. The servers take turns round by round (the order
alternates), so a load change on the machine hits both. Prints, per case, the wall time (first
request to last block), total MB/s, the median and the slowest client's own time; then the
medians over the rounds and the dnsmasq/xenlab ratios (above 1: xenlab faster). Run as root;
the namespaces are deleted at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from processes import stop

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
    t0 = time.time()
    _, oack = tftp.download(
        (SERVER, 69), "big.bin", options, timeout=2, retries=10, sink=sink, bind=args.bind
    )
    t1 = time.time()
    print(json.dumps({"start": t0, "end": t1, "bytes": got[0], "oack": oack}))


def client_address(i: int) -> str:
    return f"10.79.{1 + i // 200}.{10 + i % 200}"


def run_clients(ns: str, n: int, blksize: int, window: int) -> dict:
    start_at = time.time() + 1.0 + 0.08 * n  # every process up before the first request
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
                "--bind",
                client_address(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"client failed: {err.strip()[-500:]}")
        results.append(json.loads(out))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["bytes"] for r in results)
    own = [r["end"] - r["start"] for r in results]
    return {
        "wall": wall,
        "mb_s": total / wall / 1e6,
        "per_client": statistics.median(own),
        "slowest": max(own),
        "fastest": min(own),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--clients", default="20,50", help="client counts, comma separated")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--blksize", type=int, default=1468)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bind", default="", help=argparse.SUPPRESS)
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
        sh("ip", "-n", srv, "addr", "add", f"{SERVER}/16", "dev", "veth-s")
        sh("ip", "-n", cl, "addr", "add", f"{CLIENT}/16", "dev", "veth-c")
        counts = [int(c) for c in str(args.clients).split(",") if c]
        for i in range(max(counts + [1])):
            sh("ip", "-n", cl, "addr", "add", f"{client_address(i)}/16", "dev", "veth-c")
        sh("ip", "-n", srv, "link", "set", "veth-s", "up")
        sh("ip", "-n", cl, "link", "set", "veth-c", "up")
        with open(root / "big.bin", "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1 << 20))
        cases = [(c, w) for c in [1] + counts for w in (1, args.window)]
        servers = [("xenlab", start_xenlab), ("dnsmasq", start_dnsmasq)]
        for turn in range(args.rounds):
            for name, start in servers if turn % 2 == 0 else servers[::-1]:
                server = start(srv, root)
                try:
                    for clients, window in cases:
                        r = run_clients(cl, clients, args.blksize, window)
                        rows.append((name, clients, window, r))
                        print(
                            f"round {turn + 1} {name:8} clients={clients:<3} "
                            f"blksize={args.blksize} windowsize={window:<3} "
                            f"(acked: {r['window_acked']:>2}) wall {r['wall']:7.2f} s "
                            f"{r['mb_s']:7.1f} MB/s total  per client: median "
                            f"{r['per_client']:6.2f} s, slowest {r['slowest']:6.2f} s",
                            flush=True,
                        )
                    if shutil.which("curl"):
                        seconds = run_curl(cl, args.blksize)
                        curl.setdefault(name, []).append(seconds)
                        print(
                            f"round {turn + 1} {name:8} curl, 1 client, blksize={args.blksize}: "
                            f"wall {seconds:7.2f} s "
                            f"{args.size_mb * 1048576 / seconds / 1e6:7.1f} MB/s",
                            flush=True,
                        )
                finally:
                    stop(server)
    finally:
        for ns in (srv, cl):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    def median(name: str, clients: int, window: int, what: str) -> float:
        return statistics.median(
            r[what] for n, c, w, r in rows if (n, c, w) == (name, clients, window)
        )

    print(
        f"\nmedians over {args.rounds} round(s), {args.size_mb} MB per client; ratio = dnsmasq "
        "wall / xenlab wall (above 1: xenlab faster)"
    )
    for clients, window in cases:
        x, d = (median(n, clients, window, "wall") for n in ("xenlab", "dnsmasq"))
        xs, ds = (median(n, clients, window, "slowest") for n in ("xenlab", "dnsmasq"))
        print(
            f"  clients={clients:<3} windowsize={window:<3} xenlab {x:7.2f} s "
            f"(slowest client {xs:6.2f} s)  dnsmasq {d:7.2f} s (slowest {ds:6.2f} s)  "
            f"ratio {d / x:5.2f}"
        )
    if len(curl) == 2:
        xc, dc = statistics.median(curl["xenlab"]), statistics.median(curl["dnsmasq"])
        print(f"  curl, 1 client: xenlab {xc:.2f} s, dnsmasq {dc:.2f} s, ratio {dc / xc:5.2f}")


if __name__ == "__main__":
    main()
