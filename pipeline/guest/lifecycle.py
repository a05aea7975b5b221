"""A built guest's day-to-day with xl: start, stop, restart, pause, unpause, console, info,
autostart and remove, each for one guest of the site config.

Every xl command goes through pipeline.xl.call. Each task first checks its input (the guest is
in the site config: BadInput, exit 2) and then that Xen runs here (Failed, exit 1); autostart and
remove are about files and volumes, so they also work where Xen does not run (nothing can be
running there). Changes go through the runner: --dry-run says what would happen.
"""

import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from pipeline import lvm, xl
from pipeline.config import GuestConfig, Site
from pipeline.errors import BadInput, Failed
from pipeline.guest import volumes, xen_cfg
from pipeline.guest.build import STATE_DIR  # per guest: seed.iso, root-password, known_hosts
from pipeline.runner import Runner, checked

NOT_XEN = (
    "Xen is not running here: xl info does not answer (no hypervisor, or no xl);"
    " invoke host.check says what is missing"
)
# After `xl shutdown -w` or `xl destroy` returns, Xen still tears the domain down: 3.5 to 10 s
# measured (recipes); this bounds that wait on top of the guest's own stop timeout.
TEARDOWN_S = 30


def _say(_: str) -> None:
    pass


# --- what every task checks first -------------------------------------------------------------
def guest_of(site: Site, name: Optional[str]) -> GuestConfig:
    """The guest's config, or BadInput naming it and the configured guests."""
    if name and name in site.guests:
        return site.guests[name]
    configured = ", ".join(sorted(site.guests)) or "none"
    raise BadInput(
        "--name", name, f"is not a guest of the site config (configured guests: {configured})"
    )


def require_xen() -> None:
    if not xl.running():
        raise Failed(NOT_XEN)


def domain(name: str) -> Optional[xl.Domain]:
    """The running domain `name`, or None (`xl list NAME` fails for a name Xen does not know)."""
    answer = xl.call("list", name)
    return xl.find(xl.parse_list(answer.out), name) if answer.ok else None


def _must(answer: xl.Answer, what: str) -> xl.Answer:
    """`answer` if xl succeeded; Failed with xl's own words otherwise (the runner's one message)."""
    checked(subprocess.CompletedProcess(what, answer.code, answer.out, answer.err), what)
    return answer


def _xl(*args: str, timeout: Optional[float] = None) -> xl.Answer:
    """xl ARGS that must work."""
    return _must(xl.call(*args, timeout=timeout), f"xl {' '.join(args)}")


def _cfg(runner: Runner, name: str) -> Path:
    cfg = xen_cfg.cfg_path(runner.root, name)
    if not cfg.is_file():
        raise Failed(f"there is no {cfg}: invoke guest.build --name {name} makes it")
    return cfg


@dataclass(frozen=True)
class Done:
    """What a lifecycle task did (or, in a dry run, would do), in one line for a person."""

    name: str
    changed: bool
    message: str


# --- start, stop, restart -----------------------------------------------------------------------
def start(
    site: Site,
    name: str,
    runner: Runner,
    *,
    say: Callable[[str], None] = _say,
    wait: Callable[[str, float], bool] = xl.wait_gone,
) -> Done:
    """`xl create` the guest's cfg, unless it runs already. A domain of that name that is still
    going away (shut down or dying, as after `xl shutdown -w`) is waited for first, up to the
    guest's stop_timeout: xl would refuse the new one with "already exists"."""
    guest = guest_of(site, name)
    require_xen()
    cfg = _cfg(runner, name)
    dom = domain(name)
    if dom is not None and not xl.leaving(dom.state):
        state = xl.state_word(dom.state)
        return Done(name, False, f"{name} is {state} already (domain {dom.id}): no changes")
    if dom is not None:
        _wait_gone(runner, name, dom, guest.stop_timeout, say, wait)

    def create() -> None:
        answer = xl.call("create", str(cfg))
        if not answer.ok and "already exists" in answer.err and wait(name, guest.stop_timeout):
            # The old domain went between our look and xl's (or xl saw its last moments).
            answer = xl.call("create", str(cfg))
        _must(answer, f"xl create {cfg}")

    runner.change(f"start {name} (xl create {cfg})", create)
    return Done(name, True, f"{name} {'would be ' if runner.dry_run else ''}started")


def _wait_gone(
    runner: Runner,
    name: str,
    dom: xl.Domain,
    timeout: float,
    say: Callable[[str], None],
    wait: Callable[[str, float], bool],
) -> None:
    state = ", ".join(xl.decode_state(dom.state)) or "no state flag"
    if runner.dry_run:
        runner.say(f"would wait up to {timeout:.0f} s for the old domain {dom.id} ({state}) to go")
        return
    say(f"{name}: the old domain {dom.id} is still going away ({state}); waiting for it")
    started = time.monotonic()
    if not wait(name, timeout):
        raise Failed(
            f"{name}: domain {dom.id} is still there after {timeout:.0f} s ({state});"
            f" invoke guest.stop --name {name} --force destroys it"
        )
    say(f"{name}: gone after {time.monotonic() - started:.1f} s")


def stop(
    site: Site,
    name: str,
    runner: Runner,
    *,
    force: bool = False,
    timeout: Optional[int] = None,
    say: Callable[[str], None] = _say,
    wait: Callable[[str, float], bool] = xl.wait_gone,
) -> Done:
    """Shut the guest down cleanly and wait until Xen has torn the domain down; `force`: destroy.

    `timeout` (default guests.NAME.stop_timeout) bounds the guest's shutdown; a guest that does
    not finish in time is left running and the error says what to do."""
    guest = guest_of(site, name)
    require_xen()
    limit = timeout or guest.stop_timeout
    dom = domain(name)
    if dom is None:
        return Done(name, False, f"{name} is not running: no changes")
    if force:
        runner.change(f"destroy {name} (xl destroy, domain {dom.id})", lambda: _xl("destroy", name))
    elif not xl.leaving(dom.state):
        if xl.state_word(dom.state) == "paused":
            # A paused guest cannot acknowledge the shutdown request: xl gives up after 60 s
            # ("guest didn't acknowledge control request: -9", recorded on Xen 4.17).
            runner.change(f"unpause {name} first, so it can shut down", lambda: _unpause(name))

        def shutdown() -> None:
            answer = xl.call("shutdown", "-w", name, timeout=limit)
            if answer.code == 124:
                raise Failed(
                    f"{name} did not shut down within {limit} s; see what it does with invoke"
                    f" guest.console --name {name}, or destroy it with invoke guest.stop"
                    f" --name {name} --force"
                )
            _must(answer, f"xl shutdown -w {name}")

        runner.change(f"shut {name} down (xl shutdown -w, up to {limit} s)", shutdown)
    if not runner.dry_run:
        started = time.monotonic()
        if not wait(name, TEARDOWN_S):
            _reap(runner, name, wait)
        say(f"{name}: domain gone {time.monotonic() - started:.1f} s after xl returned")
    verb = "destroyed" if force else "stopped"
    return Done(name, True, f"{name} {'would be ' if runner.dry_run else ''}{verb}")


def _reap(runner: Runner, name: str, wait: Callable[[str, float], bool] = xl.wait_gone) -> None:
    """The domain shut down but nothing removes it: the `xl create` that watches it and acts on
    on_poweroff is gone (killed with the cgroup of the systemd unit that started the guest, or
    by hand), so the domain stays in state shutdown for ever. Do what on_poweroff="destroy" asks."""
    left = domain(name)
    if left is not None and xl.state_word(left.state) == "shutdown":
        runner.say(f"{name}: no xl process removes the shut-down domain {left.id}; destroying it")
        xl.call("destroy", name)  # a late xl monitor may win the race: only the outcome counts
        if wait(name, TEARDOWN_S):
            return
        left = domain(name)
    if left is not None:
        state = ", ".join(xl.decode_state(left.state))
        raise Failed(
            f"{name} has shut down, but Xen still lists its domain after {TEARDOWN_S} s"
            f" ({state}); invoke guest.stop --name {name} --force destroys it"
        )


def restart(site: Site, name: str, runner: Runner, **kwargs: Any) -> Done:
    """Stop (cleanly), then start from the cfg: a new domain that reads the cfg again (xl reboot
    would keep the old domain's configuration)."""
    say = kwargs.get("say", _say)
    stopped = stop(site, name, runner, **kwargs)
    say(stopped.message)
    if runner.dry_run:  # the old domain is still there: start would see it running
        cfg = _cfg(runner, name)
        runner.change(f"start {name} (xl create {cfg})", lambda: None)
    else:
        start(site, name, runner, say=say, wait=kwargs.get("wait", xl.wait_gone))
    return Done(name, True, f"{name} {'would be ' if runner.dry_run else ''}restarted")


# --- pause, unpause, console ------------------------------------------------------------------
def pause(site: Site, name: str, runner: Runner, *, on: bool = True) -> Done:
    """`xl pause` (on) or `xl unpause`: the domain keeps its memory but gets no CPU time."""
    guest_of(site, name)
    require_xen()
    dom = domain(name)
    if dom is None:
        raise Failed(f"{name} is not running: invoke guest.start --name {name}")
    paused = "p" in dom.state[2:3]
    if paused == on:
        return Done(
            name, False, f"{name} is {'paused' if on else 'not paused'} already: no changes"
        )
    verb = "pause" if on else "unpause"
    change = (lambda: _xl("pause", name)) if on else (lambda: _unpause(name))
    runner.change(f"{verb} {name} (xl {verb}, domain {dom.id})", change)
    return Done(name, True, f"{name} {'would be ' if runner.dry_run else ''}{verb}d")


# Xen counts pauses: a domain paused twice (xl pause, twice) stays paused after one xl unpause
# (recorded on Xen 4.17). guest.pause never pauses a paused domain; unpausing repeats up to this.
MAX_UNPAUSE = 16


def _unpause(name: str) -> None:
    for _ in range(MAX_UNPAUSE):
        _xl("unpause", name)
        dom = domain(name)
        if dom is None or "p" not in dom.state[2:3]:
            return
    raise Failed(f"{name} is still paused after {MAX_UNPAUSE} xl unpause")


def console(site: Site, name: str) -> List[str]:
    """The argv that attaches to the guest's console (the task execs it)."""
    guest_of(site, name)
    require_xen()
    if domain(name) is None:
        raise Failed(f"{name} is not running: invoke guest.start --name {name}")
    return ["xl", "console", name]


def console_log(site: Site, name: str, root: Path, lines: int = 50) -> List[str]:
    """The last `lines` of the guest's console as xenconsoled logged it (host.xen turns that on),
    escape sequences and all; Failed when there is no log."""
    guest_of(site, name)
    path = xen_cfg.console_log_path(root, name)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise Failed(
            f"no console log of {name} at {path} ({exc.strerror}): host.xen turns logging on;"
            " xenconsoled starts logging when it restarts (the next boot)"
        ) from None
    return text.replace("\r\n", "\n").splitlines()[-lines:]


# --- info ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Info:
    name: str
    state: str  # one word: running, blocked, paused, ..., or stopped
    flags: Optional[str]  # xl's six letters while it runs
    states: List[str]
    id: Optional[int]
    memory_mib: Optional[int]
    vcpus: Optional[int]
    cpu_time_s: Optional[float]
    uptime_s: Optional[int]
    boot: str
    disks: List[Dict[str, Any]]
    vifs: List[Dict[str, Any]]
    autostart: bool
    cfg: str
    source: str  # where disks and vifs were read: 'xl list -l' or the cfg
    notes: List[str] = field(default_factory=list)

    def as_json(self) -> Dict[str, Any]:
        return asdict(self)

    def lines(self) -> List[str]:
        """What `guest.info` prints, one fact a line."""
        uptime = _duration(self.uptime_s) if self.uptime_s is not None else "-"
        out = [
            f"Name      :  {self.name}",
            f"State     :  {self.state}"
            + (f" ({self.flags}: {', '.join(self.states) or 'no flag'})" if self.flags else ""),
            f"Domain ID :  {self.id if self.id is not None else '-'}",
            f"Memory    :  {self.memory_mib if self.memory_mib is not None else '-'} MiB",
            f"vCPUs     :  {self.vcpus if self.vcpus is not None else '-'}",
            f"CPU time  :  {'-' if self.cpu_time_s is None else f'{self.cpu_time_s:.1f} s'}",
            f"Uptime    :  {uptime}",
            f"Boot      :  {self.boot}",
            f"Autostart :  {'yes' if self.autostart else 'no'}",
            f"Config    :  {self.cfg}",
        ]
        for disk in self.disks:
            out.append(
                f"Disk      :  {disk['vdev']} -> {disk['target']} ({disk['backing']},"
                f" {'read-write' if disk['writable'] else 'read-only'}"
                f"{', cdrom' if disk['cdrom'] else ''})"
            )
        for vif in self.vifs:
            port = f" as {vif['vif']}" if vif.get("vif") else ""
            out.append(
                f"Network   :  {vif['mac'] or '-'}, {vif['ip'] or '-'} on {vif['bridge'] or '-'}"
                + port
            )
        out += [f"Note      :  {note}" for note in self.notes]
        return out


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} days, {clock}" if days else clock


def backing(target: str, storage_vg: Optional[str] = None) -> str:
    """What a disk target is: an LV (/dev/VG/LV), another block device, or an image file."""
    parts = target.split("/")
    if len(parts) == 4 and parts[1] == "dev" and parts[2] not in ("mapper", "disk"):
        vg, lv = parts[2], parts[3]
        if storage_vg is None or vg == storage_vg or lvm_known(vg):
            return f"LV {vg}/{lv}"
    if target.startswith("/dev/"):
        return "block device"
    return "image file"


def lvm_known(vg: str) -> bool:
    try:
        return lvm.vg(vg) is not None
    except (OSError, Failed):
        return False


def _disks_of_cfg(text: str, vg: Optional[str]) -> List[Dict[str, Any]]:
    found = []
    for disk in xen_cfg.parse_disks(text):
        target = disk.get("target", "")
        found.append(
            {
                "vdev": disk.get("vdev", ""),
                "target": target,
                "backing": backing(target, vg),
                "writable": disk.get("access", "rw") in ("rw", "w"),
                "cdrom": disk.get("devtype") == "cdrom",
            }
        )
    return found


def info(site: Site, name: str, root: Path) -> Info:
    """The facts of `xl list` and `xl list -l` a person wants, or the cfg's when it is stopped."""
    guest = guest_of(site, name)
    require_xen()
    cfg = xen_cfg.cfg_path(root, name)
    text = cfg.read_text(errors="replace") if cfg.is_file() else ""
    vg = site.host.storage.volume_group if site.host.storage.kind == "lvm" else None
    dom = domain(name)
    notes = []
    disks = _disks_of_cfg(text, vg)
    vifs = [
        {"devid": i, "mac": v.get("mac"), "ip": v.get("ip"), "bridge": v.get("bridge")}
        for i, v in enumerate(xen_cfg.parse_vifs(text))
    ]
    source = "the cfg" if text else "none"
    boot = xen_cfg.cfg_boot(text) if text else guest.boot
    uptime = None
    if dom is not None:
        long = xl.call("list", "-l", name)
        try:
            configs = xl.parse_list_long(long.out) if long.ok else []
        except ValueError as exc:
            configs = []
            notes.append(f"{exc}; disks and network are the cfg's")
        mine = next((c for c in configs if c.name == name or c.domid == dom.id), None)
        if mine is not None:
            source = "xl list -l"
            boot = mine.boot
            disks = [
                {"vdev": d.vdev, "target": d.target, "backing": backing(d.target, vg),
                 "writable": d.writable, "cdrom": d.cdrom}
                for d in mine.disks
            ]  # fmt: skip
            vifs = [
                {"devid": n.devid, "mac": n.mac, "ip": n.ip, "bridge": n.bridge} for n in mine.nics
            ]
        for vif in vifs:
            vif["vif"] = f"vif{dom.id}.{vif['devid']}"  # the backend's name in dom0
        uptime = xl.parse_uptime(xl.run("uptime", name) or "").get(name)
    elif not text:
        notes.append(f"no {cfg}: invoke guest.build --name {name} makes it")
    return Info(
        name=name,
        state=xl.state_word(dom.state) if dom else "stopped",
        flags=dom.state if dom else None,
        states=xl.decode_state(dom.state) if dom else [],
        id=dom.id if dom else None,
        memory_mib=dom.memory_mib if dom else guest.memory >> 20,
        vcpus=dom.vcpus if dom else guest.vcpus,
        cpu_time_s=dom.time_s if dom else None,
        uptime_s=uptime,
        boot=boot,
        disks=disks,
        vifs=vifs,
        autostart=xen_cfg.autostart(root, name).on,
        cfg=str(cfg),
        source=source,
        notes=notes,
    )


# --- autostart ----------------------------------------------------------------------------------
def autostart(site: Site, name: str, runner: Runner, on: bool) -> Done:
    """The /etc/xen/auto link xendomains starts at boot: made (on) or removed (off)."""
    guest = guest_of(site, name)
    link = xen_cfg.link_path(runner.root, name)
    if on:
        _cfg(runner, name)  # a link to a missing cfg would start nothing
    with runner.transaction():
        changed = xen_cfg.set_autostart(runner, runner.root, name, on)
    state = "on" if on else "off"
    if not changed:
        message = f"autostart of {name} is {state} already ({link}): no changes"
    else:
        message = f"autostart of {name} {'would be' if runner.dry_run else 'is'} {state} ({link})"
    if guest.autostart != on:
        message += (
            f"; note: guests.{name}.autostart is {str(guest.autostart).lower()} in the site"
            " config, so a guest.build --force sets it back"
        )
    return Done(name, changed, message)


# --- remove -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    what: str  # for a person: 'domain guest-01 (id 3)', 'LV VolumeGroupXen/guest-01-disk', a path
    kind: str  # domain, link, cfg, state, lv, dir


def parts(site: Site, name: str, root: Path) -> List[Part]:
    """Everything of guest `name` there is: its domain, autostart link, cfg, state folder (seed,
    root password, known_hosts) and volumes; nothing of any other guest."""
    guest_of(site, name)
    found = []
    if xl.running():
        dom = domain(name)
        if dom is not None:
            found.append(Part(f"domain {name} (id {dom.id}, {xl.state_word(dom.state)})", "domain"))
    link = xen_cfg.link_path(root, name)
    if link.is_symlink() or link.exists():
        found.append(Part(str(link), "link"))
    cfg = xen_cfg.cfg_path(root, name)
    if cfg.exists():
        found.append(Part(str(cfg), "cfg"))
    state = root / STATE_DIR.lstrip("/") / name
    if state.exists():
        found.append(Part(str(state), "state"))
    storage = site.host.storage
    if storage.kind == "lvm":
        if lvm_known(storage.volume_group):
            present = {row["lv_name"] for row in lvm.lvs(storage.volume_group)}
            for volume in volumes.plan(storage, name, 0, 0):
                if volume.lv in present:
                    found.append(Part(f"LV {storage.volume_group}/{volume.lv}", "lv"))
    else:
        folder = Path(storage.dir) / name
        if folder.exists():
            found.append(Part(str(folder), "dir"))
    return found


@dataclass(frozen=True)
class Removed:
    name: str
    parts: List[Part]
    done: bool  # False: nothing was removed (no --yes, or a dry run)
    notes: List[str]


def remove(
    site: Site,
    name: str,
    runner: Runner,
    *,
    yes: bool = False,
    wait: Callable[[str, float], bool] = xl.wait_gone,
) -> Removed:
    """Remove guest `name` for good: domain (destroyed), link, cfg, state folder, volumes.

    Without `yes` it only lists them. Not undone on a failure half-way (what is gone is gone; a
    second run removes the rest); the domain goes first, so no running guest loses its disk."""
    guest_of(site, name)
    notes = [] if xl.running() else ["Xen is not running here: there is no domain to destroy"]
    found = parts(site, name, runner.root)
    if not yes or runner.dry_run or not found:  # the task lists what would go
        return Removed(name, found, False, notes)
    for part in found:
        if part.kind == "domain":
            runner.change(f"destroy {part.what}", lambda: _xl("destroy", name))
            if not wait(name, TEARDOWN_S):
                raise Failed(f"{name}: Xen still lists the domain {TEARDOWN_S} s after xl destroy")
        elif part.kind in ("link", "cfg"):
            path = Path(part.what)
            runner.change(f"remove {path}", path.unlink)
        elif part.kind == "state":
            runner.run(["rm", "-rf", "--one-file-system", part.what])
    # The volumes: exactly NAME-disk and NAME-swap, or the folder DIR/NAME (volumes.plan's).
    if any(part.kind in ("lv", "dir") for part in found):
        volumes.remove(runner, site.host.storage, name)
    # An empty /etc/xen/auto stays: it is xendomains' folder, not the guest's.
    return Removed(name, found, True, notes)
