"""The preseed one armed host gets: rendered from install.* (validated in pipeline/config.py).

The in-target setup (sshd, keys, shell, sudo, terminfo, the unpartitioned space) is a shell
script of its own (templates/late_setup.sh.j2) that the preseed carries base64-encoded: a preseed
value is one line, and base64 needs no quoting inside it.

Zero touch (`Provision`, when pxe.serve has a wheelhouse): the script also installs xenlab from
pxe.serve's wheelhouse into /opt/xenlab/.venv, writes the site file for the host (host, images
and guests only: none of the install's own settings or secrets) and the URL its progress reports
go to (with the arming's token), and enables xenlab-provision.service, which runs
`invoke host.provision` at boot until it has finished once.
"""

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pipeline import mac as macs
from pipeline import units
from pipeline.config import InstallConfig
from pipeline.errors import BadInput
from pxe import partition_plan, profiles
from pxe.templating import Block, render_template

DATA = Path(__file__).resolve().parent / "data"
LOCKED = "!"  # user-setup takes "!" as the crypted password: a locked password
_CALLBACK = re.compile(r"^http://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~:%-]+)+/?$")
_ANY_MAC = "02:00:00:00:00:00"  # a locally administered MAC: preflight renders for it
_BASE_URL = re.compile(r"^http://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_REQUIREMENT = re.compile(r"^xenlab==[0-9][0-9A-Za-z.+-]*$")
_WHEEL = re.compile(r"^pip-[0-9][0-9A-Za-z.+-]*-py3-none-any\.whl$")
APP_DIR = "/opt/xenlab"  # xenlab on the installed host: tasks.py, images/, .venv
SITE_FILE = "/etc/xenlab/site.yaml"  # the host's site (0600); /opt/xenlab/invoke.yaml links to it
REPORT_FILE = "/etc/xenlab/report-url"  # where host.provision reports to, with the token (0600)
DONE_FILE = "/var/lib/xenlab/provisioned"  # host.provision's mark: finished once
UNIT = "xenlab-provision.service"
# shells whose package is always installed
_BASE_SHELLS = ("sh", "bash", "dash")


def terminfo_sources(install: InstallConfig) -> List[Tuple[str, str]]:
    """(name, terminfo source) for every install.terminfo; BadInput for one xenlab has none of."""
    found = []
    for name in install.terminfo:
        path = DATA / f"{name}.terminfo"
        if not path.is_file():
            known = sorted(p.stem for p in DATA.glob("*.terminfo"))
            raise BadInput(
                "install.terminfo", name, f"xenlab carries no terminfo source for it (has {known})"
            )
        text = path.read_text()
        found.append((name, Block("".join(line + "\n" for line in text.splitlines()))))
    return found


def packages(install: InstallConfig) -> List[str]:
    """install.packages, plus the user's shell and sudo, each once, in order."""
    wanted = list(install.packages)
    if install.shell not in _BASE_SHELLS:
        wanted.append(install.shell)
    wanted.append("sudo")
    return list(dict.fromkeys(wanted))


@dataclass(frozen=True)
class Provision:
    """What the late setup needs to make the new host provision itself (zero touch)."""

    base_url: str  # pxe.serve's HTTP, e.g. http://10.77.0.1:8080
    mac: str
    token: str  # the arming's token: the callback and the progress reports carry it
    site_yaml: str  # the host's site file (site_for_host)
    xenlab: str  # the requirement that installs xenlab, e.g. xenlab==0.1.0
    pip_wheel: str  # pip's wheel in the wheelhouse, run first (the release's pip is too old)
    python: str  # the interpreter on the host, e.g. python3.8
    python_packages: Tuple[str, ...]  # the release's packages that give it

    def check(self) -> None:
        for field, value, pattern in (
            ("base_url", self.base_url, _BASE_URL),
            ("token", self.token, _TOKEN),
            ("xenlab", self.xenlab, _REQUIREMENT),
            ("pip_wheel", self.pip_wheel, _WHEEL),
            ("python", self.python, re.compile(r"^python3(\.[0-9]+)?$")),
        ):
            if not pattern.fullmatch(value):
                raise BadInput(f"provision.{field}", value, "is not what the late setup takes")
        for package in self.python_packages:
            if not re.fullmatch(r"^[a-z0-9][a-z0-9+.-]+$", package):
                raise BadInput("provision.python_packages", package, "is not a package name")

    @property
    def host(self) -> str:
        """The server's address (or name) in base_url, without the port."""
        return self.base_url.split("//", 1)[1].split(":", 1)[0]

    @property
    def report_url(self) -> str:
        return f"{self.base_url}/progress/{self.mac}/{self.token}"


def _size(value: Optional[int]) -> Optional[str]:
    """Bytes as the site file writes sizes: the largest unit that holds them exactly."""
    if value is None:
        return None
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{-(-value // 1024)}K"


def site_for_host(site, images_source: Optional[str]) -> str:
    """The site file the installed host gets (YAML): its host, images and guests sections, with
    `images.source` pointing at pxe.serve; nothing of install.* (the password hash) or pxe.*."""
    from ruamel.yaml import YAML

    data: Dict[str, Any] = {
        "host": site.host.model_dump(mode="json"),
        "images": site.images.model_dump(mode="json"),
        "guests": {name: g.model_dump(mode="json") for name, g in site.guests.items()},
    }
    data["host"]["storage"]["size"] = _size(site.host.storage.size)
    data["host"]["xen"]["dom0_mem"] = _size(site.host.xen.dom0_mem)
    for name, guest in site.guests.items():
        for key in ("memory", "disk", "swap"):
            data["guests"][name][key] = _size(getattr(guest, key))
    if images_source:
        data["images"]["source"] = images_source
    out = io.StringIO()
    out.write(
        "# xenlab: this host's site, written by its install (pxe.serve); host.provision reads it\n"
    )
    YAML().dump(data, out)
    return out.getvalue()


def unit_file() -> str:
    return render_template("xenlab-provision.service.j2", app=APP_DIR, done=DONE_FILE,
                           report=REPORT_FILE, unit=UNIT)  # fmt: skip


def setup_script(install: InstallConfig, provision: Optional[Provision] = None) -> str:
    """The shell script the late_command runs inside the installed host."""
    plan = partition_plan.plan(install)
    if provision is not None:
        provision.check()
    return render_template(
        "late_setup.sh.j2",
        user=install.user,
        keys=install.ssh_authorized_keys,
        shell=install.shell,
        locked=install.password_hash is None,
        terminfo=terminfo_sources(install),
        disk=plan.disk,
        keep_free=plan.keep_free,
        provision=provision,
        app=APP_DIR,
        site_file=SITE_FILE,
        report_file=REPORT_FILE,
        unit=UNIT,
        site_b64=base64.b64encode(provision.site_yaml.encode()).decode() if provision else "",
        unit_b64=base64.b64encode(unit_file().encode()).decode() if provision else "",
    )


def callback_for(mac: str, address: str, port: int, token: Optional[str] = None) -> str:
    """The URL the installer of `mac` fetches when it is done: pxe.serve's HTTP at `address` (an
    IP, or a name the host resolves) and `port`, which disarms the MAC; with the arming's
    `token`, without which pxe.serve refuses it."""
    url = f"http://{address}:{port}/callback/{mac}"
    return f"{url}/{token}" if token else url


def preflight(install: InstallConfig) -> partition_plan.Plan:
    """Check that a preseed can be made from `install` (BadInput names the field), before anything
    is fetched or served; the partition plan it would carry."""
    plan = partition_plan.plan(install)  # the disk's room first: the commonest mistake
    render(install, _ANY_MAC, callback_for(_ANY_MAC, "192.0.2.1", 80))
    return plan


def render(
    install: InstallConfig, mac: str, callback_url: str, provision: Optional[Provision] = None
) -> str:
    """The preseed for `mac`; its late_command ends by fetching `callback_url`. With `provision`,
    the late setup also makes the host provision itself (zero touch)."""
    try:
        mac = macs.normalise(mac)
    except ValueError as exc:
        raise BadInput("mac", mac, str(exc)) from None
    if not _CALLBACK.fullmatch(callback_url):
        raise BadInput("callback_url", callback_url, "is not a plain http URL")
    profile = profiles.get(install.profile)
    scheme, host, path = profiles.host_and_path(profile.mirror(install))
    security = profile.security_mirror(install)
    security_host = security_path = None
    if security:
        _, security_host, security_path = profiles.host_and_path(security)
    plan = partition_plan.plan(install)
    setup = base64.b64encode(setup_script(install, provision).encode()).decode()
    return render_template(
        "preseed.cfg.j2",
        mac=mac,
        profile=profile.name,
        distro=profile.distro,
        suite=profile.suite,
        locale=install.locale,
        keyboard=install.keyboard,
        hostname=install.hostname,
        domain=install.domain,
        timezone=install.timezone,
        mirror_scheme=scheme,
        mirror_host=host,
        mirror_path=path,
        security_host=security_host,
        security_path=security_path,
        user=install.user,
        password=install.password_hash or LOCKED,
        disk=plan.disk,
        plan_summary=(
            f"/ {units.human(install.root_size)}, swap {units.human(install.swap_size)}, "
            f"at least {units.human(install.keep_free)} left unpartitioned"
        ),
        recipe=partition_plan.expert_recipe(plan),
        packages=packages(install),
        setup_b64=setup,
        callback_url=callback_url,
    )
