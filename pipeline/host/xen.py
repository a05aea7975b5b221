"""host.xen: the Xen hypervisor installed and made the default boot, with dom0's memory capped.

As the lab does by hand (apt install xen-hypervisor-4.9-amd64, update-grub), plus what keeps dom0
stable: dom0_mem on Xen's command line and autoballooning off in /etc/xen/xl.conf.

How Xen becomes the default: Debian's and Ubuntu's Xen packages ship /etc/default/grub.d/xen.cfg,
which sets GRUB_DEFAULT to the title of 20_linux_xen's first entry ("<distributor> GNU/Linux, with
Xen hypervisor"). That is a conffile, so xenlab does not edit it: it writes its own
/etc/default/grub.d/xenlab.cfg, which grub-mkconfig sources after xen.cfg (it sorts later in any
locale) and which sets GRUB_DEFAULT the same way, from the same GRUB_DISTRIBUTOR and gettext
translation as 20_linux_xen's title. Being read last, it wins over /etc/default/grub and xen.cfg.

The guests' loader comes with it: grub-xen-host, whose GRUB Xen images are the kernel= of the
pvgrub and pvh guests guest.build writes. And the policy for running guests at host shutdown is
set explicitly in /etc/default/xendomains, the file the xendomains init script of Debian's and
Ubuntu's xen-utils-common reads (host.xen.on_shutdown): by default the package saves every
running guest's memory to /var/lib/xen/save and restores it at boot; xenlab's default is a clean
shutdown, after which the /etc/xen/auto links start the guests again.

With --root DIR the work happens in a chroot: apt-get and update-grub run inside DIR in a private
mount and PID namespace (pipeline.chroot.chroot_argv), where /proc, /sys and /dev are mounted
for them; those mounts vanish with the namespace, also when a command fails.
"""

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import jinja2

from pipeline import chroot, units
from pipeline.config import XenConfig
from pipeline.errors import BadInput, Failed
from pipeline.guest import xen_cfg
from pipeline.runner import Runner, checked

# The hypervisor package of each release (what `apt install` the lab uses there).
PACKAGES = {
    "bionic": "xen-hypervisor-4.9-amd64",
    "focal": "xen-hypervisor-4.11-amd64",
    "jammy": "xen-hypervisor-4.16-amd64",
    "bullseye": "xen-hypervisor-4.14-amd64",
    "bookworm": "xen-hypervisor-4.17-amd64",
}
GRUB_FILE = "/etc/default/grub.d/xenlab.cfg"
XL_CONF = "/etc/xen/xl.conf"
GRUB_CFG = "/boot/grub/grub.cfg"
POLICY_RC = "/usr/sbin/policy-rc.d"
XENDOMAINS = "/etc/default/xendomains"
# xenconsoled's options: the Xen init script reads /etc/default/xen, then /etc/default/xend where
# the release has it (bionic; its empty XENCONSOLED_ARGS would win), so both get them.
XEN_DEFAULTS = ("/etc/default/xen", "/etc/default/xend")
XENCONSOLED_ARGS = f'"--log=guest --log-dir={xen_cfg.CONSOLE_LOG_DIR}"'
SAVE_DIR = "/var/lib/xen/save"
# The keys of /etc/default/xendomains for each policy. Debian's init script (the one bionic's and
# bookworm's xen-utils-common ship) skips restoring only when XENDOMAINS_RESTORE is empty (it
# tests `-n`, so "false" would mean restore); the upstream script restores only on "true". An
# empty value is "no" to both, and with XENDOMAINS_SAVE empty nothing is saved in the first place.
XENDOMAINS_KEYS = {
    "shutdown": {
        "XENDOMAINS_SAVE": '""',
        "XENDOMAINS_RESTORE": '""',
        "XENDOMAINS_AUTO": xen_cfg.AUTO_DIR,
    },
    "save": {
        "XENDOMAINS_SAVE": SAVE_DIR,
        "XENDOMAINS_RESTORE": "true",
        "XENDOMAINS_AUTO": xen_cfg.AUTO_DIR,
    },
}
# Proxy settings apt in the chroot needs where the host needs them.
PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

GRUB_TEMPLATE = jinja2.Template(
    """\
# Written by xenlab (invoke host.xen); a new run rewrites it.
# Boot the Xen hypervisor by default: the title 20_linux_xen gives its first entry, made the
# way it makes it, so translations and GRUB_DISTRIBUTOR (Debian, Ubuntu) match.
if [ -n "$GRUB_DISTRIBUTOR" ]; then
	xenlab_os="$GRUB_DISTRIBUTOR GNU/Linux"
else
	xenlab_os="GNU/Linux"
fi
XEN_OVERRIDE_GRUB_DEFAULT=1
GRUB_DEFAULT="$(printf "$(gettext "%s, with Xen hypervisor")" "$xenlab_os")"
unset xenlab_os
# dom0 gets a fixed amount of memory: the rest is the guests', and nothing balloons dom0 down.
GRUB_CMDLINE_XEN_DEFAULT="${GRUB_CMDLINE_XEN_DEFAULT:+$GRUB_CMDLINE_XEN_DEFAULT }dom0_mem={{ mem }},max:{{ mem }}"
""",
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class Result:
    root: str
    release: str
    package: str
    dom0_mem: str  # e.g. 4096M
    installed: bool  # the package is installed (after this run; as found in dry-run)
    grub_default: Optional[str]  # `set default=` of grub.cfg
    xen_entries: List[str]  # titles of grub.cfg's top-level entries that boot Xen
    loader: str = xen_cfg.LOADER_PACKAGE
    loader_installed: bool = False
    on_shutdown: str = "shutdown"  # the xendomains policy written (see XENDOMAINS_KEYS)


def os_release(root: Path) -> Dict[str, str]:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = root / rel
        if path.is_file():
            values = {}
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    values[key.strip()] = value.strip().strip("\"'")
            return values
    return {}


def release_of(root: Path) -> Optional[str]:
    info = os_release(root)
    return info.get("VERSION_CODENAME") or info.get("UBUNTU_CODENAME") or None


def package_for(config: XenConfig, root: Path) -> Tuple[str, str]:
    """(release, hypervisor package); BadInput when the release has no default and none is set."""
    release = release_of(root) or "unknown"
    if config.package:
        return release, config.package
    if release not in PACKAGES:
        raise BadInput(
            "host.xen.package",
            None,
            f"no default hypervisor package for release {release!r} of {root};"
            f" set it (known: {', '.join(f'{k}: {v}' for k, v in PACKAGES.items())})",
        )
    return release, PACKAGES[release]


def mem_arg(size: int) -> str:
    """dom0_mem's value for `size` bytes: whole MiB, as Xen reads it (4096M)."""
    return f"{size // units.MiB}M"


def grub_snippet(dom0_mem: int) -> str:
    return GRUB_TEMPLATE.render(mem=mem_arg(dom0_mem))


def set_xl_key(text: str, key: str, value: str) -> str:
    """`text` (xl.conf) with `key=value`: the active line(s) replaced, else the first commented one,
    else appended. Every other line is kept as it is."""
    line = f"{key}={value}"
    pattern = re.compile(rf"^[ \t]*(#[ \t]*)?{re.escape(key)}[ \t]*=.*$", re.MULTILINE)
    matches = list(pattern.finditer(text))
    active = [m for m in matches if not m.group(1)]
    if active:
        out, last = [], 0
        for m in active:
            out += [text[last : m.start()], line]
            last = m.end()
        return "".join(out) + text[last:]
    if matches:
        m = matches[0]
        return text[: m.start()] + line + text[m.end() :]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


def parse_grub_cfg(text: str) -> Tuple[Optional[str], List[str]]:
    """(the `set default=` value, titles of top-level menu entries that load Xen)."""
    default = None
    xen: List[str] = []
    title = None
    for line in text.splitlines():
        m = re.match(r"""^\s*set default=["']?([^"']*)["']?\s*$""", line)
        if m and default is None and not m.group(1).startswith("$"):  # not ${next_entry}
            default = m.group(1)
        m = re.match(r"""^menuentry ['"]([^'"]+)['"]""", line)
        if m:
            title = m.group(1)
            continue
        if line.startswith(("}", "submenu")):
            title = None
        elif title and re.match(r"^\s*(multiboot2?|xen_hypervisor)\s+\S*xen", line):
            if title not in xen:
                xen.append(title)
    return default, xen


def dpkg_installed(root: Path, package: str) -> bool:
    admin = root / "var/lib/dpkg"
    proc = subprocess.run(
        ["dpkg-query", f"--admindir={admin}", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0 and proc.stdout.strip().endswith(" ok installed")


def _env() -> Dict[str, str]:
    env = {"DEBIAN_FRONTEND": "noninteractive", "LVM_SUPPRESS_FD_WARNINGS": "1"}
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    return env


def _in_root(root: Path, argv: Sequence[str]) -> None:
    """Run `argv` in the target: directly when it is /, else chrooted with /proc, /sys, /dev."""
    if root == Path("/"):
        line = list(argv)
        env = dict(os.environ, **_env())
    else:
        line = chroot.chroot_argv(root, argv, env=_env(), netns=False)
        env = None
    proc = subprocess.run(
        line, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        text=True,
    )  # fmt: skip
    tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
    where = "" if root == Path("/") else f" in {root}"
    checked(subprocess.CompletedProcess(argv, proc.returncode, tail), f"{' '.join(argv)}{where}")


def _no_services(root: Path):
    """policy-rc.d that stops package scripts from starting daemons in a chroot; its remover."""
    path = root / POLICY_RC.lstrip("/")
    if root == Path("/") or path.exists():
        return lambda: None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n# xenlab host.xen: no daemons start in a chroot\nexit 101\n")
    path.chmod(0o755)
    return lambda: path.unlink() if path.exists() else None


def install(root: Path, *packages: str) -> None:
    remove_policy = _no_services(root)
    try:
        _in_root(root, ["apt-get", "update", "-q"])
        _in_root(root, ["apt-get", "install", "-y", "-q", *packages])
    finally:
        remove_policy()


@dataclass(frozen=True)
class XendomainsPolicy:
    """What /etc/default/xendomains makes xendomains do, read as sh would read the file."""

    on_shutdown: str  # 'shutdown' or 'save'
    save_dir: str
    restore: bool
    auto_dir: str

    def describe(self) -> str:
        if self.on_shutdown == "save":
            restored = "restored at boot" if self.restore else "not restored at boot"
            first = f"running guests are saved to {self.save_dir} at host shutdown, {restored}"
        else:
            first = "running guests are shut down cleanly at host shutdown"
        auto = f"{self.auto_dir} starts its guests at boot" if self.auto_dir else "no autostart"
        return f"{first}; {auto}"


def _sh_values(text: str) -> Dict[str, str]:
    """KEY=VALUE assignments of a shell defaults file (last one wins), quotes removed."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if match:
            value = match.group(2).split(" #", 1)[0].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[match.group(1)] = value
    return values


def read_xendomains(text: str) -> XendomainsPolicy:
    values = _sh_values(text)
    save = values.get("XENDOMAINS_SAVE", "")
    restore = values.get("XENDOMAINS_RESTORE", "")
    return XendomainsPolicy(
        on_shutdown="save" if save else "shutdown",
        save_dir=save,
        # Restored only where both readings of the script agree: Debian's (-n) and upstream's.
        restore=bool(save) and restore == "true",
        auto_dir=values.get("XENDOMAINS_AUTO", ""),
    )


def set_xendomains(text: str, on_shutdown: str) -> str:
    """`text` (/etc/default/xendomains) with the keys of `on_shutdown`; the rest kept as it is."""
    if not text:
        text = (
            "# Written by xenlab (invoke host.xen): what xendomains does with running guests\n"
            "# when the host shuts down and boots (host.xen.on_shutdown).\n"
        )
    for key, value in XENDOMAINS_KEYS[on_shutdown].items():
        text = set_xl_key(text, key, value)
    return text


def _preflight(root: Path) -> None:
    if not (root / "usr/sbin/update-grub").exists():
        raise BadInput(
            "--root" if root != Path("/") else "host.xen",
            str(root),
            "has no update-grub: install GRUB (grub-pc or grub-efi-amd64) there first",
        )
    if root != Path("/") and not (root / "usr/bin/apt-get").exists():
        raise BadInput("--root", str(root), "has no apt-get: it is not a Debian or Ubuntu root")


def _grub_state(root: Path) -> Tuple[Optional[str], List[str]]:
    path = root / GRUB_CFG.lstrip("/")
    if not path.is_file():
        return None, []
    return parse_grub_cfg(path.read_text(errors="replace"))


def _noop() -> None:
    pass


def configure(config: XenConfig, runner: Runner) -> Result:
    root = runner.root
    release, package = package_for(config, root)
    _preflight(root)
    installed = dpkg_installed(root, package)
    loader = xen_cfg.LOADER_PACKAGE
    loader_installed = dpkg_installed(root, loader)
    mem = mem_arg(config.dom0_mem)

    with runner.transaction():
        if not installed:
            # An installed package is left in place on rollback: apt removal is not an undo.
            # The guests' loader comes in the same apt run.
            packages = [package] + ([] if loader_installed else [loader])
            if not runner.dry_run:
                runner.say(f"installing {package} into {root} with apt-get (a few minutes)")
            runner.change(
                f"install {', '.join(packages)} (apt-get in {root})",
                lambda: install(root, *packages),
            )
            loader_installed = True
        changed = runner.write_file(GRUB_FILE, grub_snippet(config.dom0_mem))
        xl_conf = runner.path(XL_CONF)
        if runner.dry_run and not installed and not xl_conf.is_file():
            # The package brings xl.conf; the real run edits that one.
            runner.change(f'set autoballoon="off" in {xl_conf}, once the package made it', _noop)
        else:
            old = xl_conf.read_text() if xl_conf.is_file() else ""
            new = set_xl_key(old, "autoballoon", '"off"')
            changed = runner.write_file(XL_CONF, new) or changed
        _set_xendomains(runner, config.on_shutdown, installed)
        _set_console_log(runner, installed)
        default, xen = _grub_state(root)
        if not installed or changed or not (default and default in xen):
            runner.change(f"run update-grub in {root}", lambda: _in_root(root, ["update-grub"]))
        if not loader_installed:
            # Xen was there already: only the guests' loader is missing. Last, as dom0's own
            # boot does not depend on it.
            runner.change(f"install {loader} (apt-get in {root})", lambda: install(root, loader))
    if not runner.dry_run:
        installed = dpkg_installed(root, package)
        loader_installed = dpkg_installed(root, loader)
        default, xen = _grub_state(root)
        if default not in xen:
            # The files are right, but GRUB made no Xen entry its default (no kernel in /boot?).
            raise Failed(
                f"after update-grub, {root / GRUB_CFG.lstrip('/')} boots {default!r} by default;"
                f" its Xen entries: {', '.join(repr(t) for t in xen) or 'none'}"
            )
    return Result(
        str(root), release, package, mem, installed, default, xen, loader,
        loader_installed, config.on_shutdown,
    )  # fmt: skip


def _set_console_log(runner: Runner, installed: bool) -> None:
    """Guests' consoles logged to files (guest.console --log), from xenconsoled's next start."""
    if runner.dry_run and not installed:
        runner.change(
            f"log guests' consoles to {xen_cfg.CONSOLE_LOG_DIR}, once Xen is there", _noop
        )
        return
    for name in XEN_DEFAULTS:
        path = runner.path(name)
        if path.is_file():
            runner.write_file(
                name, set_xl_key(path.read_text(), "XENCONSOLED_ARGS", XENCONSOLED_ARGS)
            )
    log_dir = runner.path(xen_cfg.CONSOLE_LOG_DIR)
    if not log_dir.is_dir():
        runner.change(f"make {log_dir}", lambda: log_dir.mkdir(parents=True, mode=0o750))


def _set_xendomains(runner: Runner, on_shutdown: str, installed: bool) -> None:
    """The xendomains policy in /etc/default/xendomains: the package's file with our keys, or
    (no file after the install) a file of our keys alone."""
    path = runner.path(XENDOMAINS)
    if runner.dry_run and not installed and not path.is_file():
        runner.change(
            f"set the xendomains policy ({on_shutdown}) in {path}, once the package made it", _noop
        )
        return
    old = path.read_text() if path.is_file() else ""
    runner.write_file(XENDOMAINS, set_xendomains(old, on_shutdown))
