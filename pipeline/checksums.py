"""Digests of files, read in blocks: what caches compare and SHA256SUMS files list."""

import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of `path` with `algorithm` (sha256, sha512...)."""
    digest = hashlib.new(algorithm.lower())
    with open(str(path), "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
