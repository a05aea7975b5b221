"""The guest's root password: random and strong; only its crypt hash leaves the host's 0600 file."""

import secrets
import subprocess

from cloudinit.errors import SeedError


def generate() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def sha512_crypt(password: str) -> str:
    """The SHA-512 crypt hash ($6$...) of `password`, as /etc/shadow holds it.

    openssl reads the password on stdin, so it never shows in a process list.
    """
    try:
        proc = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise SeedError("openssl is missing (Debian/Ubuntu package openssl)") from None
    hashed = proc.stdout.strip()
    if proc.returncode != 0 or not hashed.startswith("$6$"):
        raise SeedError(f"openssl passwd -6 exited {proc.returncode}: {proc.stderr.strip()}")
    return hashed
