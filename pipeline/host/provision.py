"""host.provision: the host's whole part of the lab from the site config, in order, re-runnable.

    storage -> xen -> reboot into Xen (when Xen is not running yet) -> network -> images -> guests
    -> check

Each step is the library function its own task calls (host.storage, host.xen, host.network,
image.build, guest.build, host.check), each idempotent, so a run can stop anywhere (a reboot, a
failure, a power cut) and the next run continues where it stopped: what is done already reports
"no changes". Every step is said with its outcome and time, and reported to pxe.serve when the host
was installed by it (`Reporter`: POST /progress/<mac>/<token>). `xenlab-provision.service` runs it
at boot until it has finished once (it leaves DONE_FILE).

Bad input stops it before the first change (exit 2): the site itself, a storage device that is not
set, a subnet that would cut the host off its own network (host.network's `safety_problems`), a
Xen package the release has no default for.
"""

import json
import subprocess
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional

from pipeline.config import Site
from pipeline.errors import BadInput, Failed, Problem
from pipeline.runner import Runner
from pxe.preseed import DONE_FILE  # under --root; the unit's ConditionPathExists

STEPS = ("storage", "xen", "reboot", "network", "images", "guests", "check")
REBOOT = ("systemctl", "reboot")


@dataclass
class Outcome:
    step: str
    status: str  # "no changes", "changed", "would change", "stopped", "failed", "skipped"
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"step {self.step}: {self.status}{detail} ({self.seconds:.1f} s)"


@dataclass
class Result:
    outcomes: List[Outcome] = field(default_factory=list)
    finished: bool = False  # every step ran and host.check holds
    stopped: Optional[str] = None  # why it stopped early (the reboot)
    guests: List[Dict[str, Optional[str]]] = field(default_factory=list)


class Reporter:
    """Reports each step to pxe.serve (the URL with the arming's token, from --report-file).
    A report that does not arrive is said and otherwise ignored: provisioning goes on."""

    def __init__(self, url: Optional[str], say: Callable[[str], None]):
        self.url = url
        self.say = say
        self.warned = False

    @classmethod
    def from_file(cls, path: Optional[str], say: Callable[[str], None]) -> "Reporter":
        if not path:
            return cls(None, say)
        try:
            url = Path(path).read_text().strip()
        except OSError as exc:
            raise BadInput("--report-file", path, f"cannot be read: {exc.strerror}") from None
        if not url.startswith("http://") or any(c.isspace() for c in url):
            raise BadInput("--report-file", path, "does not hold one http:// URL")
        return cls(url, say)

    def send(self, state: str, **fields) -> None:
        if not self.url:
            return
        body = json.dumps(dict(state=state, **fields)).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                resp.read()
        except OSError as exc:
            if not self.warned:  # the token is in the URL: never say it
                self.say(f"warning: progress report to pxe.serve failed: {exc}")
                self.warned = True


def xen_running() -> bool:
    """This system runs under Xen, as dom0."""
    try:
        kind = Path("/sys/hypervisor/type").read_text().strip()
        caps = Path("/proc/xen/capabilities").read_text()
    except OSError:
        return False
    return kind == "xen" and "control_d" in caps


def problems(site: Site, netns: Optional[str] = None, local: bool = True) -> List[Problem]:
    """What host.provision cannot work with, found before anything changes. `local`: also what
    only this machine can tell (its network), else only what the site itself says (pxe.arm)."""
    found: List[Problem] = []
    storage = site.host.storage
    if storage.kind == "lvm" and not storage.device:
        found.append(Problem("host.storage.device", None, "is required: the disk for the VG"))
    for name, guest in site.guests.items():
        if guest.ip is None:
            found.append(Problem(f"guests.{name}.ip", None, "is required to build the guest"))
    if local:
        from pipeline.host import network as host_network

        found += host_network.safety_problems(site.host, netns)
    return found


def check_for_arming(site: Site) -> None:
    """pxe.arm's check of the whole site, as the installed host's host.provision will see it:
    BadInput (exit 2) listing every problem, before any server boots."""
    from ruamel.yaml import YAML

    from pipeline.config import load_site
    from pxe import preseed

    preseed.preflight(site.install)
    found = problems(site, local=False)
    if site.host.storage.kind == "lvm" and site.install.disk == site.host.storage.device:
        pass  # the install leaves install.keep_free of that disk free: host.storage's place
    try:  # the site file the host gets must load there as it does here
        load_site(YAML(typ="safe").load(preseed.site_for_host(site, "http://192.0.2.1/images")))
    except BadInput as exc:
        found += exc.problems
    if found:
        raise BadInput.of(found)


def _guest_exists(site: Site, name: str, root: Path) -> bool:
    from pipeline.guest import build as guest_build
    from pipeline.guest import checks as guest_checks

    state = root / guest_build.STATE_DIR.lstrip("/") / name
    return bool(guest_checks.existing(site, name, root, state))


def provision(
    site: Site,
    *,
    dry_run: bool = False,
    root: Path = Path("/"),
    netns: Optional[str] = None,
    reboot: bool = True,
    say: Callable[[str], None] = lambda _: None,
    reporter: Optional[Reporter] = None,
    running_xen: Callable[[], bool] = xen_running,
    run_reboot: Callable[[], None] = lambda: subprocess.run(list(REBOOT), check=True),
) -> Result:
    """Run the steps in order; stop at the reboot (or a failure, which raises after reporting)."""
    from pipeline.guest import build as guest_build
    from pipeline.guest import image
    from pipeline.host import check as host_check
    from pipeline.host import network as host_network
    from pipeline.host import storage as host_storage
    from pipeline.host import xen as host_xen

    if reporter is None or dry_run:  # a dry run changes nothing, pxe.serve's state included
        reporter = Reporter(None, say)
    found = problems(site, netns)
    if found:
        raise BadInput.of(found)
    host_xen.package_for(site.host.xen, root)  # BadInput for a release without a default
    result = Result()
    log: Deque[str] = deque(maxlen=40)

    def said(line: str) -> None:
        log.append(line)
        say(line)

    profiles = sorted({guest.profile for guest in site.guests.values()})
    guests = [name for name in site.guests]
    say(
        f"host.provision{' (dry run)' if dry_run else ''}: {' -> '.join(STEPS)};"
        f" storage {site.host.storage.kind} {site.host.storage.device or site.host.storage.dir}"
        f" VG {site.host.storage.volume_group}, bridge {site.host.bridge}"
        f" {site.host.bridge_interface}, images {', '.join(profiles) or 'none'},"
        f" guests {', '.join(guests) or 'none'}"
    )

    def step(name: str, work: Callable[[Runner], Optional[str]], with_root: bool = True) -> Outcome:
        """One step with its own runner; its outcome said and reported."""
        reporter.send("provisioning", step=name)
        runner = Runner(dry_run=dry_run, root=root if with_root else Path("/"), say=said)
        say(f"--- step {name}")
        started = time.monotonic()
        try:
            detail = work(runner) or ""
        except (BadInput, Failed, OSError) as exc:
            outcome = Outcome(name, "failed", str(exc).splitlines()[0] if str(exc) else "",
                              time.monotonic() - started)  # fmt: skip
            result.outcomes.append(outcome)
            say(outcome.line())
            reporter.send("failed", step=name, log=list(log) + str(exc).splitlines()[-10:])
            raise
        status = ("would change" if dry_run else "changed") if runner.changes else "no changes"
        outcome = Outcome(name, status, detail, time.monotonic() - started)
        result.outcomes.append(outcome)
        say(outcome.line())
        return outcome

    def storage(runner: Runner) -> str:
        done = host_storage.configure(site.host.storage, runner)
        if site.host.storage.kind == "dir":
            return f"guests' disks under {site.host.storage.dir}"
        return f"VG {done.volume_group} on {done.pv}"

    def xen(runner: Runner) -> str:
        done = host_xen.configure(site.host.xen, runner)
        return f"{done.package}, GRUB default {done.grub_default or '(after update-grub)'}"

    step("storage", storage, with_root=False)
    step("xen", xen)

    # The reboot into Xen: only when this system does not run under it yet.
    started = time.monotonic()
    if running_xen():
        outcome = Outcome("reboot", "no changes", "running under Xen already")
    elif dry_run:
        outcome = Outcome(
            "reboot", "would change",
            "not running under Xen: would reboot into it" if reboot
            else "not running under Xen: --no-reboot would stop here",
        )  # fmt: skip
    elif not reboot:
        outcome = Outcome(
            "reboot", "stopped",
            "Xen is installed and GRUB's default, but this system does not run under it;"
            " --no-reboot: reboot into Xen, then run host.provision again to continue",
        )  # fmt: skip
    else:
        outcome = Outcome("reboot", "rebooting", "into Xen; host.provision continues at boot")
    outcome.seconds = time.monotonic() - started
    result.outcomes.append(outcome)
    say(outcome.line())
    if outcome.status in ("stopped", "rebooting"):
        result.stopped = outcome.detail
        if outcome.status == "rebooting":
            reporter.send("rebooting", step="reboot")
            run_reboot()
        return result

    def network(runner: Runner) -> str:
        state = host_network.configure(site.host, runner, netns=netns)
        return f"{state.name} {state.state}, {', '.join(state.addresses) or 'no address'}"

    def images(runner: Runner) -> str:
        shown = []
        for profile in profiles:
            golden = image.ensure(profile, site.images, said, dry_run=dry_run)
            if golden is None:
                runner.changes.append(f"image {profile}")
                shown.append(f"{profile} (would {'fetch' if site.images.source else 'build'})")
            else:
                if not golden.reused:
                    runner.changes.append(f"image {profile}")
                shown.append(f"{profile} {golden.key} ({'reused' if golden.reused else 'new'})")
        return ", ".join(shown) or "no guests, no images"

    def build_guests(runner: Runner) -> str:
        made, there = [], []
        for name in guests:
            if _guest_exists(site, name, runner.root):
                there.append(name)
                continue
            if dry_run:
                runner.changes.append(f"guest {name}")
                guest = site.guests[name]
                said(f"would build guest {name} ({guest.profile}, {guest.ip}) and start it")
                made.append(name)
                continue
            built = guest_build.build(site, name, runner, start=True, say=said)
            made.append(f"{name} ({built.started})")
        parts = []
        if made:
            parts.append(f"{'would build' if dry_run else 'built'} {', '.join(made)}")
        if there:
            parts.append(f"there already: {', '.join(there)}")
        return "; ".join(parts) or "no guests"

    def check(runner: Runner) -> str:
        if dry_run:
            return "would run host.check"
        lines = host_check.evaluate(host_check.gather(site.host, netns=netns))
        missing = host_check.summary(lines)
        if missing:
            raise Failed(f"host.check: {missing}")
        return "every step holds"

    step("network", network)
    step("images", images)
    step("guests", build_guests)
    step("check", check)
    result.guests = [
        {"name": name, "ip": str(g.ip) if g.ip else None} for name, g in site.guests.items()
    ]
    if dry_run:
        return result
    done = Runner(root=root)
    done.write_file(DONE_FILE, time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    result.finished = True
    reporter.send("done", guests=result.guests)
    return result
