"""`invoke host.provision`: the host's whole part of the lab in order, each step idempotent.

Fast: the dry run on a loop disk lists every step in order with its parameters and changes
nothing; pxe.arm checks the whole site as host.provision would.
Slow: a real run with a loop disk, --root a copy of the cached Debian 12 chroot (test_xen's) and
--no-reboot makes the VG, installs Xen into the chroot as GRUB's default and stops before the
reboot, saying why; a second run continues and repeats nothing.
"""

import re
import time
import uuid

import pytest

from pipeline.config import load_site
from pipeline.errors import BadInput
from pipeline.host import provision as host_provision
from tests import test_xen
from tests.conftest import invoke, sh
from tests.test_xen import XEN_TITLE, dpkg_status

# test_xen's fixtures: a planning root, and the cached Debian 12 root Xen installs into
fake_root = test_xen.fake_root
base_root = test_xen.base_root
# A copy of the cached Debian 12 root that host.xen's own test installs Xen into.
debian_root = test_xen.target

MAC = "52:54:00:77:00:10"


def env_for(device: str, vg: str, **extra: str) -> dict:
    env = {
        "INVOKE_HOST_STORAGE_DEVICE": device,
        "INVOKE_HOST_STORAGE_SIZE": "1G",
        "INVOKE_HOST_STORAGE_VOLUME_GROUP": vg,
        "INVOKE_HOST_XEN_DOM0_MEM": "1024M",
        "INVOKE_HOST_NETPLAN_FILE": "/etc/netplan/01-netcfg.yaml",
    }
    env.update(extra)
    return env


def steps_said(stdout: str):
    return re.findall(r"^step (\w+): ([a-z ]+)", stdout, re.M)


def table(device: str) -> str:
    return sh("sfdisk", "--dump", device, check=False).stdout


def vg_exists(vg: str) -> bool:
    return sh("vgs", vg, check=False).returncode == 0


def test_dry_run_lists_every_step_in_order_and_changes_nothing(loop_disk, fake_root, netns):
    device = loop_disk("4G")
    sh("sfdisk", "-q", device, check=False)
    vg = f"XenProv{uuid.uuid4().hex[:6]}"
    root = fake_root()
    before_table, before_root = table(device), sorted(p for p in root.rglob("*"))
    ns = netns("prov")

    proc = invoke(
        "host.provision", "--dry-run", "--root", str(root), "--netns", ns, env=env_for(device, vg)
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert [s for s, _ in steps_said(out)] == list(host_provision.STEPS)
    assert all(status in ("would change", "no changes") for _, status in steps_said(out)), out
    # the right parameters, step by step
    assert f"storage lvm {device} VG {vg}" in out
    assert re.search(rf"would .*{re.escape(device)}", out)  # the partition on the loop disk
    assert f"vgcreate {vg}" in out or f"vgcreate' '{vg}" in out or vg in out
    assert "would install xen-hypervisor-4.17-amd64" in out
    assert "dom0_mem=1024M,max:1024M" in out
    assert "not running under Xen: would reboot into it" in out
    assert "xenbr0" in out and "192.0.2.1/28" in out
    assert "ubuntu-18.04" in out  # the image guest-01 uses
    assert "would build guest guest-01 (ubuntu-18.04, 192.0.2.2)" in out
    assert "dry run: nothing was changed" in out
    assert out.index("step storage") < out.index("step xen") < out.index("step reboot")
    assert out.index("step reboot") < out.index("step network") < out.index("step check")
    # nothing changed: the disk, the root, the VG, the namespace
    assert table(device) == before_table
    assert sorted(p for p in root.rglob("*")) == before_root
    assert not vg_exists(vg)
    assert "xenbr0" not in sh("ip", "-n", ns, "link").stdout


def test_bad_input_stops_before_the_first_step(loop_disk, fake_root, netns):
    proc = invoke(
        "host.provision", "--dry-run", "--root", str(fake_root()), "--netns", netns("prov"),
        env=env_for("", "XenProvBad"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "host.storage.device" in proc.stderr
    assert "step storage" not in proc.stdout


def test_a_subnet_that_cuts_the_host_off_is_refused(fake_root, netns):
    ns = netns("prov")
    sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    sh("ip", "-n", ns, "addr", "add", "192.0.2.2/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    proc = invoke(
        "host.provision", "--dry-run", "--root", str(fake_root()), "--netns", ns,
        env=env_for("/dev/loop0", "XenProvBad"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "host.subnet" in proc.stderr and "eth0" in proc.stderr


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"INVOKE_HOST_STORAGE_DEVICE": ""}, "host.storage.device"),
        ({"INVOKE_INSTALL_DISK_SIZE": "10G"}, "install.disk_size"),
    ],
)
def test_pxe_arm_checks_the_whole_site_first(tmp_path, extra, field):
    env = {"INVOKE_PXE_STATE_DIR": str(tmp_path / "state"), **extra}
    proc = invoke("pxe.arm", "--mac", MAC, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert field in proc.stderr
    assert not (tmp_path / "state").exists()


def test_the_host_site_file_loads_back_as_the_same_site():
    from ruamel.yaml import YAML

    from pxe import preseed
    from tests.conftest import REPO

    config = YAML(typ="safe").load((REPO / "invoke.yaml").read_text())
    site = load_site(config)
    text = preseed.site_for_host(site, "http://10.77.0.1:8080/images")
    back = load_site(YAML(typ="safe").load(text))
    assert back.host == site.host and back.guests == site.guests
    assert back.images.source == "http://10.77.0.1:8080/images"
    assert "password_hash" not in text and "install" not in YAML(typ="safe").load(text)
    with pytest.raises(BadInput):
        host_provision.check_for_arming(
            load_site({**config, "host": {**config["host"], "storage": {"device": None}}})
        )


# --- the real run -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_run_stops_before_the_reboot_and_a_second_continues(loop_disk, debian_root, netns):
    device = loop_disk("4G")
    vg = f"XenProv{uuid.uuid4().hex[:6]}"
    ns = netns("prov")
    args = ("host.provision", "--no-reboot", "--root", str(debian_root), "--netns", ns)

    started = time.monotonic()
    first = invoke(*args, env=env_for(device, vg))
    first_time = time.monotonic() - started

    assert first.returncode == 0, first.stdout + first.stderr
    assert steps_said(first.stdout) == [
        ("storage", "changed"), ("xen", "changed"), ("reboot", "stopped"),
    ]  # fmt: skip
    assert "stopped before the reboot" in first.stdout and "--no-reboot" in first.stdout
    assert vg_exists(vg)
    assert dpkg_status(debian_root, "xen-hypervisor-4.17-amd64") == "install ok installed"
    from pipeline.host import xen

    default, entries = xen.parse_grub_cfg((debian_root / "boot/grub/grub.cfg").read_text())
    assert default == XEN_TITLE and XEN_TITLE in entries
    assert "xenbr0" not in sh("ip", "-n", ns, "link").stdout  # it stopped before the network
    assert not (debian_root / "var/lib/xenlab/provisioned").exists()
    grub_before = (debian_root / "boot/grub/grub.cfg").read_bytes()
    table_before = table(device)

    started = time.monotonic()
    second = invoke(*args, env=env_for(device, vg))
    second_time = time.monotonic() - started

    assert second.returncode == 0, second.stdout + second.stderr
    assert steps_said(second.stdout) == [
        ("storage", "no changes"), ("xen", "no changes"), ("reboot", "stopped"),
    ]  # fmt: skip
    assert (debian_root / "boot/grub/grub.cfg").read_bytes() == grub_before
    assert table(device) == table_before
    print(f"\nhost.provision --no-reboot: first run {first_time:.0f} s, second {second_time:.1f} s")


def test_the_reporter_posts_each_report_and_survives_a_dead_server(tmp_path):
    import http.server
    import json
    import threading

    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(
                (self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url_file = tmp_path / "report-url"
    url_file.write_text(f"http://127.0.0.1:{server.server_address[1]}/progress/{MAC}/tok\n")
    said = []
    try:
        reporter = host_provision.Reporter.from_file(str(url_file), said.append)
        reporter.send("provisioning", step="storage")
        reporter.send("done", guests=[{"name": "guest-01", "ip": "192.0.2.2"}])
    finally:
        server.shutdown()
        server.server_close()
    assert got == [
        (f"/progress/{MAC}/tok", {"state": "provisioning", "step": "storage"}),
        (
            f"/progress/{MAC}/tok",
            {"state": "done", "guests": [{"name": "guest-01", "ip": "192.0.2.2"}]},
        ),
    ]
    reporter.send("failed", step="xen")  # the server is gone: said once, never the token
    reporter.send("failed", step="xen")
    assert len(said) == 1 and "tok" not in said[0].replace("token", "")
    url_file.write_text("not a url\n")
    with pytest.raises(BadInput):
        host_provision.Reporter.from_file(str(url_file), said.append)
