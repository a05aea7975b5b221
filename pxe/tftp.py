"""A read-only TFTP server confined to one directory: RFC 1350, options (RFC 2347: blksize 2348,
tsize and timeout 2349) and windowsize (RFC 7440).

One thread runs one event loop (epoll) for every transfer. Each transfer has its own
UDP socket and port (the transfer ID of RFC 1350), connected to its client, so the kernel drops
anyone else's datagrams and a slow or broken client holds up no one: the loop only answers the
sockets that have an ACK waiting, and a timer pass retransmits or gives up. A file is served from
a read-only memory map: a block is a slice of the page cache handed to sendmsg with its 4-byte
header, with no read() per block, and 50 clients of one initrd share its pages; a running
lockstep transfer's ACK takes a short path (recv, one send) and the kernel's UDP work is then
most of the cost, as it is for dnsmasq.
Why not a thread per transfer: under lockstep (one block per round trip, what PXE ROMs do) the
work per block is tiny, and 20 to 50 threads spend it fighting over the GIL and waking each
other; one loop does each ACK -> DATA turn in one pass, with no locks.

Against exhaustion (RFC 1350 gives no way to tell a slow client from a dead one): at most
`max_per_client` transfers per client address; a transfer that never got its first ACK is given
up after `first_retries` retransmissions of `timeout` (and, when every slot is taken, the oldest
such transfer makes room for a new request), while a running one keeps the timeout it asked for
(RFC 2349) and `retries`. netascii is converted block by block as it is sent, never the whole
file. Names are looked up under the root only: `..` components, and symlinks that lead out of
the root, are refused; an absolute name is taken as relative to the root, as tftpd's `--secure`
does. Bad packets get an error packet or silence, never an exception out of the server, and
what a client sent is logged with its control characters escaped (no forged log lines).
"""

import mmap
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
# Error codes (RFC 1350, 2347)
NOT_DEFINED, NOT_FOUND, ACCESS_VIOLATION, ILLEGAL_OP, UNKNOWN_TID, OPTION_REFUSED = 0, 1, 2, 4, 5, 8

MAX_REQUEST = 512  # RFC 2347: a request with its options fits in 512 octets
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
DEFAULT_BLKSIZE = 512

Address = Tuple[str, int]


class Refused(Exception):
    """A request this server will not serve: an error code and a message for the client."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Request:
    filename: str
    mode: str
    options: Dict[str, str] = field(default_factory=dict)  # names lower-case, in request order


def parse_request(data: bytes) -> Request:
    """An RRQ's filename, mode and options; Refused for anything malformed or oversized."""
    if len(data) > MAX_REQUEST:
        raise Refused(OPTION_REFUSED, f"request of {len(data)} bytes (over {MAX_REQUEST})")
    if len(data) < 4 or struct.unpack("!H", data[:2])[0] != RRQ:
        raise Refused(ILLEGAL_OP, "not a read request")
    if not data.endswith(b"\0"):
        raise Refused(ILLEGAL_OP, "request not NUL-terminated")
    fields = data[2:-1].split(b"\0")
    if len(fields) < 2 or len(fields) % 2:
        raise Refused(ILLEGAL_OP, "malformed request")
    try:
        texts = [f.decode("ascii") for f in fields]
    except UnicodeDecodeError:
        raise Refused(ILLEGAL_OP, "request is not ASCII") from None
    filename, mode = texts[0], texts[1].lower()
    if not filename:
        raise Refused(ILLEGAL_OP, "empty file name")
    if mode not in ("octet", "netascii"):
        raise Refused(ILLEGAL_OP, f"mode {mode!r} not supported")
    options: Dict[str, str] = {}
    for name, value in zip(texts[2::2], texts[3::2]):
        name = name.lower()
        if name in options:
            raise Refused(OPTION_REFUSED, f"option {name} given twice")
        options[name] = value
    return Request(filename, mode, options)


def _number(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise Refused(OPTION_REFUSED, f"{name}={value[:20]!r} is not a number")
    return int(value)


@dataclass
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: Optional[float] = None  # the client's, else the server's own
    acknowledged: Dict[str, str] = field(default_factory=dict)  # what goes into the OACK


def negotiate(options: Dict[str, str], size: Optional[int], max_blksize: int, max_window: int):
    """The options this server accepts, with the values it can do (RFC 2347: it may lower them).

    Unknown options are ignored; a value the client could not have meant is refused (error 8).
    """
    result = Negotiated()
    for name, value in options.items():
        if name == "blksize":
            n = _number(name, value)
            if n < MIN_BLKSIZE:
                raise Refused(OPTION_REFUSED, f"blksize {n} is under {MIN_BLKSIZE}")
            result.blksize = min(n, max_blksize, MAX_BLKSIZE)
            result.acknowledged[name] = str(result.blksize)
        elif name == "windowsize":
            n = _number(name, value)
            if not 1 <= n <= 65535:
                raise Refused(OPTION_REFUSED, f"windowsize {n} is outside 1..65535")
            result.windowsize = min(n, max_window)
            result.acknowledged[name] = str(result.windowsize)
        elif name == "timeout":
            n = _number(name, value)
            if not 1 <= n <= 255:
                raise Refused(OPTION_REFUSED, f"timeout {n} is outside 1..255")
            result.timeout = float(n)
            result.acknowledged[name] = str(n)
        elif name == "tsize":
            _number(name, value)  # a reader sends 0; the answer is the size, when known
            if size is not None:
                result.acknowledged[name] = str(size)
    return result


def confine(root: Path, name: str) -> Path:
    """The file `name` names under `root`; Refused when it is outside, missing or not a file."""
    if "\0" in name:
        raise Refused(ACCESS_VIOLATION, "NUL in file name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(ACCESS_VIOLATION, "'..' in file name")
    if not parts:
        raise Refused(NOT_FOUND, "no file name")
    real_root = os.path.realpath(str(root))
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real, real_root]) != real_root:
        raise Refused(ACCESS_VIOLATION, "leads out of the boot tree")
    if not os.path.isfile(real):
        raise Refused(NOT_FOUND, "file not found")
    return Path(real)


def to_netascii(data: bytes) -> bytes:
    """RFC 764's line ends: LF becomes CR LF, a lone CR becomes CR NUL."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode("ascii", "replace")[:200] + b"\0"


def oack_packet(options: Dict[str, str]) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
    return struct.pack("!H", OACK) + body


def printable(text: str) -> str:
    """`text` for a log line: control characters (newlines, escapes), DEL, non-ASCII and the
    backslash itself as \\xNN escapes, so a client's name can never start a line of its own."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return "".join(
        c
        if " " <= c <= "~" and c != "\\"
        else f"\\x{ord(c):02x}"
        if ord(c) < 256
        else f"\\u{ord(c):04x}"
        for c in text
    )


Data = Union[bytes, bytearray, memoryview, mmap.mmap]
_HEADER = struct.Struct("!HH")
_pack, _unpack = _HEADER.pack, _HEADER.unpack_from
_ACK_SIZE = 4


class _Octets:
    """A transfer's bytes as they go on the wire (octet mode): block n is a slice of the map."""

    last: Optional[int]

    def __init__(self, data: Data, blksize: int, owned: Optional[mmap.mmap] = None):
        self.view = memoryview(data)
        self.owned = owned
        self.size = len(self.view)
        self.blksize = blksize
        # Blocks are numbered from 1; the last one is shorter than blksize (maybe empty).
        self.last = self.size // blksize + 1
        self.sent = 0

    def block(self, n: int) -> memoryview:
        offset = (n - 1) * self.blksize
        return self.view[offset : offset + self.blksize]

    def forget(self, below: int) -> None:
        """Blocks under `below` are acknowledged: they will not be asked for again."""

    def close(self) -> None:
        try:
            self.view.release()
            if self.owned is not None:
                self.owned.close()
        except BufferError:  # a slice still in use somewhere: the collector unmaps it
            pass
        self.owned = None


class _Netascii(_Octets):
    """netascii (RFC 764 line ends) made while streaming: a block is converted when it is first
    sent and kept only until it is acknowledged (a window's worth), so the server never holds
    the file, converted or not; the number of the last block is known once it has been made."""

    CHUNK = 16384  # input bytes converted at a time

    def __init__(self, data: Data, blksize: int, owned: Optional[mmap.mmap] = None):
        super().__init__(data, blksize, owned)
        self.last = None
        self.position = 0  # input bytes converted so far
        self.pending = bytearray()  # converted bytes not yet in a block
        self.blocks: Dict[int, bytes] = {}
        self.made = 0  # blocks made so far
        self.size = 0  # bytes made so far (the wire size is known only at the end)

    def block(self, n: int) -> memoryview:  # type: ignore[override]
        while self.made < n and self.last is None:
            self._make()
        return memoryview(self.blocks[n])

    def _make(self) -> None:
        blksize = self.blksize
        while len(self.pending) < blksize and self.position < len(self.view):
            chunk = self.view[self.position : self.position + self.CHUNK]
            self.position += len(chunk)
            self.pending += to_netascii(bytes(chunk))
        data = bytes(self.pending[:blksize])
        del self.pending[:blksize]
        self.made += 1
        self.size += len(data)
        self.blocks[self.made] = data
        if len(data) < blksize:
            self.last = self.made

    def forget(self, below: int) -> None:
        for n in [n for n in self.blocks if n < below]:
            del self.blocks[n]


def _open_source(
    path: Optional[Path], content: Optional[bytes], netascii: bool, blksize: int
) -> _Octets:
    kind = _Netascii if netascii else _Octets
    if content is not None:
        return kind(content, blksize)
    assert path is not None
    fd = os.open(str(path), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return kind(b"", blksize)
        mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)  # the map keeps the file
    return kind(mapped, blksize, owned=mapped)


class _Transfer:
    """One read in flight: its socket, its bytes and where the window is."""

    __slots__ = (
        "sock", "client", "key", "name", "source", "blksize", "window", "timeout", "oack",
        "base", "top", "started", "tries", "deadline", "resent_for", "opened", "options_text",
        "lockstep", "view", "last",
    )  # fmt: skip

    def __init__(self, sock, client, key, name, source, opts: "Negotiated", timeout: float):
        self.sock = sock
        self.client = client
        self.key = key
        self.name = name
        self.source = source
        self.blksize = opts.blksize
        self.window = opts.windowsize
        self.timeout = opts.timeout or timeout  # RFC 2349: the client's, once it is running
        self.oack = oack_packet(opts.acknowledged) if opts.acknowledged else None
        self.options_text = " ".join(f"{k}={v}" for k, v in opts.acknowledged.items())
        self.base = 1  # the first block not yet acknowledged
        self.top = 0  # the last block sent
        self.started = False  # the client has acknowledged something
        self.tries = 0
        self.deadline = 0.0
        self.resent_for = 0  # the block a duplicate ACK already had resent
        self.opened = time.monotonic()
        # octet mode, one block per ACK: _on_packet's fast path sends slices of the map itself
        self.lockstep = self.window == 1 and type(source) is _Octets
        self.view = source.view
        self.last = source.last if self.lockstep else 0


class TftpServer:
    """Serve `root` read-only on (address, port).

    `virtual(name, client)` may return generated content (boot menus) for a name before the tree
    is looked at; `log(client_ip, message)` gets one line per transfer or refusal.
    """

    def __init__(
        self,
        root: Path,
        address: str,
        port: int = 69,
        interface: Optional[str] = None,
        virtual: Optional[Callable[[str, Address], Optional[bytes]]] = None,
        log: Callable[[str, str], None] = lambda ip, msg: None,
        timeout: float = 1.0,
        retries: int = 5,
        max_blksize: int = MAX_BLKSIZE,
        max_window: int = 64,
        max_transfers: int = 64,
        max_per_client: int = 8,
        first_retries: int = 2,
    ):
        self.root = Path(root)
        self.address = address
        self.interface = interface
        self.virtual = virtual
        self._log = log
        self.timeout = timeout
        self.retries = retries
        self.first_retries = first_retries
        self.max_blksize = max_blksize
        self.max_window = max_window
        self.max_transfers = max_transfers
        self.max_per_client = max_per_client
        self.sock = self._socket(port)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._done = threading.Event()
        self._running = False
        self._poll = select.epoll()
        self._by_fd: Dict[int, _Transfer] = {}
        self._now = time.monotonic()  # the loop's clock, read once per turn
        self._transfers: Dict[Tuple[Address, str], _Transfer] = {}  # in the order they began
        self._per_client: Dict[str, int] = {}

    def log(self, ip: str, message: str) -> None:
        self._log(ip, printable(message))

    def _socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        try:
            sock.bind((self.address, port))
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def active(self) -> int:
        """Transfers in flight."""
        return len(self._transfers)

    # --- the loop ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        poll = self._poll.poll
        listening = self.sock.fileno()
        self._poll.register(listening, select.EPOLLIN)
        by_fd = self._by_fd
        on_packet = self._on_packet
        clock = time.monotonic
        self._running = True
        tick = min(0.1, self.timeout / 4)
        next_check = clock() + tick
        try:
            while not self._stop.is_set():
                events = poll(tick)
                self._now = now = clock()
                for fd, _ in events:
                    transfer = by_fd.get(fd)
                    if transfer is not None:
                        on_packet(transfer)
                    elif fd == listening:
                        self._on_request()
                if now >= next_check:
                    next_check = now + tick
                    self._expire(now)
        finally:
            for transfer in list(self._transfers.values()):
                self._finish(transfer, "the server stopped")
            self._done.set()

    def _on_request(self) -> None:
        try:
            data, client = self.sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        try:
            self._dispatch(data, client)
        except Exception as exc:  # never let one packet stop the server
            self.log(client[0], f"TFTP error on a request: {exc!r}")

    def _reply(self, client: Address, packet: bytes) -> None:
        try:
            self.sock.sendto(packet, client)
        except OSError:
            pass  # the client's problem; it asked from somewhere it cannot be answered

    def _dispatch(self, data: bytes, client: Address) -> None:
        opcode = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
        if opcode == ERROR or opcode in (DATA, ACK, OACK):
            return  # not for the listening port; answering could start a packet storm
        if opcode == WRQ:
            self.log(client[0], "TFTP write refused (read-only)")
            self._reply(client, error_packet(ACCESS_VIOLATION, "read-only server"))
            return
        try:
            request = parse_request(data)
        except Refused as exc:
            self.log(client[0], f"TFTP bad request refused: {exc.message}")
            self._reply(client, error_packet(exc.code, exc.message))
            return
        key = (client, request.filename)
        if key in self._transfers:
            return  # the client repeated its request while the first one is answered
        ip = client[0]
        if self._per_client.get(ip, 0) >= self.max_per_client:
            self.log(ip, f"TFTP {request.filename} refused: {self.max_per_client} transfers "
                     "from this address already")  # fmt: skip
            self._reply(client, error_packet(NOT_DEFINED, "too many transfers from your address"))
            return
        if len(self._transfers) >= self.max_transfers and not self._make_room():
            self.log(ip, f"TFTP {request.filename} refused: busy")
            self._reply(client, error_packet(NOT_DEFINED, "server busy"))
            return
        self._start(request, client, key)

    def _make_room(self) -> bool:
        """Every slot is taken: give up the oldest transfer never acknowledged, if there is one."""
        for transfer in self._transfers.values():
            if not transfer.started:
                self._finish(transfer, "never acknowledged (its slot was needed)")
                return True
        return False

    def _start(self, request: Request, client: Address, key) -> None:
        sock = self._socket(0)
        try:
            sock.connect(client)  # datagrams from anyone else are dropped by the kernel
            sock.setblocking(False)
            try:
                content = self.virtual(request.filename, client) if self.virtual else None
                path = None if content is not None else confine(self.root, request.filename)
                netascii = request.mode == "netascii"
                if netascii:
                    request.options.pop("tsize", None)  # its size on the wire is what counts
                size = len(content) if content is not None else path.stat().st_size  # type: ignore[union-attr]
                options = negotiate(request.options, size, self.max_blksize, self.max_window)
                source = _open_source(path, content, netascii, options.blksize)
            except Refused as exc:
                self.log(client[0], f"TFTP {request.filename} refused: {exc.message}")
                sock.send(error_packet(exc.code, exc.message))
                sock.close()
                return
            except (OSError, ValueError) as exc:
                message = getattr(exc, "strerror", None) or str(exc)
                self.log(client[0], f"TFTP {request.filename} refused: {message}")
                sock.send(error_packet(NOT_FOUND, "cannot read the file"))
                sock.close()
                return
        except OSError:
            sock.close()
            return
        transfer = _Transfer(sock, client, key, request.filename, source, options, self.timeout)
        self._transfers[key] = transfer
        self._per_client[client[0]] = self._per_client.get(client[0], 0) + 1
        self._by_fd[sock.fileno()] = transfer
        self._poll.register(sock.fileno(), select.EPOLLIN)
        self._send(transfer, time.monotonic())

    # --- one transfer --------------------------------------------------------------------------
    def _send(self, t: _Transfer, now: float) -> None:
        """(Re)send what the client waits for: the OACK, or the window from t.base."""
        sock = t.sock
        try:
            if t.oack is not None and not t.started:
                sock.send(t.oack)
            else:
                source = t.source
                pack = _HEADER.pack
                n = t.base
                end = n + t.window
                while n < end:
                    sock.sendmsg([pack(DATA, n & 0xFFFF), source.block(n)])
                    if source.last is not None and n >= source.last:
                        break
                    n += 1
                else:
                    n -= 1
                t.top = n
        except (BlockingIOError, InterruptedError):
            pass  # a full socket buffer is a lost packet: the timer resends
        except OSError as exc:
            self._finish(t, exc.strerror or str(exc))
            return
        t.deadline = now + (t.timeout if t.started else self.timeout)

    def _on_packet(self, t: _Transfer) -> None:
        try:
            data = t.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionRefusedError:
            self._finish(t, "the client went away")
            return
        except OSError as exc:
            self._finish(t, exc.strerror or str(exc))
            return
        if len(data) < _ACK_SIZE:
            return
        opcode, number = _unpack(data)
        if opcode == ACK and t.lockstep and t.started:
            # The common turn of a running lockstep transfer (what PXE ROMs do): the ACK of the
            # block just sent, answered with the next one, in as few steps as Python allows.
            top = t.top
            if number == top & 0xFFFF:
                if top >= t.last:
                    self._finish(t, None)
                    return
                t.base = n = top + 1
                t.tries = 0
                offset = top * t.blksize
                try:
                    t.sock.send(_pack(DATA, n & 0xFFFF) + t.view[offset : offset + t.blksize])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    self._finish(t, exc.strerror or str(exc))
                    return
                t.top = n
                t.deadline = self._now + t.timeout
                return
        if opcode == ERROR:
            self._finish(t, f"client error {number}: {data[4:-1].decode('ascii', 'replace')}")
            return
        if opcode != ACK:
            return
        # Block numbers on the wire wrap at 65536; the window says which turn is meant.
        acked = t.base - 1 + ((number - (t.base - 1)) & 0xFFFF)
        if acked > t.top:
            return  # an old duplicate from an earlier turn: ignored
        now = self._now
        if not t.started:
            t.started = True  # from now on the client's own timeout (RFC 2349)
            t.tries = 0
            if t.oack is not None:
                self._send(t, now)  # ACK 0 of the OACK: the first window
                return
        if acked >= t.base:
            last = t.source.last
            if last is not None and acked >= last:
                self._finish(t, None)
                return
            t.base = acked + 1
            t.tries = 0
            t.source.forget(t.base)
            self._send(t, now)
        elif t.resent_for != t.base:
            # The client lost the window's start and said so: resend once per loss, not once
            # per duplicate (the sorcerer's apprentice of RFC 1123).
            t.resent_for = t.base
            self._send(t, now)

    def _expire(self, now: float) -> None:
        for t in [t for t in self._transfers.values() if t.deadline <= now]:
            t.tries += 1
            if t.started and t.tries > self.retries:
                self._finish(t, f"timed out at block {t.base}")
            elif not t.started and t.tries > self.first_retries:
                self._finish(t, "never acknowledged")
            else:
                self._send(t, now)

    def _finish(self, t: _Transfer, failure: Optional[str]) -> None:
        if self._transfers.pop(t.key, None) is None:
            return
        ip = t.client[0]
        left = self._per_client.get(ip, 1) - 1
        if left > 0:
            self._per_client[ip] = left
        else:
            self._per_client.pop(ip, None)
        fd = t.sock.fileno()
        if self._by_fd.pop(fd, None) is not None:
            try:
                self._poll.unregister(fd)
            except OSError:
                pass
        t.sock.close()
        size = t.source.size
        t.source.close()
        if failure is None:
            extra = f", {t.options_text}" if t.options_text else ""
            self.log(ip, f"TFTP {t.name} ({size} bytes{extra})")
        else:
            self.log(ip, f"TFTP {t.name} failed: {failure}")

    def shutdown(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._running:
            self._done.wait(timeout=5)
        else:
            for transfer in list(self._transfers.values()):
                self._finish(transfer, "the server stopped")
        self._poll.close()
        self.sock.close()


# --- a client, for the tests and the benchmark ----------------------------------------------------
def download(
    server: Address,
    filename: str,
    options: Optional[Dict[str, str]] = None,
    timeout: float = 2.0,
    retries: int = 5,
    sink: Optional[Callable[[bytes], None]] = None,
    bind: str = "",
) -> Tuple[bytes, Dict[str, str]]:
    """Read `filename` (octet mode) with the given options; (data, the server's OACK options).

    Raises Refused with the server's error code. With `sink`, the data goes there instead of
    being kept (big benchmark files).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 0))
    sock.settimeout(timeout)
    req = struct.pack("!H", RRQ) + filename.encode() + b"\0octet\0"
    for k, v in (options or {}).items():
        req += k.encode() + b"\0" + v.encode() + b"\0"
    chunks = []
    oack: Dict[str, str] = {}
    blksize, window = DEFAULT_BLKSIZE, 1
    expected = 1  # the next block wanted (absolute)
    since = 0  # blocks received since the last ACK
    gap = 0  # the block a gap ACK was sent for
    peer = None
    last_sent = req
    tries = 0
    try:
        sock.sendto(req, server)
        while True:
            try:
                data, addr = sock.recvfrom(65536 + 4)
            except socket.timeout:
                tries += 1
                if tries > retries:
                    raise Refused(NOT_DEFINED, "timed out") from None
                sock.sendto(last_sent, peer or server)
                continue
            if peer is None:
                peer = addr
            elif addr != peer:
                sock.sendto(error_packet(UNKNOWN_TID, "unknown transfer ID"), addr)
                continue
            opcode = struct.unpack("!H", data[:2])[0]
            if opcode == ERROR:
                code = struct.unpack("!H", data[2:4])[0]
                raise Refused(code, data[4:-1].decode("ascii", "replace"))
            if opcode == OACK and expected == 1:
                fields = data[2:-1].split(b"\0")
                oack = {k.decode().lower(): v.decode() for k, v in zip(fields[::2], fields[1::2])}
                blksize = int(oack.get("blksize", blksize))
                window = int(oack.get("windowsize", window))
                last_sent = struct.pack("!HH", ACK, 0)
                sock.sendto(last_sent, peer)
                continue
            if opcode != DATA:
                continue
            tries = 0
            number = struct.unpack("!H", data[2:4])[0]
            if number != expected & 0xFFFF:
                # A gap: ask once from the last good block (RFC 7440), then wait for it.
                if gap != expected:
                    gap = expected
                    since = 0
                    last_sent = struct.pack("!HH", ACK, (expected - 1) & 0xFFFF)
                    sock.sendto(last_sent, peer)
                continue
            gap = 0
            payload = data[4:]
            if sink is not None:
                sink(payload)
            else:
                chunks.append(payload)
            done = len(payload) < blksize
            since += 1
            if done or since >= window:
                since = 0
                last_sent = struct.pack("!HH", ACK, expected & 0xFFFF)
                sock.sendto(last_sent, peer)
            expected += 1
            if done:
                return b"".join(chunks), oack
    finally:
        sock.close()
