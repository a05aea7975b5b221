"""Sizes as people write them (100G, 4096M, 1.5T) and as the tools want them (bytes, MiB)."""

import re
from typing import Union

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
MiB = 1 << 20
GiB = 1 << 30


def parse_size(value: Union[str, int], default_unit: str = "") -> int:
    """Bytes in a size such as '100G', '4096M', '1T' or a bare number in `default_unit`.

    Units are binary (G = GiB) as in LVM, fdisk and xl; ValueError names what was wrong.
    """
    if isinstance(value, bool):
        raise ValueError("is not a size")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("is not a size such as 100G or 4096M")
    match = _SIZE.match(value)
    if not match:
        raise ValueError("is not a size such as 100G or 4096M")
    number, unit = match.groups()
    unit = unit.upper() or default_unit.upper()
    size = int(float(number) * _UNITS[unit])
    if size <= 0:
        raise ValueError("must be larger than zero")
    return size


def human(size: int) -> str:
    """The largest binary unit that gives a whole or one-decimal number: 100G, 1.5T, 512M."""
    for unit in ("T", "G", "M", "K"):
        scaled = size / _UNITS[unit]
        if scaled >= 1:
            text = f"{scaled:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{size}B"
