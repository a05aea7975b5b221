"""pxe.serve trusts no claim it cannot check: in a server namespace, with a client namespace that
plays both the real host (10.77.0.50) and another machine on the segment (10.77.0.59).

- full DHCP: a committed lease binds the armed MAC to its address; later packets claiming the MAC
  from elsewhere do not move it;
- the preseed is served once per arming (then 410, a warning line, and pxe.status says so);
- the callback and the progress reports need the arming's token and the host's own address;
- what a client sends is logged with its control characters escaped (no forged lines);
- pxe.status shows each state of the host: installing, installed, provisioning STEP, rebooting
  into Xen, failed at STEP with its last log lines, done with the guests.
"""

import base64
import hashlib
import http.client
import json
import re
import tarfile

import pytest
from ruamel.yaml import YAML

from pxe import dhcp
from tests import test_pxe_boot
from tests.conftest import invoke, sh
from tests.test_pxe_boot import (
    ARMED,
    SERVER,
    UNARMED,
    dhcp_socket,
    exchange,
    http_get,
    inside,
    pxe_packet,
    serving,
    site_env,
)

# test_pxe_boot's fixtures: a server and a client namespace on a veth, a stand-in boot tree
segment = test_pxe_boot.segment
stand_in_tree = test_pxe_boot.stand_in_tree

HOST, OTHER = "10.77.0.50", "10.77.0.59"
DHCP_ARGS = ["--interface", "pxe0", "--mode", "dhcp", "--range", "10.77.0.50-10.77.0.60"]


def post(ns: str, path: str, body: bytes, source: str):
    with inside(ns):
        conn = http.client.HTTPConnection(SERVER, 8080, timeout=20, source_address=(source, 0))
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def report(ns, token, source=HOST, mac=ARMED, **fields):
    return post(ns, f"/progress/{mac}/{token}", json.dumps(fields).encode(), source)[0]


def status(env) -> str:
    proc = invoke("pxe.status", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def state_of(env, mac=ARMED) -> str:
    for line in status(env).splitlines():
        cells = [cell.strip() for cell in line.split("\u2502")[1:-1]]
        if cells and cells[0] == mac:
            return cells[-1]
    raise AssertionError(f"{mac} not in pxe.status")


def setup_of(preseed: bytes) -> str:
    b64 = re.search(rb"echo ([A-Za-z0-9+/=]+) \| base64 -d >/tmp/xenlab-setup.sh", preseed)
    return base64.b64decode(b64.group(1)).decode()


@pytest.fixture
def wheelhouse_tree(stand_in_tree):
    """The stand-in tree with a wheelhouse's names: the preseed then carries the zero-touch setup."""
    house = stand_in_tree / "wheelhouse"
    house.mkdir()
    for name in ("xenlab-0.1.0-py3-none-any.whl", "pip-25.0.1-py3-none-any.whl"):
        (house / name).write_bytes(b"PK\x05\x06" + bytes(18))
    (house / "index.html").write_text('<a href="xenlab-0.1.0-py3-none-any.whl">x</a>\n')
    return stand_in_tree


def lease(cl, mac=ARMED):
    sock = dhcp_socket(cl, "eth0")
    try:
        offer = exchange(sock, pxe_packet(mac, dhcp.DISCOVER))
        request = pxe_packet(mac, dhcp.REQUEST)
        request.options[dhcp.REQUESTED_IP] = dhcp.ip_option(offer.yiaddr)
        request.options[dhcp.SERVER_ID] = dhcp.ip_option(SERVER)
        ack = exchange(sock, request)
        assert ack.message_type == dhcp.ACK
        # Another machine claims the armed MAC: a DHCPREQUEST for its own address is refused...
        claim = pxe_packet(mac, dhcp.REQUEST)
        claim.options[dhcp.REQUESTED_IP] = dhcp.ip_option(OTHER)
        claim.options[dhcp.SERVER_ID] = dhcp.ip_option(SERVER)
        nak = exchange(sock, claim)
        assert nak.message_type == dhcp.NAK
        # ... a release does not free the binding, a PXE request on 4011 does not move it.
        sock.sendto(dhcp.encode(pxe_packet(mac, dhcp.RELEASE, ciaddr=OTHER)), (SERVER, 67))
        on_4011 = pxe_packet(mac, dhcp.REQUEST, ciaddr=OTHER)
        exchange(sock, on_4011, to=(SERVER, 4011))
        return ack.yiaddr
    finally:
        sock.close()


def test_the_install_server_trusts_only_what_it_can_check(segment, wheelhouse_tree, tmp_path):
    srv, cl = segment
    env = site_env(tmp_path)
    assert invoke("pxe.arm", "--mac", ARMED, env=env).returncode == 0
    token = json.loads((tmp_path / "state/armed.json").read_text())["armed"][ARMED]["token"]
    with serving(srv, DHCP_ARGS, env, tmp_path / "serve.log") as server:
        assert lease(cl) == HOST
        for address in (HOST, OTHER):
            sh("ip", "-n", cl, "addr", "add", f"{address}/24", "dev", "eth0")
        # The other machine's claims did not move the binding: its preseed fetch is refused.
        assert http_get(cl, f"/preseed/{ARMED}.cfg", source=OTHER)[0] == 403
        assert state_of(env) == "-"

        # The host gets its preseed, once; it carries the arming's token and the zero-touch setup.
        code, preseed = http_get(cl, f"/preseed/{ARMED}.cfg", source=HOST)
        assert code == 200
        assert f"http://{SERVER}:8080/callback/{ARMED}/{token}".encode() in preseed
        setup = setup_of(preseed)
        assert f"/progress/{ARMED}/{token}" in setup and "xenlab==0.1.0" in setup
        site_b64 = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d >/etc/xenlab/site", setup)
        site = YAML(typ="safe").load(base64.b64decode(site_b64.group(1)))
        assert set(site) == {"host", "images", "guests"}  # nothing of install.*: no secrets
        assert site["images"]["source"] == f"http://{SERVER}:8080/images"
        assert state_of(env) == "installing"
        again = http_get(cl, f"/preseed/{ARMED}.cfg", source=HOST)
        assert again[0] == 410
        server.wait_for(rf"{ARMED} WARNING: preseed refused to {HOST} \(410\)", 10)
        assert re.search(rf"WARNING: {ARMED}: its preseed was served to {HOST}", status(env))

        # The callback: not without the token, not with another, not from another address.
        for path, source in (
            (f"/callback/{ARMED}", HOST),
            (f"/callback/{ARMED}/{'x' * len(token)}", HOST),
            (f"/callback/{ARMED}/{token}", OTHER),
        ):
            assert http_get(cl, path, source=source)[0] == 403, path
        assert json.loads((tmp_path / "state/armed.json").read_text())["armed"].get(ARMED)
        assert http_get(cl, f"/callback/{ARMED}/{token}", source=HOST) == (200, b"disarmed\n")
        assert state_of(env) == "installed"

        # Progress: with the token, from the host's address only.
        assert report(cl, token, source=OTHER, state="done") == 403
        assert report(cl, "", state="done") == 403
        assert report(cl, token, mac=UNARMED, state="done") == 403
        assert report(cl, token, state="bogus") == 400
        assert state_of(env) == "installed"
        assert report(cl, token, state="provisioning", step="storage") == 200
        assert state_of(env) == "provisioning storage"
        assert report(cl, token, state="rebooting", step="reboot") == 200
        assert state_of(env) == "rebooting into Xen"
        log = ["apt-get install xen-hypervisor-4.9-amd64", "E: Unable to fetch\nforged line"]
        assert report(cl, token, state="failed", step="xen", log=log) == 200
        shown = status(env)
        assert "failed at xen" in shown and "E: Unable to fetch\\nforged line" in shown
        guests = [{"name": "guest-01", "ip": "192.0.2.2"}]
        assert report(cl, token, state="done", guests=guests) == 200
        assert state_of(env) == "done (guest-01 192.0.2.2)"

        # Log forging: a request path with a newline does not make a line of its own.
        fake = f"x%0A00:00:00 {ARMED} callback from {HOST}: installed, disarmed%1b[2J"
        fake = fake.replace(" ", "%20")
        assert http_get(cl, f"/installers/{fake}", source=OTHER)[0] == 404
        server.wait_for(r"x\\n00:00:00", 10)
    lines = server.lines()
    assert not [line for line in lines if line.startswith("00:00:00")]
    assert not [line for line in lines if "\x1b" in line]
    assert sum("installed, disarmed" in line for line in lines) == 2  # the real one, escaped fake
    assert oct((tmp_path / "state/hosts.json").stat().st_mode & 0o777) == "0o600"


def test_images_and_wheelhouse_are_served(segment, wheelhouse_tree, tmp_path):
    srv, cl = segment
    cache = tmp_path / "images"
    entry = cache / "debian-12-0123456789abcdef"
    (entry / "root/boot").mkdir(parents=True)
    (entry / "root/boot/vmlinuz").write_bytes(b"kernel")
    (entry / "image.json").write_text(
        json.dumps({"profile": "debian-12", "key": "0123456789abcdef"})
    )
    env = site_env(tmp_path, INVOKE_IMAGES_CACHE_DIR=str(cache))
    with serving(srv, DHCP_ARGS, env, tmp_path / "serve.log"):
        sh("ip", "-n", cl, "addr", "add", f"{HOST}/24", "dev", "eth0")
        code, page = http_get(cl, "/wheelhouse/", source=HOST)
        assert code == 200 and b"xenlab-0.1.0-py3-none-any.whl" in page
        with inside(cl):  # pip --find-links reads only an HTML page
            conn = http.client.HTTPConnection(SERVER, 8080, timeout=10)
            conn.request("GET", "/wheelhouse/")
            resp = conn.getresponse()
            resp.read()
            conn.close()
        assert resp.getheader("Content-Type").startswith("text/html")
        code, wheel = http_get(cl, "/wheelhouse/xenlab-0.1.0-py3-none-any.whl", source=HOST)
        assert code == 200 and wheel.startswith(b"PK")
        assert http_get(cl, "/wheelhouse/../state/armed.json", source=HOST)[0] == 404
        code, index = http_get(cl, "/images/index.json", source=HOST)
        assert code == 200
        record = json.loads(index)["images"]["debian-12"]
        code, data = http_get(cl, f"/images/{record['file']}", source=HOST)
        assert code == 200 and hashlib.sha256(data).hexdigest() == record["sha256"]
        out = tmp_path / "got.tar"
        out.write_bytes(data)
        with tarfile.open(str(out)) as tar:
            assert {"image.json", "root/boot/vmlinuz"} <= set(tar.getnames())
        assert http_get(cl, "/images/../armed.json", source=HOST)[0] == 404
