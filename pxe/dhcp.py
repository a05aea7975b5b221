"""DHCP/BOOTP packets (RFC 2131/2132) as plain data, with the options PXE clients send and need.

`decode` turns bytes from the wire into a `Packet`, `encode` does the reverse. Anything that is not
a well-formed BOOTP request or reply raises `MalformedPacket` (a ValueError) and nothing else, so
the server can drop a bad packet with one `except` and keep serving.
"""

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, then the magic cookie
MIN_SIZE = 300  # BOOTP's minimum; some PXE ROMs drop shorter replies

BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {
    DISCOVER: "discover",
    OFFER: "offer",
    REQUEST: "request",
    DECLINE: "decline",
    ACK: "ack",
    NAK: "nak",
    RELEASE: "release",
    INFORM: "inform",
}

# Option codes used here (RFC 2132, RFC 3004 user class, RFC 4578 PXE client arch and UUID).
PAD, END = 0, 255
SUBNET_MASK, ROUTER, DNS, HOSTNAME, BROADCAST = 1, 3, 6, 12, 28
REQUESTED_IP, LEASE_TIME, OVERLOAD, MESSAGE_TYPE, SERVER_ID = 50, 51, 52, 53, 54
PARAMETER_LIST, MESSAGE, RENEWAL_TIME, REBINDING_TIME = 55, 56, 58, 59
VENDOR_CLASS, VENDOR_OPTIONS, CLIENT_ID = 60, 43, 61
TFTP_SERVER, BOOTFILE = 66, 67
USER_CLASS, CLIENT_ARCH, CLIENT_NDI, CLIENT_UUID = 77, 93, 94, 97

# PXE vendor sub-options inside option 43 (PXE spec 2.1, table 2-1).
PXE_DISCOVERY_CONTROL = 6
# Bit 3: "if a boot file name is in the (proxy) offer, download it": no boot server discovery.
DISCOVERY_BOOTFILE_ONLY = 0x08

# Options whose length the server relies on: checked when decoding, so accessors never fail.
_FIXED_LENGTH = {MESSAGE_TYPE: 1, REQUESTED_IP: 4, SERVER_ID: 4, OVERLOAD: 1, LEASE_TIME: 4}


class MalformedPacket(ValueError):
    """Bytes that are not a DHCP packet this server can read."""


@dataclass
class Packet:
    op: int = BOOTREQUEST
    xid: int = 0
    chaddr: bytes = b"\0" * 6  # the hardware address, hlen bytes
    htype: int = 1  # Ethernet
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    sname: bytes = b""
    file: bytes = b""
    # code -> raw value; insertion order is kept on the wire
    options: Dict[int, bytes] = field(default_factory=dict)

    # --- what the server reads ---------------------------------------------------------------
    @property
    def mac(self) -> str:
        """The client's hardware address, lower-case and colon separated."""
        return ":".join(f"{b:02x}" for b in self.chaddr)

    @property
    def message_type(self) -> Optional[int]:
        value = self.options.get(MESSAGE_TYPE)
        return value[0] if value else None

    @property
    def vendor_class(self) -> bytes:
        return self.options.get(VENDOR_CLASS, b"")

    @property
    def is_pxe(self) -> bool:
        """A PXE ROM (or iPXE, which says so as well) rather than an OS's DHCP client."""
        return self.vendor_class.startswith(b"PXEClient")

    @property
    def is_http_client(self) -> bool:
        """UEFI HTTP Boot (UEFI 2.5+): firmware that takes its boot file as an http:// URL."""
        return self.vendor_class.startswith(b"HTTPClient")

    @property
    def user_class(self) -> Optional[bytes]:
        return self.options.get(USER_CLASS)

    @property
    def arch(self) -> int:
        """Option 93's first architecture (RFC 4578: 0 BIOS, 6 IA32 EFI, 7/9 x86-64 EFI); 0 when absent."""
        value = self.options.get(CLIENT_ARCH)
        return struct.unpack("!H", value[:2])[0] if value else 0

    @property
    def client_uuid(self) -> Optional[str]:
        """Option 97 (type 0 then 16 bytes) as a UUID string; None when absent or of another type."""
        value = self.options.get(CLIENT_UUID)
        if value is None or len(value) != 17 or value[0] != 0:
            return None
        h = value[1:].hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @property
    def requested_ip(self) -> Optional[str]:
        value = self.options.get(REQUESTED_IP)
        return _ip(value) if value else None

    @property
    def server_id(self) -> Optional[str]:
        value = self.options.get(SERVER_ID)
        return _ip(value) if value else None


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _cstring(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _parse_options(data: bytes, into: Dict[int, bytes]) -> None:
    """Options up to END; a repeated option is concatenated (RFC 3396)."""
    i = 0
    while i < len(data):
        code = data[i]
        if code == PAD:
            i += 1
            continue
        if code == END:
            return
        if i + 1 >= len(data):
            raise MalformedPacket(f"option {code} has no length byte")
        length = data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            raise MalformedPacket(f"option {code} is cut short ({len(value)} of {length} bytes)")
        into[code] = into.get(code, b"") + value
        i += 2 + length


def decode(data: bytes) -> Packet:
    """A Packet from the wire; MalformedPacket for anything else."""
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedPacket("not bytes")
    data = bytes(data)
    if len(data) < HEADER.size + len(MAGIC):
        raise MalformedPacket(f"{len(data)} bytes is shorter than a BOOTP header")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = HEADER.unpack_from(data)  # fmt: skip
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"op {op} is neither request nor reply")
    if not 1 <= hlen <= 16:
        raise MalformedPacket(f"hardware address length {hlen}")
    if data[HEADER.size : HEADER.size + 4] != MAGIC:
        raise MalformedPacket("no DHCP magic cookie")
    options: Dict[int, bytes] = {}
    _parse_options(data[HEADER.size + 4 :], options)
    # Option 52 moves more options into the file and/or sname fields.
    overload = options.get(OVERLOAD, b"\0")[:1]
    if overload and overload[0] in (1, 3):
        _parse_options(file, options)
        file = b""
    if overload and overload[0] in (2, 3):
        _parse_options(sname, options)
        sname = b""
    for code, length in _FIXED_LENGTH.items():
        if code in options and len(options[code]) != length:
            raise MalformedPacket(f"option {code} is {len(options[code])} bytes, not {length}")
    if MESSAGE_TYPE in options and options[MESSAGE_TYPE][0] not in MESSAGE_NAMES:
        raise MalformedPacket(f"message type {options[MESSAGE_TYPE][0]}")
    arch = options.get(CLIENT_ARCH)
    if arch is not None and (len(arch) < 2 or len(arch) % 2):
        raise MalformedPacket(f"option 93 is {len(arch)} bytes, not pairs")
    return Packet(
        op=op,
        htype=htype,
        hops=hops,
        xid=xid,
        secs=secs,
        flags=flags,
        ciaddr=_ip(ciaddr),
        yiaddr=_ip(yiaddr),
        siaddr=_ip(siaddr),
        giaddr=_ip(giaddr),
        chaddr=chaddr[:hlen],
        sname=_cstring(sname),
        file=_cstring(file),
        options=options,
    )


def _encode_options(options: Dict[int, bytes]) -> bytes:
    out = bytearray()
    # The message type first: some PXE ROMs look for it there.
    ordered = sorted(options.items(), key=lambda kv: kv[0] != MESSAGE_TYPE)
    for code, value in ordered:
        if not 0 < code < 255:
            raise ValueError(f"option code {code}")
        # Longer than 255 bytes: split into repeats, which the reader concatenates (RFC 3396).
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes([code, len(chunk)]) + chunk
    out.append(END)
    return bytes(out)


def encode(packet: Packet) -> bytes:
    if len(packet.sname) > 63 or len(packet.file) > 127:
        raise ValueError("sname or file too long for the BOOTP header")
    header = HEADER.pack(
        packet.op,
        packet.htype,
        len(packet.chaddr),
        packet.hops,
        packet.xid,
        packet.secs,
        packet.flags,
        ipaddress.IPv4Address(packet.ciaddr).packed,
        ipaddress.IPv4Address(packet.yiaddr).packed,
        ipaddress.IPv4Address(packet.siaddr).packed,
        ipaddress.IPv4Address(packet.giaddr).packed,
        packet.chaddr,
        packet.sname,
        packet.file,
    )
    data = header + MAGIC + _encode_options(packet.options)
    return data + b"\0" * max(0, MIN_SIZE - len(data))


# --- option values ------------------------------------------------------------------------------
def ip_option(*addresses: str) -> bytes:
    return b"".join(ipaddress.IPv4Address(a).packed for a in addresses)


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def pxe_vendor_options(sub: Dict[int, bytes]) -> bytes:
    """Option 43 for PXE clients: sub-options, then END."""
    out = bytearray()
    for code, value in sub.items():
        out += bytes([code, len(value)]) + value
    return bytes(out + bytes([END]))


def parse_vendor_options(raw: bytes) -> Dict[int, bytes]:
    sub: Dict[int, bytes] = {}
    _parse_options(raw, sub)
    return sub


def arch_option(*arches: int) -> bytes:
    return b"".join(struct.pack("!H", a) for a in arches)


def uuid_option(uuid: str) -> bytes:
    raw = bytes.fromhex(uuid.replace("-", ""))
    if len(raw) != 16:
        raise ValueError(f"{uuid!r} is not a UUID")
    return b"\0" + raw


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def reply_to(request: Packet, message_type: int) -> Packet:
    """A reply skeleton: same transaction, client address and flags, message type set."""
    return Packet(
        op=BOOTREPLY,
        xid=request.xid,
        chaddr=request.chaddr,
        htype=request.htype,
        flags=request.flags,
        giaddr=request.giaddr,
        options={MESSAGE_TYPE: bytes([message_type])},
    )


def describe(packet: Packet) -> Tuple[str, str]:
    """(mac, message name) for log lines."""
    kind = packet.message_type
    return packet.mac, MESSAGE_NAMES.get(kind, "bootp") if kind else "bootp"
