"""Persisting kernel settings in /etc/sysctl.d, applied by systemd-sysctl at boot."""

from typing import Mapping

HEADER = "# Written by xenlab (invoke host.network): the host routes between its uplink and the guests.\n"


def render(settings: Mapping[str, object]) -> str:
    lines = []
    for key, value in settings.items():
        text = f"{key} = {value}"
        if "\n" in text:
            raise ValueError(f"sysctl setting {key!r} holds a newline")
        lines.append(text + "\n")
    return HEADER + "".join(lines)
