"""YAML text from data: every structured seed file is dumped, never assembled from strings."""

import io
from typing import Any

from ruamel.yaml import YAML


def dump(data: Any, header: str = "") -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096  # keys and hashes stay on one line
    out = io.StringIO()
    yaml.dump(data, out)
    return header + out.getvalue()
