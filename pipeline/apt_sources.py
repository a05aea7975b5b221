"""The machine's own apt sources: where Debian packages come from when the config names no mirror.

No Debian mirror host is written into xenlab; they are read here, at run time, from /etc/apt.
Ubuntu's public archive is the one default the Ubuntu profiles fall back to.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from pipeline.errors import BadInput

UBUNTU_ARCHIVE = "http://archive.ubuntu.com/ubuntu"


@dataclass(frozen=True)
class Source:
    uri: str
    suites: Tuple[str, ...]
    components: Tuple[str, ...]


def _deb822(text: str) -> List[Source]:
    sources = []
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"]) == ["no"]:
            continue
        for uri in fields.get("uris", []):
            sources.append(
                Source(
                    uri.rstrip("/"),
                    tuple(fields.get("suites", ())),
                    tuple(fields.get("components", ())),
                )
            )
    return sources


def _one_line(text: str) -> List[Source]:
    sources = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        if words[1].startswith("["):  # options such as [signed-by=...]
            while words and not words[1].endswith("]"):
                words.pop(1)
            words.pop(1)
        sources.append(Source(words[1].rstrip("/"), (words[2],), tuple(words[3:])))
    return sources


def read(etc_apt: Path = Path("/etc/apt")) -> List[Source]:
    """Every enabled `deb` source, in the order apt reads them."""
    found: List[Source] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        found += _one_line(main_list.read_text())
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                found += _one_line(path.read_text())
            elif path.suffix == ".sources":
                found += _deb822(path.read_text())
    return found


def debian_mirrors(etc_apt: Path = Path("/etc/apt")) -> Tuple[str, Optional[str]]:
    """(main mirror, security mirror or None) of the machine's Debian sources.

    BadInput when there is none: then the config must name one (the field is in the message).
    """
    main = security = None
    for source in read(etc_apt):
        if any(s.endswith("-security") or s.endswith("/updates") for s in source.suites):
            security = security or source.uri
        elif "debian" in source.uri or any(
            s.startswith(("bookworm", "bullseye", "trixie", "buster")) for s in source.suites
        ):
            main = main or source.uri
    if main is None:
        raise BadInput(
            "images.mirror", None, f"no Debian mirror is configured and none is in {etc_apt}"
        )
    return main, security
