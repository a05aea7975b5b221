"""The preseed one armed host gets: rendered from install.* (validated in pipeline/config.py).

The in-target setup (sshd, keys, shell, sudo, terminfo, the unpartitioned space) is a shell
script of its own (templates/late_setup.sh.j2) that the preseed carries base64-encoded: a preseed
value is one line, and base64 needs no quoting inside it.
"""

import base64
import re
from pathlib import Path
from typing import List, Tuple

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


def setup_script(install: InstallConfig) -> str:
    """The shell script the late_command runs inside the installed host."""
    plan = partition_plan.plan(install)
    return render_template(
        "late_setup.sh.j2",
        user=install.user,
        keys=install.ssh_authorized_keys,
        shell=install.shell,
        locked=install.password_hash is None,
        terminfo=terminfo_sources(install),
        disk=plan.disk,
        keep_free=plan.keep_free,
    )


def callback_for(mac: str, address: str, port: int) -> str:
    """The URL the installer of `mac` fetches when it is done: pxe.serve's HTTP at `address` (an
    IP, or a name the host resolves) and `port`, which disarms the MAC."""
    return f"http://{address}:{port}/callback/{mac}"


def preflight(install: InstallConfig) -> partition_plan.Plan:
    """Check that a preseed can be made from `install` (BadInput names the field), before anything
    is fetched or served; the partition plan it would carry."""
    plan = partition_plan.plan(install)  # the disk's room first: the commonest mistake
    render(install, _ANY_MAC, callback_for(_ANY_MAC, "192.0.2.1", 80))
    return plan


def render(install: InstallConfig, mac: str, callback_url: str) -> str:
    """The preseed for `mac`; its late_command ends by fetching `callback_url`."""
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
    setup = base64.b64encode(setup_script(install).encode()).decode()
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
