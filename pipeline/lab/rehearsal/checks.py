"""The lab's steps, each checked from outside the VM: its serial console, pxe.serve's progress
records, ssh into dom0 from the router namespace as the admin, and the network (ping, ssh into
the guest). Each function is one step of issue 16's list; it returns what it saw, in one line, or
raises Failed saying what did not hold.
"""

import base64
import json
import re
import time
from typing import Dict, List

from pipeline.errors import Failed
from pipeline.guest import build as guest_build
from pipeline.guest import xen_cfg
from pipeline.lab import diagram as drawing
from pipeline.lab.rehearsal import remote, vm
from pipeline.lab.rehearsal.run import Run
from pxe import progress
from pxe.preseed import UNIT

XEN_BANNER = r"\(XEN\) Xen version \d+\.\d+"
LOGIN = r"login: "
# Generous: software emulation on two shared cores (the recipes' figures, times three or more).
BOOT_TIMEOUT = 15 * 60
PROVISION_TIMEOUT = 45 * 60
GUEST_TIMEOUT = 10 * 60


def _fail(what: str, said: str = "") -> None:
    raise Failed(f"{what}{': ' + said if said else ''}")


def _entry(run: Run) -> Dict:
    return progress.load(run.state_dir).get(run.mac, {})


def follow(run: Run, until: str, timeout: float) -> Dict:
    """pxe.serve's record of the host, each new state and step said as it comes (the way
    pxe.status shows it), until state `until`."""
    deadline = time.monotonic() + timeout
    while True:
        entry = _entry(run)
        way = progress.way(entry)
        for line in way[run.way_shown :]:
            run.say(f"    pxe.status: {line}")
        run.way_shown = len(way)
        if entry.get("state") == "failed":
            lines = "\n".join(progress.last_lines(entry)[-15:])
            _fail(f"host.provision reported a failure ({progress.describe(entry)})", "\n" + lines)
        if entry.get("state") == until:
            return entry
        if run.vm is not None and not run.vm.running():
            _fail(f"the VM stopped while waiting for {until!r}")
        if time.monotonic() > deadline:
            _fail(f"pxe.status did not reach {until!r} within {timeout:.0f} s"
                  f" (at {progress.describe(entry)})")  # fmt: skip
        time.sleep(2)


def _went_through(entry: Dict, *wanted: str) -> str:
    """The host's way (pxe.status) holds each of `wanted` in order; the way, in one line."""
    way = [line.split(" ", 1)[1] for line in progress.way(entry)]
    at = 0
    for item in wanted:
        if item not in way[at:]:
            _fail(f"pxe.status never showed {item!r} (after {wanted[:wanted.index(item)]})",
                  ", ".join(way))  # fmt: skip
        at = way.index(item, at) + 1
    return ", ".join(progress.way(entry))


def _dom0_json(run: Run, command: str):
    proc = run.dom0.run(command)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        _fail(f"dom0: {command!r} gave no JSON (exit {proc.returncode})", proc.stderr[-2000:])


def _wait_dom0(run: Run, since: int) -> None:
    run.vm.wait_for(XEN_BANNER, BOOT_TIMEOUT, since)
    vm.poll("ssh into dom0 as the admin", run.dom0.up, BOOT_TIMEOUT, every=5)


# --- 1. first boot ---------------------------------------------------------------------------
def first_boot(run: Run) -> str:
    """The plain kernel boots; xenlab-provision makes the VG and installs Xen, then reboots."""
    run.vm.wait_for(LOGIN, BOOT_TIMEOUT)
    entry = follow(run, "rebooting", PROVISION_TIMEOUT)
    run.vm.boot_mark = run.vm.mark()
    return _went_through(entry, "installed", "provisioning storage", "provisioning xen",
                         "rebooting into Xen")  # fmt: skip


# --- 2. Xen is the default ---------------------------------------------------------------------
def xen_boot(run: Run) -> str:
    """GRUB boots Xen; host.check's Xen lines hold; xl list shows Domain-0 (the lab's Q3)."""
    _wait_dom0(run, run.vm.boot_mark)
    found = _dom0_json(run, f"{remote.INVOKE} host.check --json")
    xen = {c["step"]: c for c in found["checks"] if c["step"].startswith("Xen")}
    bad = [f"{k}: {c['detail']}" for k, c in xen.items() if not c["ok"]]
    if not xen or bad:
        _fail("host.check's Xen lines do not hold", "; ".join(bad) or "none found")
    listing = run.dom0.out("sudo -n xl list")
    if not re.search(r"^Domain-0\s+0\s", listing, re.M):
        _fail("xl list shows no Domain-0", listing)
    dmesg = run.dom0.out("sudo -n dmesg | grep -i 'xen' | head -n 5")
    if "Xen" not in dmesg:
        _fail("dmesg has no Xen lines")
    version = run.dom0.out("sudo -n xl info | sed -n 's/^xen_version *: *//p'").strip()
    vg = _dom0_json(run, "sudo -n vgs --reportformat json -o vg_name,vg_size,vg_free")
    names = [row["vg_name"] for row in vg["report"][0]["vg"]]
    if run.site.host.storage.volume_group not in names:
        _fail(f"no VG {run.site.host.storage.volume_group} in dom0", str(names))
    return f"Xen {version}; {', '.join(sorted(xen))} ok; Domain-0 listed; VG {names}"


# --- 3. network, images, guests ---------------------------------------------------------------
def provision_done(run: Run) -> str:
    """host.provision goes on: xenbr0 and forwarding, the golden image from pxe.serve, guest-01."""
    entry = follow(run, "done", PROVISION_TIMEOUT)
    _went_through(entry, "provisioning network", "provisioning images", "provisioning guests",
                  "provisioning check", "done")  # fmt: skip
    host = run.site.host
    # plain `ip -o`: bionic's iproute2 4.15 (ss180129) prints `"addr_info": [{}]` for `ip -j addr show dev X`
    addrs = run.dom0.out(f"ip -4 -o addr show dev {host.bridge}")
    have = re.findall(r"\binet (\S+)", addrs)
    if host.bridge_interface.with_prefixlen not in have:
        _fail(f"{host.bridge} has {have}, not {host.bridge_interface.with_prefixlen}")
    if run.dom0.out("cat /proc/sys/net/ipv4/ip_forward").strip() != "1":  # sysctl: in /sbin
        _fail("IPv4 forwarding is off in dom0")
    netplan = run.dom0.out(f"sudo -n cat {host.netplan_file}")
    if host.bridge not in netplan:
        _fail(f"{host.netplan_file} does not persist {host.bridge}", netplan)
    lvs = _dom0_json(run, "sudo -n lvs --reportformat json -o lv_name,vg_name,lv_attr")
    active = {row["lv_name"]: row["lv_attr"] for row in lvs["report"][0]["lv"]}
    for name in run.site.guests:
        for lv in (f"{name}-disk", f"{name}-swap"):
            if len(active.get(lv, "")) < 5 or active[lv][4] != "a":
                _fail(f"LV {lv} is not active in dom0", str(active))
        cfg = run.dom0.out(f"cat {xen_cfg.XEN_DIR}/{name}.cfg")
        boot = xen_cfg.cfg_boot(cfg)
        if boot != run.site.guests[name].boot:
            _fail(f"{name}'s cfg boots by {boot}, not {run.site.guests[name].boot}", cfg)
    return f"{progress.describe(entry)}; {host.bridge} {have}; LVs active: {', '.join(active)}"


# --- 4. from the router --------------------------------------------------------------------------
def from_outside(run: Run) -> str:
    """Ping the bridge (Q6) and the guest through dom0; ssh into it as the lab says it must be."""
    router, seen = run.topo.router, []
    bridge = str(run.site.host.bridge_interface.ip)
    if not remote.ping(router, bridge, count=3):
        _fail(f"the bridge address {bridge} does not answer ping from the router")
    seen.append(f"ping {bridge} ok")
    for name, guest in run.site.guests.items():
        ip = str(guest.ip)
        vm.poll(f"{name} ({ip}) answering ping from the router",
                lambda ip=ip: remote.ping(router, ip), GUEST_TIMEOUT)  # fmt: skip
        known = run.dom0.out(f"sudo -n cat {guest_build.STATE_DIR}/{name}/known_hosts")
        run.guest_known_hosts = run.work / f"known_hosts.{name}"
        run.guest_known_hosts.write_text(known)
        admin = run.ssh_guest(name)
        # cloud-init may restart sshd once during the first boot: retry until a login works.
        vm.poll(f"ssh into {name} as {guest.user}", admin.up, GUEST_TIMEOUT, every=5)
        facts = admin.out("hostname; ip -4 -o addr show scope global; ip -4 route show default;"
                          f" ping -n -c 1 -W 3 {run.site.rehearse.gateway} >/dev/null && echo PING-OK")  # fmt: skip
        lines = facts.splitlines()
        gateway = str(guest.gateway or run.site.host.bridge_interface.ip)
        prefix = run.site.host.subnet.prefixlen
        if lines[0].strip() != name:
            _fail(f"{name}'s hostname is {lines[0]!r}", facts)
        if f"inet {ip}/{prefix}" not in facts or f"default via {gateway}" not in facts:
            _fail(f"{name} lacks {ip}/{prefix} or its default route via {gateway}", facts)
        if "PING-OK" not in facts:
            _fail(f"{name} does not reach the router {run.site.rehearse.gateway}", facts)
        password = admin.run("true", 60, "-o", "PubkeyAuthentication=no",
                             "-o", "PreferredAuthentications=password,keyboard-interactive")  # fmt: skip
        if password.returncode == 0 or "Permission denied (publickey)" not in password.stderr:
            _fail(f"{name}'s sshd did not refuse a password login as expected", password.stderr)
        root = run.ssh_guest(name, user="root").run("true", 60)
        if root.returncode == 0 or "Permission denied" not in root.stderr:
            _fail(f"{name}'s sshd let root in, or failed otherwise", root.stderr)
        outside = str(run.site.rehearse.outside.ip)
        if not remote.ping(router, ip, count=2, source=outside):
            _fail(
                f"{name} does not answer ping from {outside}: the refusal below would prove nothing"
            )
        # The admin's own key, which works from the router's address, from an address outside
        # ssh_allow_from: Ubuntu 18.04's hosts.allow closes the connection before the key
        # exchange; Debian 12's sshd (AllowUsers admin@NETWORK, no tcp wrappers) denies the login.
        refused = run.ssh_guest(name, source=outside).run("true", 60)
        if refused.returncode == 0:
            _fail(f"{name}'s sshd let the admin in from {outside}, outside ssh_allow_from")
        how = "login denied" if "Permission denied" in refused.stderr else "connection closed"
        seen.append(f"{name}: ping, ssh as {guest.user} ok; hostname, {ip}/{prefix}, gateway"
                    f" {gateway} from the seed; pings the router; password and root refused,"
                    f" {outside} refused ({how})")  # fmt: skip
    return "; ".join(seen)


# --- 5. the guest's lifecycle in dom0 ------------------------------------------------------------
def _state(run: Run, name: str) -> str:
    rows = _dom0_json(run, f"{remote.INVOKE} guest.list --json")
    for row in rows:
        if row["name"] == name:
            return row["state"]
    return "absent"


def _answers(run: Run, ip: str, timeout: float = GUEST_TIMEOUT) -> None:
    vm.poll(f"{ip} answering ping", lambda: remote.ping(run.topo.router, ip), timeout)


def pygrub_variant(cfg_text: str) -> str:
    """The guest's cfg as guest.build writes it for boot = pygrub (same disks, vif, sizes)."""
    name = re.search(r'^name\s*=\s*"([^"]+)"', cfg_text, re.M).group(1)
    memory = int(re.search(r"^memory\s*=\s*(\d+)", cfg_text, re.M).group(1))
    vcpus = int(re.search(r"^vcpus\s*=\s*(\d+)", cfg_text, re.M).group(1))
    disks = tuple(
        xen_cfg.Disk(
            d["target"], d["vdev"], d.get("access", "rw") == "rw", d.get("devtype") == "cdrom"
        )
        for d in xen_cfg.parse_disks(cfg_text)
    )
    (vif,) = xen_cfg.parse_vifs(cfg_text)
    return xen_cfg.render(xen_cfg.XlConfig(name, memory, vcpus, disks, vif["ip"], vif["mac"],
                                           vif["bridge"], boot="pygrub"))  # fmt: skip


def lifecycle(run: Run) -> str:
    """guest.list, xentop, guest.info (Q11); pause/unpause; stop/start; the console's log;
    guest.check; `xl -N create` of the pvgrub and pygrub cfgs."""
    name, guest = next(iter(run.site.guests.items()))
    ip = str(guest.ip)
    seen: List[str] = []
    state = _state(run, name)
    if state not in ("running", "blocked"):
        _fail(f"guest.list shows {name} {state}")
    top = run.dom0.out("sudo -n xentop -b -i 1")
    if name not in top:
        _fail(f"xentop -b does not show {name}", top)
    info = _dom0_json(run, f"{remote.INVOKE} guest.info --name {name} --json")
    want = (guest.memory // (1 << 20), guest.vcpus, guest.boot)
    if (info["memory_mib"], info["vcpus"], info["boot"]) != want:
        _fail(f"guest.info says {info['memory_mib']} MiB, {info['vcpus']} vCPUs, {info['boot']}")
    seen.append(f"guest.list {state}; xentop; guest.info {want[0]} MiB {want[1]} vCPUs {want[2]}")

    run.dom0.invoke("guest.pause", "--name", name)
    flags = run.dom0.out(f"sudo -n xl list {name} | awk 'NR==2 {{print $5}}'").strip()
    if "p" not in flags:
        _fail(f"paused, xl list shows {name}'s state {flags!r}")
    if remote.ping(run.topo.router, ip, count=3, wait=1):
        _fail(f"{name} answers ping while paused")
    run.dom0.invoke("guest.unpause", "--name", name)
    _answers(run, ip, 120)
    seen.append(f"paused ({flags}, no ping), unpaused (ping)")

    started = time.monotonic()
    run.dom0.invoke("guest.stop", "--name", name, timeout=900)
    if _state(run, name) != "stopped":
        _fail(f"after guest.stop, guest.list shows {name} {_state(run, name)}")
    run.dom0.invoke("guest.start", "--name", name, timeout=900)
    _answers(run, ip)
    seen.append(f"stopped and started, ping again after {time.monotonic() - started:.0f} s")

    vm.poll(f"{name}'s console log showing a login prompt",
            lambda: "login:" in run.dom0.run(f"{remote.INVOKE} guest.console --name {name} --log").stdout,
            GUEST_TIMEOUT, every=10)  # fmt: skip
    run.dom0.invoke("guest.check", "--name", name)
    seen.append("console log shows the login prompt; guest.check passes")

    cfg = run.dom0.out(f"cat {xen_cfg.XEN_DIR}/{name}.cfg")
    pygrub = base64.b64encode(pygrub_variant(cfg).encode()).decode()
    modes = {
        "pvgrub": f"sudo -n xl -N create {xen_cfg.XEN_DIR}/{name}.cfg",
        "pygrub": f"echo {pygrub} | base64 -d >/tmp/{name}-pygrub.cfg &&"
                  f" sudo -n xl -N create /tmp/{name}-pygrub.cfg",
    }  # fmt: skip
    for mode, command in modes.items():
        parsed = run.dom0.out(command)
        loader = xen_cfg.loader("pvgrub")
        wanted = (
            (loader in parsed)
            if mode == "pvgrub"
            else ("pygrub" in parsed and loader not in parsed)
        )
        if not wanted or name not in parsed:
            _fail(f"xl -N create of the {mode} cfg does not read back as {mode}", parsed[-3000:])
    seen.append("xl -N create reads back pvgrub and pygrub")
    return "; ".join(seen)


# --- 6. reboot ----------------------------------------------------------------------------------
def reboot(run: Run) -> str:
    """dom0 reboots; guest-01 starts again by itself from /etc/xen/auto (Q12) and answers ping."""
    run.vm.boot_mark = run.vm.mark()
    started = time.monotonic()
    run.dom0.run("sudo -n systemctl reboot", timeout=30)
    _wait_dom0(run, run.vm.boot_mark)
    for name, guest in run.site.guests.items():
        if not guest.autostart:
            continue
        vm.poll(f"{name} running again after the reboot",
                lambda name=name: _state(run, name) in ("running", "blocked"), GUEST_TIMEOUT, 5)  # fmt: skip
        _answers(run, str(guest.ip))
    unit = run.dom0.out(f"systemctl show -p ActiveState -p ConditionResult {UNIT}")
    return (f"dom0 back and guests pinged {time.monotonic() - started:.0f} s after the reboot;"
            f" {UNIT}: {' '.join(unit.split())}")  # fmt: skip


# --- 7. the lab's written answers and its drawing ----------------------------------------------
def report(run: Run) -> str:
    """host.report and host.diagram of the live host, copied out next to the transcript."""
    text = run.dom0.out(f"{remote.INVOKE} host.report")
    (run.output / "report.txt").write_text(text)
    run.dom0.out(f"{remote.INVOKE} host.diagram --output /tmp/xenlab-lab.dot")
    dot = run.dom0.out("sudo -n cat /tmp/xenlab-lab.dot")
    (run.output / "lab.dot").write_text(dot)
    (run.output / "lab.svg").write_bytes(drawing.render(dot, "svg"))
    vifs = sorted(set(re.findall(r"\bvif\d+\.\d+\b", text + dot)))
    if not vifs:
        _fail("the report and the drawing name no vif of a running guest", text[-2000:])
    for name in run.site.guests:
        if name not in dot:
            _fail(f"the drawing does not show {name}")
    return f"report.txt, lab.dot, lab.svg in {run.output}; vifs {', '.join(vifs)}"
