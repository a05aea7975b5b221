"""A read-only TFTP server confined to one directory: RFC 1350, options (RFC 2347: blksize 2348,
tsize and timeout 2349) and windowsize (RFC 7440).

Each read request gets its own thread and its own UDP port (the transfer ID of RFC 1350), so a
slow or broken client holds up no one else. Names are looked up under the root only: `..`
components, and symlinks that lead out of the root, are refused; an absolute name is taken as
relative to the root, as tftpd's `--secure` does. Bad packets get an error packet or silence,
never an exception out of the server.
"""

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Set, Tuple

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


class _Source:
    """The bytes of one transfer: a file read by offset (retransmits re-read) or bytes in memory."""

    def __init__(self, path: Optional[Path] = None, data: Optional[bytes] = None):
        self.fd = os.open(str(path), os.O_RDONLY) if path is not None else None
        self.data = data
        self.size = os.fstat(self.fd).st_size if self.fd is not None else len(data or b"")

    def read(self, offset: int, length: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, length, offset)
        return (self.data or b"")[offset : offset + length]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
    ):
        self.root = Path(root)
        self.address = address
        self.interface = interface
        self.virtual = virtual
        self.log = log
        self.timeout = timeout
        self.retries = retries
        self.max_blksize = max_blksize
        self.max_window = max_window
        self.max_transfers = max_transfers
        self.sock = self._socket(port)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: Set[Tuple[Address, str]] = set()
        self._threads: Set[threading.Thread] = set()

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

    # --- the listening socket ----------------------------------------------------------------
    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data, client = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                self._dispatch(data, client)
            except Exception as exc:  # never let one packet stop the server
                self.log(client[0], f"TFTP error on a request: {exc!r}")

    def _dispatch(self, data: bytes, client: Address) -> None:
        opcode = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
        if opcode == ERROR or opcode in (DATA, ACK, OACK):
            return  # not for the listening port; answering could start a packet storm
        if opcode == WRQ:
            self.log(client[0], "TFTP write refused (read-only)")
            self.sock.sendto(error_packet(ACCESS_VIOLATION, "read-only server"), client)
            return
        try:
            request = parse_request(data)
        except Refused as exc:
            self.log(client[0], f"TFTP bad request refused: {exc.message}")
            self.sock.sendto(error_packet(exc.code, exc.message), client)
            return
        key = (client, request.filename)
        with self._lock:
            if key in self._active:
                return  # the client repeated its request while the first one is answered
            if len(self._active) >= self.max_transfers:
                self.sock.sendto(error_packet(NOT_DEFINED, "server busy"), client)
                self.log(client[0], f"TFTP {request.filename} refused: busy")
                return
            self._active.add(key)
        thread = threading.Thread(
            target=self._transfer, args=(request, client, key), name="tftp", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()

    # --- one transfer ------------------------------------------------------------------------
    def _open(self, request: Request, client: Address) -> _Source:
        name = request.filename
        if self.virtual is not None:
            content = self.virtual(name, client)
            if content is not None:
                return _Source(data=content)
        return _Source(path=confine(self.root, name))

    def _transfer(self, request: Request, client: Address, key) -> None:
        sock = None
        source = None
        try:
            sock = self._socket(0)
            sock.connect(client)  # datagrams from anyone else are dropped by the kernel
            try:
                source = self._open(request, client)
                if request.mode == "netascii":
                    raw = source.read(0, source.size)
                    source.close()
                    source = _Source(data=to_netascii(raw))
                    request.options.pop("tsize", None)  # its size on the wire is what counts
                options = negotiate(request.options, source.size, self.max_blksize, self.max_window)
            except Refused as exc:
                self.log(client[0], f"TFTP {request.filename} refused: {exc.message}")
                sock.send(error_packet(exc.code, exc.message))
                return
            except OSError as exc:
                self.log(client[0], f"TFTP {request.filename} refused: {exc.strerror or exc}")
                sock.send(error_packet(NOT_FOUND, "cannot read the file"))
                return
            outcome = _Sender(self, sock, source, options).run()
            if outcome is None:
                extra = " ".join(f"{k}={v}" for k, v in options.acknowledged.items())
                self.log(
                    client[0],
                    f"TFTP {request.filename} ({source.size} bytes{', ' + extra if extra else ''})",
                )
            else:
                self.log(client[0], f"TFTP {request.filename} failed: {outcome}")
        except Exception as exc:
            self.log(client[0], f"TFTP {request.filename} failed: {exc!r}")
        finally:
            if source is not None:
                source.close()
            if sock is not None:
                sock.close()
            with self._lock:
                self._active.discard(key)
                self._threads.discard(threading.current_thread())

    def shutdown(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=2)


class _Sender:
    """The data phase: windows of blocks, acknowledged by the last block of each (RFC 7440)."""

    def __init__(self, server: TftpServer, sock: socket.socket, source: _Source, opts: Negotiated):
        self.server = server
        self.sock = sock
        self.source = source
        self.blksize = opts.blksize
        self.window = opts.windowsize
        self.timeout = opts.timeout or server.timeout
        self.oack = opts.acknowledged
        # Blocks are numbered from 1; the last one is shorter than blksize (maybe empty).
        self.last = source.size // self.blksize + 1

    def _block(self, n: int) -> bytes:
        data = self.source.read((n - 1) * self.blksize, self.blksize)
        return struct.pack("!HH", DATA, n & 0xFFFF) + data

    def _wait_ack(self, low: int, high: int) -> Optional[int]:
        """The absolute block number acknowledged within [low, high]; None on timeout.

        Block numbers on the wire wrap at 65536; the window tells which turn is meant.
        Raises _Abort when the client sends an error.
        """
        deadline = time.monotonic() + self.timeout  # stray packets do not extend it
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except ConnectionRefusedError:
                raise _Abort("the client went away") from None
            if len(data) < 4:
                continue
            opcode, number = struct.unpack("!HH", data[:4])
            if opcode == ERROR:
                raise _Abort(f"client error {number}: {data[4:-1].decode('ascii', 'replace')}")
            if opcode != ACK:
                continue
            for n in range(low, high + 1):
                if n & 0xFFFF == number:
                    return n
            # an old duplicate: keep waiting

    def run(self) -> Optional[str]:
        """None when the file went through, else why not."""
        try:
            if self.oack:
                if not self._handshake():
                    return "no acknowledgement of the options"
            base = 1  # the first block not yet acknowledged
            tries = 0
            send = True
            resent_for = 0  # the block a duplicate ACK already had resent
            while base <= self.last:
                top = min(base + self.window - 1, self.last)
                if send:
                    for n in range(base, top + 1):
                        self.sock.send(self._block(n))
                acked = self._wait_ack(base - 1, top)
                if acked is None:
                    tries += 1
                    if tries > self.server.retries:
                        return f"timed out at block {base}"
                    send = True
                    continue
                if acked < base:
                    # The client lost the window's start and said so: resend once per loss,
                    # not once per duplicate (the sorcerer's apprentice of RFC 1123).
                    send = resent_for != base
                    resent_for = base
                    continue
                tries = 0
                send = True
                base = acked + 1
            return None
        except _Abort as exc:
            return str(exc)
        except OSError as exc:
            return exc.strerror or str(exc)

    def _handshake(self) -> bool:
        packet = oack_packet(self.oack)
        for _ in range(self.server.retries + 1):
            self.sock.send(packet)
            if self._wait_ack(0, 0) == 0:
                return True
        return False


class _Abort(Exception):
    pass


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
