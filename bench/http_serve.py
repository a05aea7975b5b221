"""HTTP: pxe.serve's server against `python -m http.server`, 20 clients fetching an initrd at once.

    .venv/bin/python bench/http_serve.py [--size-mb 40] [--clients 20] [--rounds 3]

Over loopback, on one file of --size-mb (Debian 12's netboot initrd is 40 MB) under
installers/: pxe/http.py's HttpServer (in its own process, as pxe.serve runs it), then Python's
own `http.server` on the same tree; --clients curl processes start at the same moment against
each. The floor is the same bytes (clients x size) pushed over one loopback TCP connection with
sendfile and read by one reader: what loopback itself costs here. The servers take turns round by
round. Prints, per run, the wall time (all clients done), the slowest client's time and the
total MB/s; then the medians and the ratios. Checks that xenlab's answer has Content-Length.
"""

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from processes import stop

_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
PATH = "installers/debian-12/initrd.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def start_xenlab(root: Path, port: int) -> subprocess.Popen:
    code = (
        "import signal; from pathlib import Path; from pxe.http import HttpApp, HttpServer\n"
        f"app = HttpApp(root=Path({str(root)!r}), armed=lambda m: False, disarm=lambda m: False,\n"
        "    preseed=lambda m: '', virtual=lambda p, ip: None, ip_of=lambda m: None,\n"
        "    mac_of=lambda ip: '?', log=lambda mac, msg: None)\n"
        f"s = HttpServer(('127.0.0.1', {port}), app)\n"
        "signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(SystemExit(0)))\n"
        "s.serve_forever()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO))
    wait_listening(port, proc)
    return proc


def start_stdlib(root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
         str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_listening(port, proc)
    return proc


def run_clients(port: int, n: int, size: int) -> dict:
    url = f"http://127.0.0.1:{port}/{PATH}"
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total} %{size_download}",
                url,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(n)
    ]
    own = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        seconds, got = out.split()
        if p.returncode != 0 or int(got) != size:
            raise SystemExit(f"a client failed: rc {p.returncode}, {got} of {size} bytes")
        own.append(float(seconds))
    wall = time.monotonic() - t0
    return {"wall": wall, "slowest": max(own), "median": statistics.median(own),
            "mb_s": n * size / wall / 1e6}  # fmt: skip


def floor(file: Path, n: int) -> float:
    """n times the file over one loopback connection (sendfile in, recv_into out), seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    got = [0]

    def reader() -> None:
        conn, _ = listener.accept()
        buf = bytearray(1 << 20)
        with conn:
            while True:
                k = conn.recv_into(buf)
                if not k:
                    return
                got[0] += k

    thread = threading.Thread(target=reader)
    thread.start()
    t0 = time.monotonic()
    with socket.create_connection(listener.getsockname()) as out, open(file, "rb") as fh:
        for _ in range(n):
            fh.seek(0)
            out.sendfile(fh)
    thread.join()
    listener.close()
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=40)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed")
    root = Path(tempfile.mkdtemp(prefix="xenlab-bench-http-"))
    try:
        file = root / PATH
        file.parent.mkdir(parents=True)
        with open(file, "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1 << 20))
        size = file.stat().st_size
        servers = [("xenlab", start_xenlab), ("http.server", start_stdlib)]
        results = {"xenlab": [], "http.server": [], "floor": []}
        for turn in range(args.rounds):
            for name, start in servers if turn % 2 == 0 else servers[::-1]:
                port = free_port()
                proc = start(root, port)
                try:
                    if name == "xenlab":
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                        conn.request("HEAD", f"/{PATH}")
                        length = conn.getresponse().getheader("Content-Length")
                        conn.close()
                        assert length == str(size), f"Content-Length {length}, not {size}"
                    r = run_clients(port, args.clients, size)
                finally:
                    stop(proc)
                results[name].append(r)
                print(
                    f"round {turn + 1} {name:11} {args.clients} clients x {args.size_mb} MB: "
                    f"wall {r['wall']:6.2f} s, slowest client {r['slowest']:6.2f} s, median "
                    f"{r['median']:6.2f} s, {r['mb_s']:7.1f} MB/s total",
                    flush=True,
                )
            seconds = floor(file, args.clients)
            results["floor"].append({"wall": seconds})
            print(f"round {turn + 1} floor       {args.clients} x {args.size_mb} MB over one "
                  f"loopback connection: {seconds:6.2f} s", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(r["wall"] for r in v) for k, v in results.items()}
    slow = {
        k: statistics.median(r["slowest"] for r in v) for k, v in results.items() if k != "floor"
    }
    print(
        f"\nmedians over {args.rounds} round(s): xenlab {med['xenlab']:.2f} s (slowest client "
        f"{slow['xenlab']:.2f} s), http.server {med['http.server']:.2f} s (slowest "
        f"{slow['http.server']:.2f} s), loopback floor {med['floor']:.2f} s\n"
        f"  http.server / xenlab {med['http.server'] / med['xenlab']:.2f} (above 1: xenlab "
        f"faster); xenlab / floor {med['xenlab'] / med['floor']:.2f}"
    )


if __name__ == "__main__":
    main()
