"""The installer's side of a PXE install, as pxe.serve sees it, run in the installer namespace:
the boot menu over TFTP (pxelinux asks for its MAC's menu, which is how a proxy-mode pxe.serve
learns the host's address), the preseed over HTTP from the URL in that menu (served once, only to
that address), and at the end the late_command's callback, which disarms the MAC.

    python -m pipeline.lab.rehearsal.installer preseed SERVER MAC OUT_DIR
    python -m pipeline.lab.rehearsal.installer callback URL

What the rehearsal cannot run is the installer itself (its udebs are not on these machines' mirror,
see ../shared/recipes/pxe-in-netns.md); it lays the disk out and installs the OS the way the
preseed says, and runs the preseed's own late setup script, taken from the preseed it was served.
"""

import base64
import re
import socket
import struct
import sys
import urllib.request
from pathlib import Path
from typing import Tuple

from pipeline.errors import Failed

TFTP_PORT = 69
_RRQ, _DATA, _ACK, _ERROR = 1, 3, 4, 5
_PRESEED_URL = re.compile(r"\burl=(http://\S+/preseed/\S+\.cfg)")
_SETUP = re.compile(r"echo ([A-Za-z0-9+/=]+) \| base64 -d >/tmp/xenlab-setup\.sh")
_CALLBACK = re.compile(r"wget -q -O /dev/null (http://\S+)\s*$", re.M)


def tftp_get(server: str, name: str, timeout: float = 10.0) -> bytes:
    """One file over TFTP (RFC 1350, 512-byte blocks), as a PXE loader fetches its menu."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(struct.pack("!H", _RRQ) + name.encode() + b"\0octet\0", (server, TFTP_PORT))
        data, expected = b"", 1
        while True:
            packet, peer = sock.recvfrom(65536)
            op, block = struct.unpack("!HH", packet[:4])
            if op == _ERROR:
                message = packet[4:].rstrip(b"\0").decode(errors="replace")
                raise Failed(f"TFTP {name} from {server}: {message}")
            if op != _DATA:
                continue
            if block == expected:
                data += packet[4:]
                expected = (expected + 1) & 0xFFFF
            sock.sendto(struct.pack("!HH", _ACK, block), peer)
            if len(packet) - 4 < 512:
                return data
    except socket.timeout:
        raise Failed(f"TFTP {name} from {server}: no answer within {timeout:.0f} s") from None
    finally:
        sock.close()


def http_get(url: str, timeout: float = 30.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except OSError as exc:
        raise Failed(f"GET {url}: {exc}") from None


def menu_name(mac: str) -> str:
    """pxelinux's request for its own menu (01- and the MAC with dashes)."""
    return f"bios/pxelinux.cfg/01-{mac.replace(':', '-')}"


def parts(preseed: str) -> Tuple[str, str]:
    """The late setup script and the callback URL the preseed's late_command carries."""
    setup, callback = _SETUP.search(preseed), _CALLBACK.search(preseed)
    if not setup or not callback:
        raise Failed("the preseed's late_command carries no xenlab setup and callback")
    return base64.b64decode(setup.group(1)).decode(), callback.group(1)


def fetch_preseed(server: str, mac: str, out: Path) -> None:
    menu = tftp_get(server, menu_name(mac)).decode(errors="replace")
    (out / "menu.cfg").write_text(menu)
    found = _PRESEED_URL.search(menu)
    if not found:
        raise Failed(f"{mac}'s boot menu names no preseed URL (is the MAC armed?):\n{menu}")
    preseed = http_get(found.group(1)).decode()
    (out / "preseed.cfg").write_text(preseed)
    setup, callback = parts(preseed)
    (out / "setup.sh").write_text(setup)
    (out / "callback-url").write_text(callback + "\n")


def main(argv) -> int:
    try:
        if argv[:1] == ["preseed"] and len(argv) == 4:
            fetch_preseed(argv[1], argv[2], Path(argv[3]))
        elif argv[:1] == ["callback"] and len(argv) == 2:
            http_get(argv[1])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Failed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
