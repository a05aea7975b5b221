"""The HTTP side of pxe.serve: iPXE scripts and menus, kernel and initrd, the preseed, the callback.

- `/preseed/<mac>.cfg`: only for an armed MAC and only to the address that MAC's lease has (it
  carries the password hash); everyone else gets 403 or 404, and a log line.
- `/preseed/<mac>.cfg` is served once per arming (`claim`): a second fetch gets 410 and a log line.
- `/callback/<mac>/<token>`: the installer's late_command; disarms the MAC (once), only with the
  arming's token and from the address the preseed went to (`callback_refused`).
- `POST /progress/<mac>/<token>`: the installed host's host.provision reports (`progress`).
- `wheelhouse/...` and `images/...`: files outside the boot tree that `files` maps (the wheels,
  the image cache's tarballs).
- any path the menus generate (e.g. `ipxe/<mac>.ipxe`), else files under `installers/` in the
  boot tree, confined to it like TFTP.
"""

import socket
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional, Tuple
from urllib.parse import unquote, urlsplit

from pipeline.errors import BadInput
from pxe import tftp
from pxe.arming import normalise_mac

# The installer; shim, GRUB and its modules for UEFI HTTP Boot (pxe/menus.py: EFI_*).
STATIC_PREFIXES = ("installers/", "bootx64.efi", "grubx64.efi", "grub/x86_64-efi/")


@dataclass
class HttpApp:
    """What the handler needs, as plain callables so tests can give stand-ins."""

    root: Path
    armed: Callable[[str], bool]
    disarm: Callable[[str], bool]  # True when it was armed
    preseed: Callable[[str], str]  # mac -> preseed text
    virtual: Callable[[str, str], Optional[bytes]]  # (path, client ip) -> generated content
    ip_of: Callable[[str], Optional[str]]  # mac -> the address its lease has
    mac_of: Callable[[str], str]  # client ip -> mac (or '?')
    log: Callable[[str, str], None]  # (mac, message)
    # (mac, client) -> None: serve the preseed; else why not (410: served once already)
    claim: Optional[Callable[[str, str], Optional[str]]] = None
    # (mac, token, client) -> why the callback is refused, or None
    callback_refused: Optional[Callable[[str, str, str], Optional[str]]] = None
    # (mac, token, client, body) -> (HTTP code, message)
    progress: Optional[Callable[[str, str, str, bytes], Tuple[int, str]]] = None
    files: Optional[Callable[[str], Optional[Path]]] = None  # path -> a file outside root


def _mac_from(name: str, suffix: str = "") -> Optional[str]:
    if suffix:
        if not name.endswith(suffix):
            return None
        name = name[: -len(suffix)]
    try:
        return normalise_mac(name)
    except BadInput:
        return None


class Handler(BaseHTTPRequestHandler):
    server: "HttpServer"
    protocol_version = "HTTP/1.1"
    server_version = "xenlab-pxe"
    sys_version = ""
    timeout = 120  # seconds: a client that stops talking does not hold its thread forever

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # the app logs one line per step instead

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_POST(self) -> None:
        # The callback may come as a POST (wget --post-data); only the callback accepts one.
        length = self.headers.get("Content-Length")
        data = b""
        if length and length.isdigit() and int(length) <= 65536:
            data = self.rfile.read(int(length))
        path = self._path()
        if path is not None and path.startswith("callback/"):
            self._callback(path, body=True)
        elif path is not None and path.startswith("progress/") and self.app.progress:
            self._progress(path, data)
        else:
            self._reply(405, b"method not allowed\n", body=True)

    def _path(self) -> Optional[str]:
        try:
            return unquote(urlsplit(self.path).path, errors="strict").lstrip("/")
        except (UnicodeDecodeError, ValueError):
            return None

    def _reply(self, code: int, data: bytes, body: bool, kind: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    @property
    def app(self) -> HttpApp:
        return self.server.app

    def _serve(self, body: bool) -> None:
        app = self.app
        client = self.client_address[0]
        path = self._path()
        if path is None:
            app.log(app.mac_of(client), "HTTP refused a bad request path")
            self._reply(400, b"bad request\n", body)
            return
        if path.startswith("preseed/"):
            self._preseed(path, body)
            return
        if path.startswith("callback/"):
            self._callback(path, body)
            return
        extra = app.files(path) if app.files is not None else None
        if extra is not None:
            self._file(path, extra, body)
            return
        content = app.virtual(path, client)
        if content is not None:
            app.log(app.mac_of(client), f"HTTP {path}")
            # an index page (the wheelhouse's, for pip --find-links) is HTML; the rest plain text
            page = path.endswith(("/", ".html"))
            self._reply(200, content, body, "text/html; charset=utf-8" if page else "text/plain")
            return
        if not path.startswith(STATIC_PREFIXES):
            app.log(app.mac_of(client), f"HTTP {path} refused: not served")
            self._reply(404, b"not found\n", body)
            return
        try:
            file = tftp.confine(app.root, path)
        except tftp.Refused as exc:
            code = 404 if exc.code == tftp.NOT_FOUND else 403
            app.log(app.mac_of(client), f"HTTP {path} refused: {exc.message}")
            self._reply(code, f"{exc.message}\n".encode(), body)
            return
        self._file(path, file, body)

    def _file(self, path: str, file: Path, body: bool) -> None:
        app = self.app
        mac = app.mac_of(self.client_address[0])
        try:
            with open(file, "rb") as fh:
                size = file.stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if body:
                    # Straight from the page cache to the socket (sendfile), headers first.
                    self.wfile.flush()
                    self.connection.sendfile(fh)
        except OSError as exc:
            app.log(mac, f"HTTP {path} failed: {exc.strerror or exc}")
            self.close_connection = True
            return
        app.log(mac, f"HTTP {path} ({size} bytes)")

    def _preseed(self, path: str, body: bool) -> None:
        app = self.app
        client = self.client_address[0]
        mac = _mac_from(path[len("preseed/") :], ".cfg")
        if mac is None:
            app.log(app.mac_of(client), f"HTTP {path} refused: no MAC in the preseed path")
            self._reply(404, b"not found\n", body)
            return
        if not app.armed(mac):
            app.log(mac, f"preseed refused to {client}: not armed")
            self._reply(404, b"not armed\n", body)
            return
        lease = app.ip_of(mac)
        if lease != client:
            app.log(mac, f"preseed refused to {client}: its lease is {lease or 'unknown'}")
            self._reply(403, b"not your preseed\n", body)
            return
        try:
            text = app.preseed(mac).encode()
        except Exception as exc:  # the config changed under the server: say so, keep serving
            app.log(mac, f"preseed for {client} failed: {exc}")
            self._reply(500, b"cannot make the preseed\n", body)
            return
        refused = app.claim(mac, client) if app.claim is not None and body else None
        if refused is not None:
            app.log(mac, f"WARNING: preseed refused to {client} (410): {refused}")
            self._reply(410, b"this arming's preseed was served already\n", body)
            return
        app.log(mac, f"HTTP preseed/{mac}.cfg sent to {client} (preseed)")
        self._reply(200, text, body)

    def _callback(self, path: str, body: bool) -> None:
        app = self.app
        mac_part, _, token = path[len("callback/") :].strip("/").partition("/")
        mac = _mac_from(mac_part)
        if mac is None:
            app.log(app.mac_of(self.client_address[0]), "HTTP callback refused: no MAC")
            self._reply(404, b"not found\n", body)
            return
        refused = app.callback_refused
        why = refused(mac, token, self.client_address[0]) if refused is not None else None
        if why is not None:
            app.log(mac, f"WARNING: callback from {self.client_address[0]} refused: {why}")
            self._reply(403, b"refused\n", body)
            return
        if app.disarm(mac):
            app.log(mac, f"callback from {self.client_address[0]}: installed, disarmed")
            self._reply(200, b"disarmed\n", body)
        else:
            app.log(mac, f"callback from {self.client_address[0]}: was not armed")
            self._reply(200, b"not armed\n", body)

    def _progress(self, path: str, data: bytes) -> None:
        app = self.app
        client = self.client_address[0]
        mac_part, _, token = path[len("progress/") :].strip("/").partition("/")
        mac = _mac_from(mac_part)
        if mac is None or app.progress is None:
            app.log(app.mac_of(client), "HTTP progress refused: no MAC")
            self._reply(404, b"not found\n", body=True)
            return
        code, message = app.progress(mac, token, client, data)
        self._reply(code, (message + "\n").encode(), body=True)


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], app: HttpApp, interface: Optional[str] = None):
        self.app = app
        self.interface = interface
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        if self.interface:
            self.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode()
            )
        # Not HTTPServer.server_bind: its getfqdn() can hang on a segment without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-file is not the server's problem; say so in one line.
        self.app.log(self.app.mac_of(client_address[0]), "HTTP connection dropped")


def start(server: HttpServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return thread
