"""What the benchmarks share about the servers they start: stopping one by its PID."""

import os
import signal
import subprocess


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s: no server outlives its benchmark."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
