"""The NoCloud seed: an ISO 9660 volume labelled 'cidata' with meta-data, user-data, network-config.

cloud-init's NoCloud datasource finds it by that label on any block device (a Xen cdrom, a qemu
drive). Rock Ridge and Joliet carry the real file names; ISO 9660 itself allows only 8.3 names.
"""

import io
from typing import Dict, Mapping, Tuple

import pycdlib

LABEL = "cidata"
FILES = ("meta-data", "user-data", "network-config")


def _iso_name(name: str) -> str:
    return "/" + name.replace("-", "").upper()[:8] + ".;1"


def build(files: Mapping[str, str]) -> bytes:
    """The ISO image holding `files` ({'user-data': text, ...}) at its root."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, text in files.items():
            data = text.encode()
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                _iso_name(name),
                rr_name=name,
                joliet_path="/" + name,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def read(image: bytes) -> Tuple[str, Dict[str, str]]:
    """(volume label, {Rock Ridge name: text}) of a seed ISO: what cloud-init will see."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue().decode()
        return label, files
    finally:
        iso.close()
