"""pxe/tftp.py over real UDP on loopback: options, windowsize, confinement, bad packets,
exhaustion (per-client limit, fast give-up of unacknowledged transfers), netascii streamed,
log lines that a client cannot forge.

Each test starts a TftpServer on 127.0.0.1 (a free port) serving a small tree in tmp_path,
with a secret file beside the tree that must never come out. Clients that play other machines
send from other loopback addresses (127.0.0.0/8 is all local).
"""

import os
import socket
import struct
import threading
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxe import tftp


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "bios" / "pxelinux.cfg").mkdir(parents=True)
    (root / "bios" / "pxelinux.0").write_bytes(os.urandom(42_000))
    (root / "small.txt").write_bytes(b"line one\nline two\r\n")
    (root / "exact").write_bytes(b"x" * 1024)  # a multiple of 512: ends with an empty block
    (root / "empty").write_bytes(b"")
    (tmp_path / "secret").write_text("password hash\n")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "inside").symlink_to(root / "small.txt")
    (root / "dirlink").symlink_to(tmp_path)
    return root


@pytest.fixture
def server(tree):
    log = []
    virtual = {"bios/pxelinux.cfg/default": b"DEFAULT local\n"}
    srv = tftp.TftpServer(
        tree,
        "127.0.0.1",
        0,
        virtual=lambda name, client: virtual.get(name.lstrip("/")),
        log=lambda ip, msg: log.append(msg),
        timeout=0.3,
        retries=3,
    )
    srv.log_lines = log
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def fetch(server, name, bind="", **options):
    return tftp.download(
        ("127.0.0.1", server.port),
        name,
        {k: str(v) for k, v in options.items()},
        timeout=2,
        bind=bind,
    )


def refused(server, name, **options) -> int:
    with pytest.raises(tftp.Refused) as err:
        fetch(server, name, **options)
    return err.value.code


def wait_logged(server, text: str) -> None:
    """A transfer is logged once the server has the last ACK: maybe just after the client is done."""
    deadline = time.monotonic() + 5
    while not any(text in line for line in server.log_lines):
        assert time.monotonic() < deadline, server.log_lines
        time.sleep(0.02)


def raw_socket(address: str = "127.0.0.1"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(3)
    return sock


def rrq(name: str, mode: str = "octet", **options) -> bytes:
    body = name.encode() + b"\0" + mode.encode() + b"\0"
    for k, v in options.items():
        body += k.encode() + b"\0" + str(v).encode() + b"\0"
    return struct.pack("!H", tftp.RRQ) + body


# --- RFC 1350 and the options ----------------------------------------------------------------
def test_plain_read_without_options(server, tree):
    data, oack = fetch(server, "bios/pxelinux.0")
    assert data == (tree / "bios" / "pxelinux.0").read_bytes()
    assert oack == {}


@pytest.mark.parametrize("name", ["exact", "empty"])
def test_file_ending_on_a_block_boundary_gets_an_empty_last_block(server, tree, name):
    data, _ = fetch(server, name)
    assert data == (tree / name).read_bytes()


def test_blksize_and_tsize_are_acknowledged(server, tree):
    data, oack = fetch(server, "bios/pxelinux.0", blksize=1468, tsize=0, timeout=3)
    assert oack == {"blksize": "1468", "tsize": "42000", "timeout": "3"}
    assert data == (tree / "bios" / "pxelinux.0").read_bytes()


def test_windowsize_is_acknowledged_and_used(server, tree):
    data, oack = fetch(server, "bios/pxelinux.0", blksize=1024, windowsize=8)
    assert oack["windowsize"] == "8" and oack["blksize"] == "1024"
    assert data == (tree / "bios" / "pxelinux.0").read_bytes()


def test_block_numbers_wrap_past_65535(server, tree):
    # blksize 8: 70 000 blocks, so block numbers roll over from 65535 to 0 on the wire.
    payload = os.urandom(8 * 70_000 + 3)
    (tree / "big").write_bytes(payload)
    data, oack = fetch(server, "big", blksize=8, windowsize=32)
    assert oack["blksize"] == "8"
    assert data == payload


def test_oversized_blksize_and_windowsize_are_lowered(server):
    _, oack = fetch(server, "small.txt", blksize=99999, windowsize=5000)
    assert oack["blksize"] == str(tftp.MAX_BLKSIZE)
    assert oack["windowsize"] == "64"


def test_unknown_options_are_ignored(server):
    data, oack = fetch(server, "small.txt", multicast="", rollover=0)
    assert data == b"line one\nline two\r\n"
    assert oack == {}


@pytest.mark.parametrize(
    "options",
    [
        {"blksize": 4},
        {"blksize": "abc"},
        {"blksize": "9" * 30},
        {"windowsize": 0},
        {"timeout": 0},
        {"timeout": 256},
        {"tsize": "-1"},
    ],
)
def test_bad_option_values_are_refused(server, options):
    assert refused(server, "small.txt", **options) == tftp.OPTION_REFUSED


def test_oversized_request_is_refused_and_server_keeps_serving(server):
    sock = raw_socket()
    sock.sendto(rrq("small.txt", blksize=1468, x="y" * 600), ("127.0.0.1", server.port))
    data = sock.recv(1000)
    assert struct.unpack("!HH", data[:4]) == (tftp.ERROR, tftp.OPTION_REFUSED)
    assert fetch(server, "small.txt")[0] == b"line one\nline two\r\n"


def test_repeated_option_is_refused(server):
    sock = raw_socket()
    sock.sendto(
        rrq("small.txt") + b"blksize\x00512\x00BLKSIZE\x001024\x00", ("127.0.0.1", server.port)
    )
    assert struct.unpack("!HH", sock.recv(1000)[:4]) == (tftp.ERROR, tftp.OPTION_REFUSED)


def test_netascii_converts_line_ends(server):
    sock = raw_socket()
    sock.sendto(rrq("small.txt", "netascii"), ("127.0.0.1", server.port))
    data = sock.recv(1000)
    assert data[:4] == struct.pack("!HH", tftp.DATA, 1)
    assert data[4:] == b"line one\r\nline two\r\0\r\n"


# --- confinement --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["../secret", "bios/../../secret", "escape", "dirlink/secret", "bios/../../../../etc/passwd"],
)
def test_names_leading_out_of_the_tree_are_refused(server, name):
    assert refused(server, name) == tftp.ACCESS_VIOLATION
    wait_logged(server, "refused")


@pytest.mark.parametrize("name", ["/etc/passwd", "nothing", "bios", "/", "bios/pxelinux.cfg"])
def test_absolute_names_stay_in_the_tree_and_missing_files_are_not_found(server, name):
    assert refused(server, name) == tftp.NOT_FOUND


def test_symlink_inside_the_tree_and_absolute_name_in_it_are_served(server, tree):
    assert fetch(server, "inside")[0] == (tree / "small.txt").read_bytes()
    assert fetch(server, "/bios/pxelinux.0")[0] == (tree / "bios" / "pxelinux.0").read_bytes()


def test_generated_menu_comes_before_the_tree(server):
    data, _ = fetch(server, "bios/pxelinux.cfg/default")
    assert data == b"DEFAULT local\n"
    wait_logged(server, "TFTP bios/pxelinux.cfg/default")


def test_confine_directly(tree, tmp_path):
    assert tftp.confine(tree, "./bios//pxelinux.0") == tree / "bios" / "pxelinux.0"
    with pytest.raises(tftp.Refused):
        tftp.confine(tree, "bios/\0x")


# --- bad packets and concurrency ---------------------------------------------------------------
def test_write_requests_and_garbage_get_errors_or_silence(server):
    sock = raw_socket()
    address = ("127.0.0.1", server.port)
    sock.sendto(struct.pack("!H", tftp.WRQ) + b"x\0octet\0", address)
    assert struct.unpack("!HH", sock.recv(1000)[:4]) == (tftp.ERROR, tftp.ACCESS_VIOLATION)
    for junk in [b"", b"\x00", b"\x00\x01", b"\x00\x01name", b"\x00\x01\xff\xfe\x00octet\x00",
                 b"\x00\x01x\x00mail\x00", b"\x00\x09abc", b"\x00\x01\x00octet\x00"]:  # fmt: skip
        sock.sendto(junk, address)
    sock.sendto(struct.pack("!HH", tftp.ERROR, 0) + b"x\0", address)  # never answered
    sock.sendto(struct.pack("!HH", tftp.ACK, 1), address)
    # Whatever came back was an error packet; the server still serves.
    sock.settimeout(0.5)
    try:
        while True:
            assert sock.recv(1000)[:2] == struct.pack("!H", tftp.ERROR)
    except socket.timeout:
        pass
    assert fetch(server, "small.txt")[0] == b"line one\nline two\r\n"


def test_each_transfer_has_its_own_port_and_a_stalled_client_blocks_no_one(server, tree):
    stalled = raw_socket()
    stalled.sendto(rrq("bios/pxelinux.0"), ("127.0.0.1", server.port))
    first, tid = stalled.recvfrom(1000)
    assert first[:4] == struct.pack("!HH", tftp.DATA, 1)
    assert tid[1] != server.port
    # While that client never acknowledges, others are served from other ports.
    data, _ = fetch(server, "bios/pxelinux.0", blksize=1468)
    assert data == (tree / "bios" / "pxelinux.0").read_bytes()
    # And the stalled one gets its block again on timeout (retransmission).
    again, tid2 = stalled.recvfrom(1000)
    assert again == first and tid2 == tid


def test_packets_from_another_port_do_not_disturb_a_transfer(server):
    sock = raw_socket()
    sock.sendto(rrq("bios/pxelinux.0"), ("127.0.0.1", server.port))
    _, tid = sock.recvfrom(1000)
    intruder = raw_socket()
    intruder.sendto(struct.pack("!HH", tftp.ERROR, 0) + b"stop\0", tid)
    intruder.sendto(struct.pack("!HH", tftp.ACK, 1), tid)
    sock.sendto(struct.pack("!HH", tftp.ACK, 1), tid)
    nxt, _ = sock.recvfrom(1000)
    assert nxt[:4] == struct.pack("!HH", tftp.DATA, 2)


def test_window_restarts_after_the_last_good_block(server, tree):
    """RFC 7440: an ACK for a block inside the window makes the server resend from the next."""
    sock = raw_socket()
    sock.sendto(rrq("bios/pxelinux.0", blksize=512, windowsize=4), ("127.0.0.1", server.port))
    oack, tid = sock.recvfrom(1000)
    assert oack[:2] == struct.pack("!H", tftp.OACK)
    sock.sendto(struct.pack("!HH", tftp.ACK, 0), tid)
    got = [struct.unpack("!H", sock.recv(1000)[2:4])[0] for _ in range(4)]
    assert got == [1, 2, 3, 4]
    sock.sendto(struct.pack("!HH", tftp.ACK, 2), tid)  # "3 was lost"
    got = [struct.unpack("!H", sock.recv(1000)[2:4])[0] for _ in range(4)]
    assert got == [3, 4, 5, 6]


def test_client_error_ends_the_transfer(server):
    sock = raw_socket()
    sock.sendto(rrq("bios/pxelinux.0", blksize=1024), ("127.0.0.1", server.port))
    _, tid = sock.recvfrom(1000)
    sock.sendto(struct.pack("!HH", tftp.ERROR, tftp.OPTION_REFUSED) + b"no\0", tid)
    wait_logged(server, "bios/pxelinux.0 failed: client error 8")


def test_twenty_clients_at_once(server, tree):
    want = (tree / "bios" / "pxelinux.0").read_bytes()
    results = []

    def one(i):
        got = fetch(
            server, "bios/pxelinux.0", f"127.0.1.{i + 1}", blksize=1468, windowsize=1 + i % 8
        )
        results.append(got[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 20 and all(r == want for r in results)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_parse_request_only_ever_refuses(data):
    try:
        request = tftp.parse_request(data)
    except tftp.Refused as exc:
        assert exc.code in (tftp.ILLEGAL_OP, tftp.OPTION_REFUSED)
    else:
        assert request.mode in ("octet", "netascii") and request.filename


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["blksize", "windowsize", "timeout", "tsize", "x"]), st.text(max_size=12)
    )
)
def test_negotiate_only_ever_refuses(options):
    try:
        result = tftp.negotiate(options, 1000, tftp.MAX_BLKSIZE, 64)
    except tftp.Refused as exc:
        assert exc.code == tftp.OPTION_REFUSED
    else:
        assert 8 <= result.blksize <= tftp.MAX_BLKSIZE and 1 <= result.windowsize <= 64


# --- exhaustion (issue 14): slots, per-client limit, timeouts -----------------------------------
def unacknowledged(server, count: int, addresses) -> list:
    """`count` read requests spread over `addresses`, each from its own port, never acknowledged;
    the sockets (kept open, so no ICMP tells the server they are gone)."""
    socks = []
    for i in range(count):
        sock = raw_socket(addresses[i % len(addresses)])
        sock.sendto(rrq("bios/pxelinux.0", blksize=1468), ("127.0.0.1", server.port))
        socks.append(sock)
    return socks


def answers(socks) -> list:
    """The opcode of the first packet each socket got back (DATA, OACK or ERROR)."""
    got = []
    for sock in socks:
        got.append(struct.unpack("!H", sock.recv(2000)[:2])[0])
    return got


@pytest.mark.parametrize("spread", [1, 10])
def test_seventy_unacknowledged_requests_do_not_lock_out_a_client(server, tree, spread):
    """70 RRQs never acknowledged (from one address, or from ten) used to fill the 64 slots
    and get every client "server busy" for seconds; now a well-behaved client is served at once."""
    addresses = [f"127.0.2.{i + 1}" for i in range(spread)]
    socks = unacknowledged(server, 70, addresses)
    try:
        answers(socks)  # every request was looked at before the good client asks
        assert server.active <= 64
        started = time.monotonic()
        data, _ = fetch(server, "bios/pxelinux.0", blksize=1468)
        assert data == (tree / "bios" / "pxelinux.0").read_bytes()
        assert time.monotonic() - started < 1.5
    finally:
        for sock in socks:
            sock.close()


def test_transfers_per_client_address_are_limited(server):
    socks = unacknowledged(server, 8, ["127.0.3.1"])
    try:
        assert answers(socks) == [tftp.OACK] * 8
        ninth = raw_socket("127.0.3.1")
        ninth.sendto(rrq("small.txt"), ("127.0.0.1", server.port))
        error = ninth.recv(1000)
        assert struct.unpack("!HH", error[:4]) == (tftp.ERROR, tftp.NOT_DEFINED)
        assert b"too many transfers" in error
        wait_logged(server, "8 transfers from this address already")
        # another machine is not affected
        assert fetch(server, "small.txt", "127.0.3.2")[0] == b"line one\nline two\r\n"
        # the eight are given up fast (no first ACK: 0.3 s, two resends), then it may ask again
        wait_logged(server, "failed: never acknowledged")
        deadline = time.monotonic() + 5
        while server.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.active == 0
        assert fetch(server, "small.txt", "127.0.3.1")[0] == b"line one\nline two\r\n"
    finally:
        for sock in socks:
            sock.close()


def test_unacknowledged_transfer_is_given_up_fast_a_running_one_keeps_its_timeout(server, tree):
    # server: timeout 0.3 s, first_retries 2: a request never acknowledged is dropped in ~1 s
    silent = raw_socket()
    silent.sendto(rrq("bios/pxelinux.0"), ("127.0.0.1", server.port))
    started = time.monotonic()
    silent.recv(1000)
    wait_logged(server, "failed: never acknowledged")
    assert time.monotonic() - started < 2.5
    silent.close()
    # A client that asked for timeout=2 (RFC 2349) and acknowledged the OACK may pause longer
    # than the server's own give-up of an unacknowledged transfer, and go on.
    sock = raw_socket()
    sock.sendto(rrq("bios/pxelinux.0", blksize=512, timeout=2), ("127.0.0.1", server.port))
    oack, tid = sock.recvfrom(1000)
    assert oack[:2] == struct.pack("!H", tftp.OACK)
    sock.sendto(struct.pack("!HH", tftp.ACK, 0), tid)
    first = sock.recv(1000)
    assert first[:4] == struct.pack("!HH", tftp.DATA, 1)
    time.sleep(1.5)  # under its 2 s: no resend yet, and the transfer is alive
    sock.settimeout(0.05)
    with pytest.raises(socket.timeout):
        sock.recv(1000)
    sock.settimeout(3)
    sock.sendto(struct.pack("!HH", tftp.ACK, 1), tid)
    assert sock.recv(1000)[:4] == struct.pack("!HH", tftp.DATA, 2)
    # and at its own timeout the server resends
    assert sock.recv(1000)[:4] == struct.pack("!HH", tftp.DATA, 2)
    sock.close()


# --- netascii while streaming -------------------------------------------------------------------
def netascii_download(server, name: str, bind: str = "127.0.0.1", blksize: int = 512) -> bytes:
    sock = raw_socket(bind)
    options = {"blksize": blksize} if blksize != 512 else {}
    sock.sendto(rrq(name, "netascii", **options), ("127.0.0.1", server.port))
    got = []
    expected = 1
    try:
        while True:
            data, tid = sock.recvfrom(70000)
            opcode, number = struct.unpack("!HH", data[:4])
            if opcode == tftp.OACK:
                sock.sendto(struct.pack("!HH", tftp.ACK, 0), tid)
                continue
            assert opcode == tftp.DATA, data
            if number == expected & 0xFFFF:
                got.append(data[4:])
                expected += 1
            sock.sendto(struct.pack("!HH", tftp.ACK, number), tid)
            if number == (expected - 1) & 0xFFFF and len(data) - 4 < blksize:
                return b"".join(got)
    finally:
        sock.close()


def test_netascii_whole_file_matches_the_conversion(server, tree):
    payload = (b"a\r\nb\rc\n\n" * 3000) + os.urandom(5000) + b"\r"
    (tree / "text.cfg").write_bytes(payload)
    assert netascii_download(server, "text.cfg", blksize=1468) == tftp.to_netascii(payload)


def test_netascii_is_converted_while_streaming_not_held_in_memory(server, tree):
    """Issue 14: 64 netascii requests for a 4 MB file took the server from 55 MB to 624 MB
    (the file read whole, then converted whole). Now each holds a window of converted blocks."""
    (tree / "big.txt").write_bytes(b"x" * 60 + b"\n" + os.urandom(4 * 1024 * 1024))
    tracemalloc.start()
    try:
        socks = []
        for i in range(32):
            sock = raw_socket(f"127.0.4.{i // 8 + 1}")
            sock.sendto(rrq("big.txt", "netascii", blksize=1468), ("127.0.0.1", server.port))
            socks.append(sock)
        for sock in socks:  # every transfer running: the OACK acknowledged, block 1 made
            oack, tid = sock.recvfrom(1000)
            assert oack[:2] == struct.pack("!H", tftp.OACK)
            sock.sendto(struct.pack("!HH", tftp.ACK, 0), tid)
        for sock in socks:
            assert sock.recv(2000)[:4] == struct.pack("!HH", tftp.DATA, 1)
        assert server.active == 32
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        for sock in socks:
            sock.close()
    assert peak < 4 * 1024 * 1024, f"{peak} bytes at the peak for 32 transfers of a 4 MB file"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000).map(lambda b: b.replace(b"a", b"\r").replace(b"b", b"\n")),
       st.integers(min_value=8, max_value=700))  # fmt: skip
def test_netascii_stream_equals_the_whole_conversion(data, blksize):
    stream = tftp._Netascii(data, blksize)
    stream.CHUNK = 37  # conversion chunks that split CR LF pairs too
    blocks = []
    n = 1
    while True:
        blocks.append(bytes(stream.block(n)))
        stream.forget(n)  # acknowledged blocks are dropped ...
        assert len(stream.blocks) <= 1  # ... so only the one in flight is held
        if stream.last is not None and n >= stream.last:
            break
        n += 1
    assert b"".join(blocks) == tftp.to_netascii(data)
    assert all(len(b) == blksize for b in blocks[:-1]) and len(blocks[-1]) < blksize


# --- log forging (issue 14) ------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "x\n12:00:00 52:54:00:77:00:10 callback from 10.0.0.9: installed, disarmed",
        "x\r12:00:00 forged",
        "bios/\x1b[2Jcleared",
        "x\\x0a",  # a backslash is escaped too, so an escape cannot be faked either
    ],
)
def test_client_names_are_logged_with_control_characters_escaped(server, name):
    refused(server, name)
    wait_logged(server, "refused")
    line = [line for line in server.log_lines if "refused" in line][-1]
    assert line.isprintable() and "\n" not in line and "\r" not in line
    assert "\x1b" not in line
    assert name not in line
    if "\n" in name:
        assert "x\\x0a12:00:00" in line


def test_client_error_text_is_escaped_in_the_log(server):
    sock = raw_socket()
    sock.sendto(rrq("bios/pxelinux.0"), ("127.0.0.1", server.port))
    _, tid = sock.recvfrom(1000)
    sock.sendto(struct.pack("!HH", tftp.ERROR, 0) + b"bye\nforged line\0", tid)
    wait_logged(server, "client error 0: bye\\x0aforged line")
    assert tftp.printable("ok name.cfg") == "ok name.cfg"
