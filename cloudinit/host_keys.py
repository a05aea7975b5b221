"""The guest's SSH host keys, made on the host so their fingerprints are known before first boot."""

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

from cloudinit.errors import SeedError

# ed25519 for current clients, RSA for old ones; cloud-init's ssh_keys names them TYPE_private/public.
TYPES = (("ed25519", []), ("rsa", ["-b", "3072"]))


@dataclass(frozen=True)
class HostKey:
    type: str  # ed25519, rsa: the prefix of cloud-init's ssh_keys entries
    private: str  # OpenSSH private key: goes into the seed only, never printed
    public: str
    fingerprint: str  # as ssh-keygen -l shows it: "256 SHA256:... root@NAME (ED25519)"


def generate(name: str) -> List[HostKey]:
    """New host keys for guest `name`, made in a private temporary directory removed afterwards."""
    keys = []
    with tempfile.TemporaryDirectory(prefix="xenlab-hostkeys-") as tmp:
        for kind, extra in TYPES:
            path = Path(tmp) / f"ssh_host_{kind}_key"
            argv = ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", f"root@{name}"]
            _run([*argv, "-f", str(path)])
            public = path.with_suffix(".pub").read_text().strip()
            fingerprint = _run(["ssh-keygen", "-l", "-f", str(path.with_suffix(".pub"))]).strip()
            keys.append(HostKey(kind, path.read_text(), public, fingerprint))
    return keys


def _run(argv: List[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise SeedError("ssh-keygen is missing (Debian/Ubuntu package openssh-client)") from None
    if proc.returncode != 0:
        raise SeedError(f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout
