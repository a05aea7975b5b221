"""Persisting the bridge the Ubuntu way: merged into a netplan file, keeping what is already there.

Round-trip editing with ruamel.yaml keeps the uplink's config, comments, key order and the file's
own indentation; only the bridge's entry is set.
"""

import io
import ipaddress
import re
from typing import Optional

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent


def _flow(items) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def bridge_entry(iface: ipaddress.IPv4Interface) -> dict:
    """What netplan needs for a routed bridge with no member interfaces."""
    return {
        "interfaces": _flow([]),
        "addresses": _flow([str(iface)]),
        "parameters": {"stp": False, "forward-delay": 0},
        # No carrier until a guest's vif joins: boot must not wait for it.
        "optional": True,
    }


def _indentation(text: str, seq_indent: Optional[int], dash_offset: Optional[int]) -> dict:
    """The file's own indentation, so that a merge changes only the lines it must."""
    nested = [
        len(line) - len(line.lstrip(" "))
        for line in text.splitlines()
        if line.startswith(" ") and line.strip() and not line.lstrip().startswith(("#", "-"))
    ]
    mapping = min(nested) if nested else 2
    if not re.search(r"^\s*- ", text, re.M):
        return {"mapping": mapping, "sequence": mapping, "offset": 0}
    return {"mapping": mapping, "sequence": seq_indent or mapping, "offset": dash_offset or 0}


def merge_bridge(text: Optional[str], bridge: str, iface: ipaddress.IPv4Interface) -> str:
    """`text` (an existing netplan file, or None) with `bridge` set to carry `iface`.

    Raises ValueError when `text` is not a netplan document this can edit.
    """
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = None
    if text and text.strip():
        try:
            doc, seq_indent, dash_offset = load_yaml_guess_indent(text)
        except YAMLError as exc:
            raise ValueError(f"is not valid YAML: {exc}") from None
        yaml.indent(**_indentation(text, seq_indent, dash_offset))
    else:
        yaml.indent(mapping=2, sequence=2, offset=0)
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, dict):
        raise ValueError("is not a netplan document (its top level is not a mapping)")
    network = doc.setdefault("network", CommentedMap())
    if not isinstance(network, dict):
        raise ValueError("has a 'network' key that is not a mapping")
    network.setdefault("version", 2)
    bridges = network.setdefault("bridges", CommentedMap())
    if not isinstance(bridges, dict):
        raise ValueError("has a 'network.bridges' key that is not a mapping")
    entry = bridges.get(bridge)
    if not isinstance(entry, dict):
        entry = CommentedMap()
    for key, value in bridge_entry(iface).items():
        if entry.get(key) != value:
            entry[key] = value
    bridges[bridge] = entry
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()
