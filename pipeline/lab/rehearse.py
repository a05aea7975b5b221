"""lab.rehearse: the whole lab, zero touch, on a real Xen host inside a VM, checked from outside.

The stages, in order (each prints as it passes, with its time):

    prepare         the rehearsal's site with its own admin key; the golden image(s) the guests
                    need, exported for pxe.serve; xenlab's wheelhouse; the installed host disk
                    (cached by its inputs: the OS, GRUB, the preseed's packages)
    install         the router namespace; pxe.serve on it; the host's MAC armed; the installer's
                    side fetches its menu (TFTP) and preseed (HTTP) from pxe.serve, the preseed's
                    own late setup runs in the disk, and its callback disarms the MAC
    1 first boot    the VM's BIOS and GRUB boot the plain kernel; xenlab-provision makes the VG,
                    installs Xen, reboots (pxe.status shows each step)
    2 xen           GRUB boots Xen by default; host.check's Xen lines; xl list shows Domain-0
    3 provision     xenbr0, forwarding, netplan; the golden image from pxe.serve; guest-01 built
                    (LVs that really activate), started
    4 from outside  ping the bridge and guest-01 from the router; ssh into guest-01 as the lab
                    says (key, recorded host key; password, root, a foreign address refused)
    5 lifecycle     guest.list, xentop, guest.info; pause/unpause; stop/start; the console log;
                    guest.check; xl -N create of the pvgrub and pygrub cfgs
    6 reboot        dom0 reboots; guest-01 comes back by itself from /etc/xen/auto
    7 report        host.report and host.diagram of the live host, copied out

Everything it starts (qemu, pxe.serve, namespaces with their taps and veths) is stopped by PID or
removed at the end, on a failure and on Ctrl-C too; loop devices live only inside the disk steps.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from pipeline import chroot, units
from pipeline.config import Site, load_site
from pipeline.errors import BadInput, Failed, Problem
from pipeline.lab.rehearsal import checks, disk, installer, remote, topology, vm
from pipeline.lab.rehearsal.run import SITE_FILE, Run
from pipeline.runner import Runner, interrupts_roll_back, run_checked
from pxe import arming, images, progress, wheelhouse

REPO = Path(__file__).resolve().parents[2]
PROFILES = ("ubuntu-18.04", "debian-12")
UPLINK_NIC = "ens3"  # what the installed host names its NIC (netplan matches it by MAC)
SERVE_TIMEOUT = 120


@dataclass
class Step:
    name: str
    status: str  # passed, failed, not run
    seconds: float
    detail: str


@dataclass
class Result:
    steps: List[Step]
    output: Path
    final: str  # pxe.status's last line for the host
    kept: Optional[Path] = None

    @property
    def ok(self) -> bool:
        return all(step.status == "passed" for step in self.steps)


# --- the site -----------------------------------------------------------------------------------
def read_site(path: Optional[str], profile: Optional[str]) -> dict:
    """The rehearsal's site file as data, with --profile applied to the host and its guests."""
    from ruamel.yaml import YAML

    file = Path(path) if path else SITE_FILE
    try:
        data = YAML(typ="safe").load(file.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput("--site", str(file), f"cannot be read as YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput("--site", str(file), "is not a mapping of sections")
    if profile is not None:
        if profile not in PROFILES:
            raise BadInput("--profile", profile, f"must be one of {', '.join(PROFILES)}")
        data.setdefault("install", {})["profile"] = profile
        for guest in (data.get("guests") or {}).values():
            guest["profile"] = profile
    return data


def problems(site: Site) -> List[tuple]:
    """What the rehearsal cannot work with, beyond what the site model checks itself."""
    r, found = site.rehearse, []
    if site.install.profile not in PROFILES:
        found.append(("install.profile", site.install.profile, f"must be one of {PROFILES}"))
    if not site.install.mac:
        found.append(("install.mac", None, "is required: the VM's NIC gets it"))
    if site.host.storage.kind != "lvm" or site.host.storage.device != site.install.disk:
        found.append(("host.storage.device", site.host.storage.device,
                      f"must be install.disk ({site.install.disk}) with kind lvm: the VG goes in"
                      " the space the install leaves free"))  # fmt: skip
    if r.uplink.network.overlaps(site.host.subnet) or r.outside.network.overlaps(site.host.subnet):
        found.append(("rehearse.uplink", str(r.uplink), f"overlaps host.subnet {site.host.subnet}"))
    if not site.guests:
        found.append(("guests", None, "needs at least one guest to check"))
    for name, guest in site.guests.items():
        allow = guest.ssh_allow_from
        if allow and not any(r.gateway in net for net in allow):
            found.append((f"guests.{name}.ssh_allow_from", [str(n) for n in allow],
                          f"must let the router ({r.gateway}) in"))  # fmt: skip
        if not allow or any(r.outside.ip in net for net in allow):
            found.append((f"guests.{name}.ssh_allow_from", [str(n) for n in allow],
                          f"must leave out rehearse.outside ({r.outside.ip}): its refusal is"
                          " checked"))  # fmt: skip
    return found


def with_key(data: dict, public_key: str) -> dict:
    """The run's site: the admin's key for the host and every guest; pxe.serve on the router."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    data["install"] = dict(data.get("install") or {}, ssh_authorized_keys=[public_key])
    data["guests"] = {
        name: dict(guest or {}, ssh_authorized_keys=[public_key])
        for name, guest in (data.get("guests") or {}).items()
    }
    data["pxe"] = dict(data.get("pxe") or {}, interface=topology.BRIDGE)
    return data


def uplink_netplan(site: Site) -> str:
    """/etc/netplan/01-netcfg.yaml as the installer leaves it for a static uplink."""
    import io

    from ruamel.yaml import YAML

    r = site.rehearse
    nic = {
        "match": {"macaddress": site.install.mac},
        "set-name": UPLINK_NIC,
        "addresses": [str(r.uplink)],
        "gateway4": str(r.gateway),
        "nameservers": {"addresses": [str(r.gateway)]},
    }
    out = io.StringIO()
    out.write("# the uplink, as the install left it (lab.rehearse)\n")
    YAML().dump({"network": {"version": 2, "renderer": "networkd",
                             "ethernets": {UPLINK_NIC: nic}}}, out)  # fmt: skip
    return out.getvalue()


# --- the stages ---------------------------------------------------------------------------------
def _python_in(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(topology.exec_argv(ns, [sys.executable, "-m", *args]), cwd=str(REPO),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def prepare(run: Run) -> str:
    from pipeline.guest import image

    shown = []
    for profile in sorted({g.profile for g in run.site.guests.values()}):
        golden = image.ensure(profile, run.site.images, run.say)
        shown.append(f"image {profile} {golden.key}")
    images.index(Path(run.site.images.cache_dir), run.say)  # the tarballs pxe.serve hands out
    changed = wheelhouse.build(Runner(), run.tftp_root, run.site.install.profile, run.say)
    shown.append(f"wheelhouse ({len(changed)} files new)")
    run.base_disk = disk.base_disk(run.site, run.say)
    shown.append(f"host disk {run.base_disk.path.parent.name}")
    return "; ".join(shown)


def _start_serve(run: Run) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    argv = [str(Path(sys.executable).with_name("invoke")), "--search-root", str(REPO),
            "-f", str(run.site_file), "pxe.serve", "--root", str(run.work)]  # fmt: skip
    with open(str(run.serve_log), "ab") as log:
        run.serve = subprocess.Popen(topology.exec_argv(run.topo.router, argv), cwd=str(REPO),
                                     env=env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + SERVE_TIMEOUT
    while "serving " not in run.serve_log.read_text(errors="replace"):
        if run.serve.poll() is not None or time.monotonic() > deadline:
            raise Failed("pxe.serve did not start:\n" + run.serve_log.read_text()[-3000:])
        time.sleep(0.5)


def install(run: Run) -> str:
    topology.create(run.topo, run.site)
    _start_serve(run)
    arming.arm(run.pxe_root, Path(run.site.pxe.state_dir), run.mac)  # under the run's --root
    topology.add_installer(run.topo, run.site)
    got = run.work / "install"
    got.mkdir()
    server = str(run.site.rehearse.gateway)
    proc = _python_in(run.topo.installer, installer.__name__, "preseed", server, run.mac, str(got))
    if proc.returncode != 0:
        raise Failed(f"the installer's preseed fetch failed: {proc.stderr.strip()}")
    setup = (got / "setup.sh").read_text()
    done = disk.install(run.base_disk, run.disk, setup, run.topo.installer,
                        uplink_netplan(run.site), run.say)  # fmt: skip
    (run.output / "late-setup.log").write_text(done.output)
    known = "".join(f"{run.site.rehearse.uplink.ip} {key}\n" for key in done.host_keys)
    known_hosts = run.work / "known_hosts.dom0"
    known_hosts.write_text(known)
    callback = (got / "callback-url").read_text().strip()
    proc = _python_in(run.topo.installer, installer.__name__, "callback", callback)
    if proc.returncode != 0:
        raise Failed(f"the install's callback failed: {proc.stderr.strip()}")
    topology.remove_installer(run.topo)
    if arming.is_armed(run.state_dir, run.mac):
        raise Failed(f"{run.mac} is still armed after the install's callback")
    run.dom0 = remote.Ssh(run.topo.router, run.site.install.user, str(run.site.rehearse.uplink.ip),
                          run.key, known_hosts)  # fmt: skip
    entry = progress.load(run.state_dir).get(run.mac, {})
    return (f"preseed served to {run.site.rehearse.uplink.ip}, late setup in the disk"
            f" ({done.seconds:.0f} s), callback: pxe.status {progress.describe(entry)}")  # fmt: skip


def first_boot(run: Run) -> str:
    r = run.site.rehearse
    run.vm = vm.start(run.topo.router, run.disk, run.console, run.mac, r.memory // units.MiB,
                      r.cpus, run.work / "qemu.log")  # fmt: skip
    return checks.first_boot(run)


STAGES: List[tuple] = [
    ("prepare", prepare),
    ("install", install),
    ("1 first boot", first_boot),
    ("2 xen", checks.xen_boot),
    ("3 provision", checks.provision_done),
    ("4 from outside", checks.from_outside),
    ("5 lifecycle", checks.lifecycle),
    ("6 reboot", checks.reboot),
    ("7 report", checks.report),
]


# --- the driver ---------------------------------------------------------------------------------
def _failure_output(run: Run, say: Callable[[str], None]) -> None:
    """The failed step's own output: the serial console, the provision journal, pxe.serve."""
    if run.vm is not None:
        say("--- the VM's serial console (last 60 lines):")
        for line in run.vm.tail(60):
            say(f"  | {line}")
    if run.dom0 is not None and run.vm is not None and run.vm.running():
        for title, command in (
            ("xenlab-provision's journal in dom0 (last 60 lines)",
             "sudo -n journalctl -u xenlab-provision --no-pager -n 60"),
            ("xl list and the guests' xl logs in dom0",
             "sudo -n sh -c 'xl list; tail -n 15 /var/log/xen/xl-*.log'"),
        ):  # fmt: skip
            proc = run.dom0.run(command, timeout=60)
            say(f"--- {title}:")
            for line in (proc.stdout or proc.stderr).splitlines():
                say(f"  | {line}")
    if run.serve_log.exists():
        say("--- pxe.serve (last 15 lines):")
        for line in run.serve_log.read_text(errors="replace").splitlines()[-15:]:
            say(f"  | {line}")


def _table(steps: List[Step]) -> List[str]:
    rows = ["| step | result | time | what it showed |", "| --- | --- | --- | --- |"]
    for s in steps:
        rows.append(f"| {s.name} | {s.status} | {s.seconds:.0f} s | {s.detail.replace('|', '/')} |")
    passed = sum(1 for s in steps if s.status == "passed")
    total = sum(s.seconds for s in steps)
    rows.append(f"| all | {passed} of {len(steps)} passed | {total:.0f} s | |")
    return rows


def rehearse(
    site_path: Optional[str] = None,
    profile: Optional[str] = None,
    output: Optional[str] = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> Result:
    """Run every stage; stop at the first that fails (its output said); clean up in any case."""
    data = read_site(site_path, profile)
    site = load_site(data)  # bad input (exit 2) before anything is made
    found = problems(site)
    if found:
        raise BadInput.of([Problem(*p) for p in found])
    from pipeline.host import provision as host_provision

    host_provision.check_for_arming(site)  # the site as the installed host will read it
    with _alone(Path(site.rehearse.cache_dir), say):
        return _run(site, data, output, keep, say)


def _alone(cache_dir: Path, say: Callable[[str], None]):
    """One rehearsal at a time on a machine: two emulated Xen hosts on two cores starve each
    other until libxl's hotplug scripts time out (seen: "killing execution of
    /etc/xen/scripts/block add because of timeout") and ssh gives up."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = cache_dir / "rehearse.lock"
    return chroot.locked(
        lock, lambda: say(f"another rehearsal runs on this machine ({lock}): waiting")
    )


def _run(site: Site, data: dict, output: Optional[str], keep: bool,
         say: Callable[[str], None]) -> Result:  # fmt: skip
    run_id = secrets.token_hex(3)
    work = Path(site.rehearse.cache_dir) / "runs" / run_id
    out = Path(output).resolve() if output else Path(site.rehearse.cache_dir) / "output" / run_id
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    transcript = open(str(out / "transcript.txt"), "a")

    def said(line: str) -> None:
        say(line)
        transcript.write(line + "\n")
        transcript.flush()

    key = work / "admin_key"
    run_checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"xenlab-rehearsal-{run_id}",
                 "-f", str(key)])  # fmt: skip
    data = with_key(data, key.with_suffix(".pub").read_text().strip())
    site = load_site(data)
    site_file = work / "site.json"  # JSON: every string quoted, whatever YAML 1.1 makes of it
    site_file.write_text(json.dumps(data, indent=1, default=str))
    run = Run(site, site_file, work, out, topology.named(run_id), key, said)
    said(f"lab.rehearse {run_id}: {site.install.profile} host {site.install.hostname}"
         f" ({site.install.mac}), guests {', '.join(site.guests)}; files in {work}, kept in {out}")  # fmt: skip
    steps: List[Step] = []
    try:
        with interrupts_roll_back():
            for name, stage in STAGES:
                started = time.monotonic()
                said(f"--- {name}")
                try:
                    detail = stage(run)
                except (Failed, BadInput, OSError, subprocess.SubprocessError) as exc:
                    steps.append(
                        Step(name, "failed", time.monotonic() - started, str(exc).splitlines()[0])
                    )
                    said(f"step {name}: FAILED after {steps[-1].seconds:.0f} s: {exc}")
                    _failure_output(run, said)
                    break
                steps.append(Step(name, "passed", time.monotonic() - started, detail))
                said(f"step {name}: passed ({steps[-1].seconds:.0f} s): {detail}")
    finally:
        for name, _ in STAGES[len(steps) :]:
            steps.append(Step(name, "not run", 0.0, ""))
        run.close()
        entry = progress.load(run.state_dir).get(run.mac, {}) if run.state_dir.is_dir() else {}
        final = f"{run.mac} {progress.describe(entry) if entry else '-'}"
        table = _table(steps)
        (out / "steps.md").write_text("\n".join(table) + "\n")
        for line in table:
            said(line)
        said(f"pxe.status: {final}")
        kept = work if keep else None
        if kept is None:
            shutil.rmtree(str(work), ignore_errors=True)
        else:
            said(f"kept the VM's disk and files in {kept}")
        transcript.close()
    return Result(steps, out, final, kept)
