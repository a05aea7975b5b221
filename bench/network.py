"""Time `invoke host.network` against the hand way it replaces (ip/brctl, sysctl, netplan), in one run.

    .venv/bin/python bench/network.py [--rounds 10]

Each round uses fresh network namespaces and a fresh --root; nothing outside them is touched.
Prints median wall-clock seconds and the ratio xenlab / by hand.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBNET, ADDRESS = "192.0.2.0/28", "192.0.2.1/28"


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


def by_hand(ns: str, root: Path) -> None:
    """What the lab's notes say: brctl addbr (here: ip link), ip addr, sysctl, a netplan file, netplan generate."""
    sh(
        "ip",
        "-n",
        ns,
        "link",
        "add",
        "xenbr0",
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    )
    sh("ip", "-n", ns, "link", "set", "xenbr0", "up")
    sh("ip", "-n", ns, "addr", "add", ADDRESS, "brd", "+", "dev", "xenbr0")
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    conf = root / "etc/netplan/01-netcfg.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "network:\n  version: 2\n  bridges:\n    xenbr0:\n      interfaces: []\n"
        f"      addresses: [{ADDRESS}]\n      parameters: {{stp: false, forward-delay: 0}}\n"
    )
    conf.chmod(0o600)
    sysctl = root / "etc/sysctl.d/60-forwarding.conf"
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    sysctl.write_text("net.ipv4.ip_forward = 1\n")
    if shutil.which("netplan"):
        sh("netplan", "generate", "--root-dir", str(root))


def xenlab(ns: str, root: Path) -> None:
    sh(
        sys.executable,
        "-m",
        "invoke",
        "host.network",
        "--subnet",
        SUBNET,
        "--netns",
        ns,
        "--root",
        str(root),
    )


def library(ns: str, root: Path) -> None:
    """The same work without the interpreter's start and imports (which a long-lived caller pays once)."""
    from pipeline.config import load_site
    from pipeline.host import network as host_network
    from pipeline.runner import Runner

    host_network.configure(
        load_site({"host": {"subnet": SUBNET}}).host, Runner(root=root), netns=ns
    )


def timed(fn, ns: str, root: Path) -> float:
    start = time.perf_counter()
    fn(ns, root)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    results = {
        "by hand": [],
        "xenlab, first run": [],
        "xenlab, second run (no changes)": [],
        "xenlab library call, first run": [],
    }
    import pipeline.host.network  # noqa: F401  (imports paid before timing the library call)

    for _ in range(rounds):
        for label in ("by hand", "xenlab", "library"):
            ns = f"xl-bench-{uuid.uuid4().hex[:6]}"
            sh("ip", "netns", "add", ns)
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    if label == "by hand":
                        results[label].append(timed(by_hand, ns, Path(tmp)))
                    elif label == "library":
                        results["xenlab library call, first run"].append(
                            timed(library, ns, Path(tmp))
                        )
                    else:
                        results["xenlab, first run"].append(timed(xenlab, ns, Path(tmp)))
                        results["xenlab, second run (no changes)"].append(
                            timed(xenlab, ns, Path(tmp))
                        )
            finally:
                sh("ip", "netns", "del", ns)
    hand = statistics.median(results["by hand"])
    print(f"{'':34} {'median s':>9} {'ratio to hand':>14}   ({rounds} rounds)")
    for label, times in results.items():
        med = statistics.median(times)
        print(f"{label:34} {med:9.3f} {med / hand:14.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
