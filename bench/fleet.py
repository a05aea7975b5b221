"""Time `invoke fleet.run host.check` on three hosts against the same command run on each host
one after another with plain `ssh`, in one run.

    .venv/bin/python bench/fleet.py [--rounds 5]

The three hosts are tests/test_fleet.py's: network namespaces on veths (10.213.N.2), each with
its own sshd in a private mount namespace, xenlab deployed by fleet.deploy from the cached
Debian 12 wheelhouse. Everything is removed afterwards. Prints the median wall-clock seconds of
each way and the ratio fleet.run / ssh one after another. host.check exits 1 on these hosts (no
Xen): both ways run it to the end all the same.
"""

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.fleet import run as remote  # noqa: E402
from tests.test_fleet import Hosts, wheelhouse_dir  # noqa: E402


def timed(argv, env=None) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(REPO))
    took = time.monotonic() - start
    if proc.returncode not in (0, 1):  # host.check: 1 = steps missing (no Xen here)
        sys.exit(
            f"{argv[0]} ... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    house = wheelhouse_dir()
    lab = Hosts(Path(tempfile.mkdtemp(prefix="xenlab-bench-fleet-")))
    try:
        lab.start()
        fleet_file = lab.fleet_file(lab.work / "fleet.yaml")
        env = {"HOME": str(lab.home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "120"}
        invoke = [str(REPO / ".venv/bin/invoke"), "-f", str(fleet_file)]
        proc = subprocess.run([*invoke, "fleet.deploy", "--wheelhouse", str(house)],
                              capture_output=True, text=True, env=env, cwd=str(REPO))  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"fleet.deploy failed:\n{proc.stdout}\n{proc.stderr}")
        ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
               "-o", f"UserKnownHostsFile={lab.home / '.ssh/known_hosts'}",
               "-i", str(lab.home / ".ssh/id_ed25519")]  # fmt: skip
        line = " ".join(shlex.quote(w) for w in remote.invoke_words("host.check"))

        def by_hand() -> float:
            return sum(timed([*ssh, f"root@{h.address}", line], env) for h in lab.hosts)

        def fleet() -> float:
            return timed([*invoke, "fleet.run", "host.check"], env)

        by_hand(), fleet()  # warm-up: page cache, sshd's first fork
        hand_times, fleet_times = [], []
        for _ in range(args.rounds):
            hand_times.append(by_hand())
            fleet_times.append(fleet())
        hand, fleet_s = statistics.median(hand_times), statistics.median(fleet_times)
        print(f"hosts: {len(lab.hosts)}, rounds: {args.rounds} (medians of wall-clock seconds)")
        print(f"invoke fleet.run host.check (parallel, Fabric): {fleet_s:6.2f} s"
              f"  (min {min(fleet_times):.2f}, max {max(fleet_times):.2f})")  # fmt: skip
        print(f"ssh HOST invoke host.check, one after another:  {hand:6.2f} s"
              f"  (min {min(hand_times):.2f}, max {max(hand_times):.2f})")  # fmt: skip
        print(f"ratio fleet.run / ssh one after another:       {fleet_s / hand:6.3f}")
    finally:
        lab.close()
        subprocess.run(["rm", "-rf", str(lab.work)])


if __name__ == "__main__":
    main()
