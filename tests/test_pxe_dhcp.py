"""pxe/dhcp.py (packets) and pxe/dhcp_server.py (proxyDHCP and full DHCP decisions, real sockets
across two namespaces)."""

import json
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pxe import dhcp
from pxe.dhcp import Packet
from pxe.dhcp_server import (
    PXE_PORT,
    SERVER_PORT,
    ClientTable,
    DhcpLogic,
    DhcpServer,
    Lease,
    Leases,
    Network,
    leases_file,
    read_leases,
)
from tests.conftest import sh

MAC = "52:54:00:77:00:10"
UUID = "8a1c2f3e-0000-4a5b-9c8d-112233445566"
SERVER = "10.77.0.1"


def pxe_discover(arch: int = 0, user_class=None, uuid=UUID, kind=dhcp.DISCOVER, **fields) -> Packet:
    options = {
        dhcp.MESSAGE_TYPE: bytes([kind]),
        dhcp.VENDOR_CLASS: f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode(),
        dhcp.CLIENT_ARCH: dhcp.arch_option(arch),
        dhcp.CLIENT_NDI: b"\x01\x02\x01",
        dhcp.PARAMETER_LIST: bytes([1, 3, 6, 43, 60, 66, 67, 97]),
    }
    if uuid:
        options[dhcp.CLIENT_UUID] = dhcp.uuid_option(uuid)
    if user_class is not None:
        options[dhcp.USER_CLASS] = user_class
    return Packet(xid=0x1234ABCD, chaddr=dhcp.mac_bytes(MAC), options=options, **fields)


# --- encode/decode ------------------------------------------------------------------------------
def test_round_trip_keeps_every_field_and_option():
    packet = pxe_discover(arch=7, user_class=b"iPXE", secs=4, flags=0x8000)
    packet.options[dhcp.HOSTNAME] = b"h" * 300  # longer than one option: split and rejoined
    data = dhcp.encode(packet)
    assert len(data) >= dhcp.MIN_SIZE
    back = dhcp.decode(data)
    assert back == packet
    assert back.mac == MAC
    assert back.arch == 7
    assert back.user_class == b"iPXE"
    assert back.client_uuid == UUID
    assert back.is_pxe
    assert back.message_type == dhcp.DISCOVER


def test_decode_reads_a_packet_built_by_hand():
    """Byte by byte as a PXE ROM sends it (not through encode), to check the layout itself."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 0, 0xDEADBEEF, 3, 0x8000,
        bytes(4), bytes(4), bytes(4), bytes(4),
        bytes.fromhex("525400770010") + bytes(10), b"", b"",
    )  # fmt: skip
    options = (
        b"\x35\x01\x01"  # DISCOVER
        b"\x5d\x02\x00\x09"  # arch 9: x86-64 UEFI
        b"\x3c\x20PXEClient:Arch:00009:UNDI:003016"
        b"\x61\x11\x00" + bytes(range(16)) +  # UUID
        b"\x4d\x04iPXE"
        b"\x32\x04\x0a\x4d\x00\x05"  # requested 10.77.0.5
        b"\x00\x00"  # padding
        b"\xff" + b"\x00" * 20
    )  # fmt: skip
    packet = dhcp.decode(header + dhcp.MAGIC + options)
    assert packet.xid == 0xDEADBEEF and packet.flags == 0x8000 and packet.secs == 3
    assert packet.mac == MAC
    assert packet.arch == 9
    assert packet.vendor_class == b"PXEClient:Arch:00009:UNDI:003016"
    assert packet.client_uuid == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert packet.user_class == b"iPXE"
    assert packet.requested_ip == "10.77.0.5"
    assert packet.server_id is None


def test_option_overload_reads_options_from_the_file_field():
    packet = pxe_discover()
    data = bytearray(dhcp.encode(packet))
    # put option 12 into the file field and announce it with option 52 = 1
    file_at = 12 + 16 + 16 + 64  # op..flags, four addresses, chaddr, sname
    data[file_at : file_at + 7] = b"\x0c\x04host\xff"
    cut = data.index(b"\xff", 240)
    data[cut:cut] = b"\x34\x01\x01"
    back = dhcp.decode(bytes(data))
    assert back.options[dhcp.HOSTNAME] == b"host"
    assert back.file == b""


def test_pxe_vendor_options_encode_discovery_control():
    raw = dhcp.pxe_vendor_options({dhcp.PXE_DISCOVERY_CONTROL: b"\x08"})
    assert raw == b"\x06\x01\x08\xff"
    assert dhcp.parse_vendor_options(raw) == {6: b"\x08"}


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda d: d[:100], "shorter than a BOOTP header"),
        (lambda d: d[:236] + b"\x00\x00\x00\x00" + d[240:], "magic"),
        (lambda d: b"\x07" + d[1:], "op"),
        (lambda d: d[:2] + b"\x20" + d[3:], "hardware address length"),
        (lambda d: d[:240] + b"\x35\x05\x01", "cut short"),
        (lambda d: d[:240] + b"\x35\x02\x01\x01\xff", "option 53"),
        (lambda d: d[:240] + b"\x35\x01\x09\xff", "message type"),
        (lambda d: d[:240] + b"\x5d\x03\x00\x00\x07\xff", "option 93"),
        (lambda d: d[:240] + b"\x36\x02\x0a\x00\xff", "option 54"),
        (lambda d: d[:240] + b"\x35", "no length"),
    ],
)
def test_malformed_packets_raise_one_error(mutate, why):
    good = dhcp.encode(pxe_discover())
    with pytest.raises(dhcp.MalformedPacket, match=why):
        dhcp.decode(mutate(good))


def test_malformed_packet_is_a_value_error():
    assert issubclass(dhcp.MalformedPacket, ValueError)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(data):
    try:
        dhcp.decode(data)
    except dhcp.MalformedPacket:
        pass


_GOOD = dhcp.encode(pxe_discover(arch=7, user_class=b"iPXE"))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), max_size=8),
    st.integers(200, len(_GOOD)),
    st.binary(max_size=40),
)
def test_mutated_pxe_packets_decode_or_raise_malformed(flips, cut, tail):
    data = bytearray(_GOOD)
    for at, value in flips:
        data[at] = value
    data = bytes(data[:cut]) + tail
    try:
        packet = dhcp.decode(data)
    except dhcp.MalformedPacket:
        return
    # What decodes is usable: the accessors the server calls do not fail either.
    used = (packet.mac, packet.arch, packet.client_uuid, packet.is_pxe, packet.user_class)
    assert used + (packet.requested_ip, packet.server_id, dhcp.describe(packet))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_logic_never_raises_on_what_decodes(data):
    try:
        packet = dhcp.decode(_GOOD[:240] + data)
    except dhcp.MalformedPacket:
        return
    for logic in (proxy_logic()[0], full_logic(None)[0]):
        for port in (SERVER_PORT, PXE_PORT):
            logic.handle(packet, port, ("10.77.0.9", 68))


# --- proxyDHCP ------------------------------------------------------------------------------------
def stand_in_loader(packet: Packet) -> str:
    """What pxe/menus.py's loader_for answers, in small."""
    if packet.user_class == b"iPXE":
        return f"http://{SERVER}:8080/ipxe/{packet.mac}.ipxe"
    return {
        0: "bios/pxelinux.0",
        7: "efi64/grubnetx64.efi.signed",
        9: "efi64/grubnetx64.efi.signed",
    }[packet.arch]


def proxy_logic():
    clients = ClientTable(arp_table="/nonexistent")
    net = Network(server=SERVER, netmask="255.255.255.0")
    return DhcpLogic("proxy", net, stand_in_loader, clients), clients


def test_proxy_offers_only_the_boot_file_to_pxe_clients():
    logic, _ = proxy_logic()
    answer = logic.handle(pxe_discover(arch=0), SERVER_PORT, ("0.0.0.0", 68))
    reply = answer.packet
    assert reply.op == dhcp.BOOTREPLY and reply.message_type == dhcp.OFFER
    assert reply.xid == 0x1234ABCD and reply.mac == MAC
    assert reply.yiaddr == "0.0.0.0"  # the site's DHCP server gives the address
    assert reply.file == b"bios/pxelinux.0"
    assert reply.options[dhcp.BOOTFILE] == b"bios/pxelinux.0"
    assert reply.options[dhcp.TFTP_SERVER] == SERVER.encode()
    assert reply.siaddr == SERVER and reply.server_id == SERVER
    assert reply.options[dhcp.VENDOR_CLASS] == b"PXEClient"
    assert dhcp.parse_vendor_options(reply.options[dhcp.VENDOR_OPTIONS]) == {6: b"\x08"}
    assert reply.client_uuid == UUID  # echoed, as PXE asks
    assert dhcp.LEASE_TIME not in reply.options and dhcp.ROUTER not in reply.options
    assert answer.to == ("255.255.255.255", 68)
    assert answer.log == "DHCP proxy offer bios/pxelinux.0"


@pytest.mark.parametrize(
    "arch, user_class, expected",
    [
        (0, None, b"bios/pxelinux.0"),
        (7, None, b"efi64/grubnetx64.efi.signed"),
        (9, None, b"efi64/grubnetx64.efi.signed"),
        (0, b"iPXE", f"http://{SERVER}:8080/ipxe/{MAC}.ipxe".encode()),
    ],
)
def test_boot_file_follows_option_93_and_the_ipxe_user_class(arch, user_class, expected):
    logic, _ = proxy_logic()
    reply = logic.handle(pxe_discover(arch, user_class), SERVER_PORT, ("0.0.0.0", 68)).packet
    assert reply.options[dhcp.BOOTFILE] == expected


def test_proxy_ignores_plain_dhcp_clients_and_requests_but_learns_the_address():
    logic, clients = proxy_logic()
    plain = Packet(xid=1, chaddr=dhcp.mac_bytes(MAC), options={dhcp.MESSAGE_TYPE: b"\x01"})
    assert logic.handle(plain, SERVER_PORT, ("0.0.0.0", 68)) is None
    request = pxe_discover(kind=dhcp.REQUEST)
    request.options[dhcp.REQUESTED_IP] = dhcp.ip_option("10.77.0.42")
    request.options[dhcp.SERVER_ID] = dhcp.ip_option("10.77.0.254")  # the site's server
    assert logic.handle(request, SERVER_PORT, ("0.0.0.0", 68)) is None
    assert clients.ip_of(MAC) == "10.77.0.42"
    assert clients.mac_of("10.77.0.42") == MAC


def test_port_4011_acks_the_boot_file_to_the_clients_address():
    logic, clients = proxy_logic()
    request = pxe_discover(kind=dhcp.REQUEST, ciaddr="10.77.0.42")
    answer = logic.handle(request, PXE_PORT, ("10.77.0.42", 4011))
    assert answer.packet.message_type == dhcp.ACK
    assert answer.packet.options[dhcp.BOOTFILE] == b"bios/pxelinux.0"
    assert answer.to == ("10.77.0.42", 4011)
    assert clients.ip_of(MAC) == "10.77.0.42"
    # a non-PXE packet on 4011 gets nothing
    request.options.pop(dhcp.VENDOR_CLASS)
    assert logic.handle(request, PXE_PORT, ("10.77.0.42", 4011)) is None


def test_replies_are_ignored_and_bootp_without_type_too():
    logic, _ = proxy_logic()
    reply = pxe_discover()
    reply.op = dhcp.BOOTREPLY
    assert logic.handle(reply, SERVER_PORT, ("0.0.0.0", 68)) is None
    bootp = pxe_discover()
    del bootp.options[dhcp.MESSAGE_TYPE]
    assert logic.handle(bootp, SERVER_PORT, ("0.0.0.0", 68)) is None


# --- full DHCP ------------------------------------------------------------------------------------
def full_logic(state_file, first="10.77.0.50", last="10.77.0.52"):
    clients = ClientTable(arp_table="/nonexistent")
    leases = Leases(first, last, state_file, 600)
    net = Network(
        server=SERVER, netmask="255.255.255.0", router=SERVER, dns=(SERVER,), lease_time=600
    )
    return DhcpLogic("dhcp", net, stand_in_loader, clients, leases), clients


def request_for(ip, server_id=SERVER, pxe=True, mac=MAC):
    packet = (
        pxe_discover(kind=dhcp.REQUEST) if pxe else Packet(options={dhcp.MESSAGE_TYPE: b"\x03"})
    )
    packet.chaddr = dhcp.mac_bytes(mac)
    packet.options[dhcp.REQUESTED_IP] = dhcp.ip_option(ip)
    if server_id:
        packet.options[dhcp.SERVER_ID] = dhcp.ip_option(server_id)
    return packet


def test_full_dhcp_offers_then_acks_an_address_with_network_options(tmp_path):
    state = tmp_path / "leases.json"
    logic, clients = full_logic(state)
    offer = logic.handle(pxe_discover(), SERVER_PORT, ("0.0.0.0", 68))
    assert offer.packet.message_type == dhcp.OFFER
    ip = offer.packet.yiaddr
    assert ip == "10.77.0.50"
    opts = offer.packet.options
    assert opts[dhcp.SUBNET_MASK] == dhcp.ip_option("255.255.255.0")
    assert opts[dhcp.ROUTER] == dhcp.ip_option(SERVER)
    assert opts[dhcp.DNS] == dhcp.ip_option(SERVER)  # the installer needs a name server
    assert opts[dhcp.LEASE_TIME] == dhcp.u32(600)
    assert opts[dhcp.BOOTFILE] == b"bios/pxelinux.0"
    assert dhcp.VENDOR_OPTIONS not in opts  # full DHCP: no proxy options
    assert offer.log == "DHCP offer 10.77.0.50 bios/pxelinux.0"
    assert not state.exists()  # an offer is not a lease
    ack = logic.handle(request_for(ip), SERVER_PORT, ("0.0.0.0", 68))
    assert ack.packet.message_type == dhcp.ACK and ack.packet.yiaddr == ip
    assert ack.log == "DHCP ack 10.77.0.50 bios/pxelinux.0"
    assert clients.ip_of(MAC) == ip
    assert json.loads(state.read_text())["leases"][MAC]["ip"] == ip
    # A restarted server gives the same host the same address.
    again, _ = full_logic(state)
    assert again.handle(pxe_discover(), SERVER_PORT, ("0.0.0.0", 68)).packet.yiaddr == ip


def test_installer_dhcp_client_gets_an_address_but_no_boot_file(tmp_path):
    logic, _ = full_logic(tmp_path / "leases.json")
    plain = Packet(xid=9, chaddr=dhcp.mac_bytes(MAC), options={dhcp.MESSAGE_TYPE: b"\x01"})
    offer = logic.handle(plain, SERVER_PORT, ("0.0.0.0", 68)).packet
    assert offer.yiaddr == "10.77.0.50"
    assert dhcp.BOOTFILE not in offer.options and offer.file == b""


def test_request_for_another_server_or_a_wrong_address(tmp_path):
    logic, _ = full_logic(tmp_path / "leases.json")
    logic.handle(pxe_discover(), SERVER_PORT, ("0.0.0.0", 68))
    assert (
        logic.handle(request_for("10.77.0.50", "10.77.0.254"), SERVER_PORT, ("0.0.0.0", 68)) is None
    )
    nak = logic.handle(request_for("192.168.1.9", None), SERVER_PORT, ("0.0.0.0", 68))
    assert nak.packet.message_type == dhcp.NAK and nak.to == ("255.255.255.255", 68)


def test_range_is_shared_and_runs_out_silently(tmp_path):
    logic, _ = full_logic(tmp_path / "leases.json", last="10.77.0.51")
    given_out = []
    for i in range(3):
        mac = f"52:54:00:00:00:{i:02x}"
        discover = pxe_discover()
        discover.chaddr = dhcp.mac_bytes(mac)
        answer = logic.handle(discover, SERVER_PORT, ("0.0.0.0", 68))
        given_out.append(answer.packet.yiaddr if answer else None)
        if answer:
            assert logic.handle(
                request_for(answer.packet.yiaddr, mac=mac), SERVER_PORT, ("0.0.0.0", 68)
            )
    assert given_out == ["10.77.0.50", "10.77.0.51", None]
    # someone else's address is refused
    nak = logic.handle(request_for("10.77.0.50", None), SERVER_PORT, ("0.0.0.0", 68))
    assert nak.packet.message_type == dhcp.NAK
    # a release frees it
    release = pxe_discover(kind=dhcp.RELEASE)
    release.chaddr = dhcp.mac_bytes("52:54:00:00:00:00")
    assert logic.handle(release, SERVER_PORT, ("10.77.0.50", 68)) is None
    third = pxe_discover()
    third.chaddr = dhcp.mac_bytes("52:54:00:00:00:02")
    assert logic.handle(third, SERVER_PORT, ("0.0.0.0", 68)).packet.yiaddr == "10.77.0.50"


def test_damaged_lease_file_is_survived(tmp_path):
    state = tmp_path / "leases.json"
    state.write_text("{not json")
    logic, _ = full_logic(state)
    assert logic.handle(pxe_discover(), SERVER_PORT, ("0.0.0.0", 68)).packet.yiaddr == "10.77.0.50"


def test_lease_file_reads_back_what_the_server_committed(tmp_path):
    state = leases_file(tmp_path)
    assert state == tmp_path / "leases.json"
    Leases("10.77.0.50", "10.77.0.60", state, 600, now=lambda: 1000.0).commit(MAC, "10.77.0.52")
    assert read_leases(state) == {MAC: Lease("10.77.0.52", 1600.0)}


@pytest.mark.parametrize("text", ["", "{not json", "[]", '{"leases": []}', '{"leases": 5}'])
def test_a_missing_or_damaged_lease_file_holds_no_leases(tmp_path, text):
    state = tmp_path / "leases.json"
    assert read_leases(state) == {}
    state.write_text(text)
    assert read_leases(state) == {}


def test_a_damaged_lease_entry_loses_only_itself(tmp_path):
    state = tmp_path / "leases.json"
    entries = {
        "52:54:00:00:00:01": {"ip": "10.77.0.50"},  # no expiry
        "52:54:00:00:00:02": "10.77.0.51",
        "52:54:00:00:00:03": {"ip": "10.77.0.52", "expires": "soon"},
        MAC: {"ip": "10.77.0.53", "expires": 1600},
    }
    state.write_text(json.dumps({"leases": entries}))
    assert read_leases(state) == {MAC: Lease("10.77.0.53", 1600.0)}


# --- on the wire: a server in one namespace, a client in another ----------------------------------
@pytest.fixture
def segment(netns):
    """Two namespaces joined by a veth: srv (10.77.0.1/24 on pxe0) and cl (no address on eth0)."""
    srv, cl = netns("dhcps"), netns("dhcpc")
    sh("ip", "-n", srv, "link", "add", "pxe0", "type", "veth", "peer", "name", "eth0", "netns", cl)
    sh("ip", "-n", srv, "addr", "add", f"{SERVER}/24", "dev", "pxe0")
    sh("ip", "-n", srv, "link", "set", "pxe0", "up")
    sh("ip", "-n", cl, "link", "set", "eth0", "up")
    return srv, cl


def in_netns(name, fn):
    from pyroute2 import netns as pr_netns

    pr_netns.pushns(name)
    try:
        return fn()
    finally:
        pr_netns.popns()


def test_proxy_server_answers_a_broadcast_discover_across_a_veth(segment):
    srv, cl = segment
    log = []
    logic, _ = proxy_logic()
    server = in_netns(
        srv, lambda: DhcpServer(logic, "pxe0", SERVER, lambda m, s: log.append((m, s)))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = in_netns(cl, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        client.bind(("0.0.0.0", 68))
        client.settimeout(5)
        client.sendto(b"\x01garbage", ("255.255.255.255", 67))  # dropped, logged
        client.sendto(dhcp.encode(pxe_discover()), ("255.255.255.255", 67))
        reply = dhcp.decode(client.recv(2048))
        assert reply.message_type == dhcp.OFFER and reply.file == b"bios/pxelinux.0"
        deadline = time.monotonic() + 5
        while (MAC, "DHCP proxy offer bios/pxelinux.0") not in log:
            assert time.monotonic() < deadline, log
            time.sleep(0.05)
        assert any("bad packet" in s for _, s in log)
    finally:
        client.close()
        server.shutdown()
        thread.join(timeout=5)
        server.close()


# --- the pxe.* settings ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("dhcp_range", "10.0.0.9-10.0.0.5"),
        ("dhcp_range", "10.0.0.5"),
        ("dhcp_range", "10.0.0.5-x"),
        ("interface", "eth0; reboot"),
        ("interface", "a" * 16),
        ("http_port", 70000),
        ("mode", "relay"),
        ("tftp_root", "srv/tftp"),
        ("state_dir", "/var/lib/../x"),
        ("lease_time", 5),
    ],
)
def test_bad_pxe_settings_name_the_field(key, value):
    from pipeline.config import load_site
    from pipeline.errors import BadInput

    with pytest.raises(BadInput) as err:
        load_site({"host": {"subnet": "192.0.2.0/28"}, "pxe": {key: value}})
    assert err.value.problems[0].field == f"pxe.{key}"


def test_pxe_range_bounds():
    from pipeline.config import load_site

    site = load_site(
        {"host": {"subnet": "192.0.2.0/28"}, "pxe": {"dhcp_range": "10.0.0.5 - 10.0.0.9"}}
    )
    assert [str(a) for a in site.pxe.range_bounds] == ["10.0.0.5", "10.0.0.9"]
