"""pxe/http.py on loopback: preseed only to the armed MAC's lease, the callback disarms once,
installer files confined to the tree, generated menus first."""

import http.client
import os
import socket
import threading
import time

import pytest

from pxe import http as pxe_http

ARMED = "52:54:00:77:00:10"
OTHER = "52:54:00:77:00:11"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "installers" / "debian-12").mkdir(parents=True)
    (root / "installers" / "debian-12" / "linux").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (root / "bios").mkdir()
    (root / "bios" / "pxelinux.0").write_bytes(b"loader")
    (tmp_path / "secret").write_text("hash")
    (root / "installers" / "escape").symlink_to(tmp_path / "secret")
    return root


@pytest.fixture
def server(tree):
    armed = {ARMED}
    leases = {ARMED: "127.0.0.1", OTHER: "127.0.0.1"}
    log = []

    def disarm(mac):
        if mac in armed:
            armed.discard(mac)
            return True
        return False

    app = pxe_http.HttpApp(
        root=tree,
        armed=lambda mac: mac in armed,
        disarm=disarm,
        preseed=lambda mac: f"d-i preseed/late_command string wget callback/{mac}\n",
        virtual=lambda path, ip: b"#!ipxe\nexit\n" if path == f"ipxe/{OTHER}.ipxe" else None,
        ip_of=leases.get,
        mac_of=lambda ip: OTHER,
        log=lambda mac, msg: log.append((mac, msg)),
    )
    srv = pxe_http.HttpServer(("127.0.0.1", 0), app, interface="lo")
    thread = pxe_http.start(srv)
    srv.state = {"armed": armed, "leases": leases, "log": log}
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def get(server, path, method="GET", source="127.0.0.1"):
    conn = http.client.HTTPConnection(
        "127.0.0.1", server.server_address[1], timeout=10, source_address=(source, 0)
    )
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_preseed_goes_to_the_armed_mac_at_its_lease(server):
    status, body = get(server, f"/preseed/{ARMED}.cfg")
    assert status == 200 and f"callback/{ARMED}" in body.decode()
    assert (ARMED, f"HTTP preseed/{ARMED}.cfg sent to 127.0.0.1 (preseed)") in server.state["log"]


def test_preseed_accepts_other_spellings_of_the_mac(server):
    assert get(server, "/preseed/52-54-00-77-00-10.cfg")[0] == 200


def test_preseed_refused_to_another_address(server):
    server.state["leases"][ARMED] = "127.0.0.2"
    status, body = get(server, f"/preseed/{ARMED}.cfg")
    assert status == 403 and b"d-i" not in body
    assert any("preseed refused to 127.0.0.1" in m for _, m in server.state["log"])


def test_preseed_refused_without_a_known_lease(server):
    del server.state["leases"][ARMED]
    assert get(server, f"/preseed/{ARMED}.cfg")[0] == 403


def test_preseed_refused_to_an_unarmed_mac(server):
    status, body = get(server, f"/preseed/{OTHER}.cfg")
    assert status == 404 and b"d-i" not in body
    assert (OTHER, "preseed refused to 127.0.0.1: not armed") in server.state["log"]


@pytest.mark.parametrize("path", ["/preseed/nonsense.cfg", "/preseed/", "/preseed/../x"])
def test_preseed_without_a_mac_is_not_found(server, path):
    assert get(server, path)[0] == 404


def test_callback_disarms_once(server):
    assert get(server, f"/callback/{ARMED}") == (200, b"disarmed\n")
    assert ARMED not in server.state["armed"]
    assert get(server, f"/callback/{ARMED}", method="POST") == (200, b"not armed\n")
    assert get(server, f"/preseed/{ARMED}.cfg")[0] == 404
    lines = [m for mac, m in server.state["log"] if mac == ARMED]
    assert any(m.startswith("callback") and "disarmed" in m for m in lines)


def test_installer_files_are_served_whole(server, tree):
    status, body = get(server, "/installers/debian-12/linux")
    assert status == 200 and body == (tree / "installers" / "debian-12" / "linux").read_bytes()
    # logged once the last byte is out, so maybe just after the client has it all
    deadline = time.monotonic() + 5
    while not any(
        m.startswith("HTTP installers/debian-12/linux (") for _, m in server.state["log"]
    ):
        assert time.monotonic() < deadline, server.state["log"]
        time.sleep(0.05)
    status, body = get(server, "/installers/debian-12/linux", method="HEAD")
    assert status == 200 and body == b""


@pytest.mark.parametrize(
    "path, code",
    [
        ("/installers/../../secret", 403),
        ("/installers/%2e%2e/%2e%2e/secret", 403),
        ("/installers/escape", 403),
        ("/installers/debian-12/missing", 404),
        ("/installers/debian-12", 404),
        ("/bios/pxelinux.0", 404),  # loaders are TFTP's
        ("/etc/passwd", 404),
        ("/installers/%ff", 400),
    ],
)
def test_paths_outside_the_installers_are_refused(server, path, code):
    status, body = get(server, path)
    assert status == code and b"hash" not in body


def test_generated_ipxe_script_comes_first(server):
    assert get(server, f"/ipxe/{OTHER}.ipxe") == (200, b"#!ipxe\nexit\n")
    assert (OTHER, f"HTTP ipxe/{OTHER}.ipxe") in server.state["log"]


def test_post_is_only_for_the_callback(server):
    assert get(server, "/installers/debian-12/linux", method="POST")[0] == 405


def test_garbage_request_does_not_stop_the_server(server):
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as sock:
        sock.sendall(b"\x00\xff GARBAGE\r\n\r\n")
        sock.recv(1000)
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as sock:
        sock.sendall(b"GET /installers/debian-12/linux HTTP/1.1\r\n")  # then hang up mid-request
    assert get(server, f"/ipxe/{OTHER}.ipxe")[0] == 200


def test_many_clients_at_once(server, tree):
    want = (tree / "installers" / "debian-12" / "linux").read_bytes()
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(get(server, "/installers/debian-12/linux")))
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [(200, want)] * 10


# --- the trust hooks pxe.serve gives the app (pxe/serve.py wires them to arming and progress) -----
@pytest.fixture
def guarded(tree, tmp_path):
    """An app with once-per-arming preseeds, token-checked callbacks and progress, extra files."""
    claims, reports, log = [], [], []
    token = "T" * 43
    extra = tmp_path / "wheel.whl"
    extra.write_bytes(b"PK" + bytes(100))

    def claim(mac, client):
        claims.append(client)
        return None if len(claims) == 1 else f"served to {claims[0]}"

    def refused(mac, given, client):
        return None if given == token and client == "127.0.0.1" else "wrong or missing token"

    def progress(mac, given, client, body):
        if given != token:
            return 403, "refused"
        reports.append(body)
        return 200, "ok"

    app = pxe_http.HttpApp(
        root=tree,
        armed=lambda mac: mac == ARMED,
        disarm=lambda mac: True,
        preseed=lambda mac: "d-i x\n",
        virtual=lambda path, ip: None,
        ip_of=lambda mac: "127.0.0.1",
        mac_of=lambda ip: "?",
        log=lambda mac, msg: log.append((mac, msg)),
        claim=claim,
        callback_refused=refused,
        progress=progress,
        files=lambda path: extra if path == "wheelhouse/wheel.whl" else None,
    )
    srv = pxe_http.HttpServer(("127.0.0.1", 0), app, interface="lo")
    thread = pxe_http.start(srv)
    srv.state = {"log": log, "reports": reports, "token": token}
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def test_the_preseed_is_served_once_then_410_with_a_warning(guarded):
    assert get(guarded, f"/preseed/{ARMED}.cfg")[0] == 200
    assert get(guarded, f"/preseed/{ARMED}.cfg", method="HEAD")[0] == 200  # a HEAD claims nothing
    assert get(guarded, f"/preseed/{ARMED}.cfg")[0] == 410
    assert any(m.startswith("WARNING: preseed refused") for _, m in guarded.state["log"])


def test_the_callback_needs_the_token(guarded):
    token = guarded.state["token"]
    assert get(guarded, f"/callback/{ARMED}")[0] == 403
    assert get(guarded, f"/callback/{ARMED}/{'x' * 43}")[0] == 403
    assert get(guarded, f"/callback/{ARMED}/{token}") == (200, b"disarmed\n")
    assert not [m for _, m in guarded.state["log"] if token in m]  # the token is never logged


def test_progress_is_a_post_with_the_token(guarded):
    token = guarded.state["token"]
    conn = http.client.HTTPConnection("127.0.0.1", guarded.server_address[1], timeout=10)
    try:
        conn.request("POST", f"/progress/{ARMED}/{token}", body=b'{"state": "done"}')
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"ok\n")
        conn.request("POST", f"/progress/{ARMED}/nope", body=b"{}")
        resp = conn.getresponse()
        assert resp.status == 403 and resp.read()
    finally:
        conn.close()
    assert guarded.state["reports"] == [b'{"state": "done"}']
    assert get(guarded, f"/progress/{ARMED}/{token}")[0] == 404  # GET: not a route


def test_extra_files_come_from_the_apps_mapping(guarded):
    status, data = get(guarded, "/wheelhouse/wheel.whl")
    assert status == 200 and data.startswith(b"PK")
    assert get(guarded, "/wheelhouse/other.whl")[0] == 404
