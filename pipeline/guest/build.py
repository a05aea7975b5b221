"""guest.build: a Xen guest from a golden image and a personal NoCloud seed, in one pass.

validate -> volumes -> root filesystem and swap -> seed -> /etc/xen/NAME.cfg -> autostart link ->
xl create. All of it inside one runner transaction: a failure at any step removes what this run
created. The per-guest cost is an image write, not a debootstrap.
"""

import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from cloudinit import host_keys, meta_data, network_config, password, seed, user_data
from cloudinit.errors import SeedError
from cloudinit.yaml_text import dump
from pipeline import mac, xl
from pipeline.config import ImagesConfig, Site
from pipeline.errors import BadInput, Failed, Problem
from pipeline.guest import checks as guest_checks
from pipeline.guest import profiles, volumes, xen_cfg
from pipeline.runner import Runner

STATE_DIR = "/var/lib/xenlab/guests"  # per guest: seed.iso, root-password, known_hosts


@dataclass(frozen=True)
class Built:
    name: str
    distribution: str
    mac: str
    ip: str
    gateway: str
    volumes: Tuple[str, ...]
    cfg: str
    link: Optional[str]
    seed: str
    password_file: str
    known_hosts: str
    fingerprints: Tuple[str, ...]
    started: str  # "started", "not started (--no-start)", "no Xen here: not started", ...

    def summary(self) -> List[str]:
        """What a person needs to reach the guest, one line a fact, as guest.build prints it."""
        lines = [
            f"Hostname       :  {self.name}",
            f"Distribution   :  {self.distribution}",
            f"MAC Address    :  {self.mac}",
            f"IP Address(es) :  {self.ip} (gateway {self.gateway})",
        ]
        lines += [f"SSH Fingerprint:  {fingerprint}" for fingerprint in self.fingerprints]
        autostart = f" (autostart: {self.link})" if self.link else ""
        lines += [
            f"Known hosts    :  {self.known_hosts}",
            f"Root Password  :  in {self.password_file} (mode 600)",
            f"Config         :  {self.cfg}{autostart}",
            f"Volumes        :  {', '.join(self.volumes)}",
            f"State          :  {self.started}",
        ]
        return lines


def build(
    site: Site,
    name: str,
    runner: Runner,
    *,
    force: bool = False,
    start: bool = True,
    activate: volumes.Activate = volumes.activate_lv,
    image: Optional[Callable[[str], object]] = None,
    facts: Optional[guest_checks.HostFacts] = None,
    say: Callable[[str], None] = lambda _: None,
) -> Built:
    """Build guest `name` of `site.guests`; `image(profile)` gives the golden image (a GoldenImage).

    `activate(vg, lv) -> device` makes an LV writable (lvchange -ay here; tests map it themselves).
    """
    # 1. validate everything before touching anything
    state = runner.path(STATE_DIR) / name
    guest = guest_checks.check(
        site, name, runner.root, state, facts or guest_checks.host_facts(), force=force
    )
    profile = profiles.profile_of(guest.profile)
    check_loader(name, guest.boot)
    if not guest.ssh_authorized_keys:
        say(
            f"warning: guests.{name}.ssh_authorized_keys is empty: only the console will let you in"
        )
    apt_mirror, apt_security = apt_mirrors(guest.profile, site.images)
    net = site.host.subnet
    address = ipaddress.IPv4Interface(f"{guest.ip}/{net.prefixlen}")
    gateway = guest.gateway or site.host.bridge_interface.ip
    dns = guest.dns or host_dns()
    guest_mac = mac.derive(name)
    bridge = guest.bridge or site.host.bridge
    disk, swap = volumes.plan(site.host.storage, name, guest.disk, guest.swap)
    cfg_file = xen_cfg.cfg_path(runner.root, name)
    link = xen_cfg.link_path(runner.root, name)
    seed_file = state / "seed.iso"
    password_file = state / "root-password"
    known_hosts = state / "known_hosts"
    # The xl config is made, and checked by its own rules, before anything changes.
    cfg = xen_cfg.XlConfig(
        name=name,
        memory_mib=guest.memory >> 20,
        vcpus=guest.vcpus,
        disks=(
            xen_cfg.Disk(disk.path, "xvda2"),
            xen_cfg.Disk(swap.path, "xvda1"),
            xen_cfg.Disk(str(seed_file), "xvdc", writable=False, cdrom=True),
        ),
        ip=guest.ip,
        mac=guest_mac,
        bridge=bridge,
        boot=guest.boot,
    )
    xl_problems = [_xl_problem(name, text, guest, bridge, site) for text in xen_cfg.problems(cfg)]
    if xl_problems:
        raise BadInput.of(xl_problems)

    if image is None:
        from pipeline.guest import image as images

        def image(profile: str):
            return images.ensure(profile, site.images, say)

    golden = None if runner.dry_run else image(guest.profile)
    tree = Path(golden.tree) if golden else Path(f"(golden image {guest.profile})")
    distribution = golden.distribution if golden else guest.profile

    with runner.transaction():
        if force:
            _remove_old(runner, site, name, cfg_file, link, state)

        # 2. the disk and swap volumes
        targets = volumes.create(runner, (disk, swap), activate)

        # 3. the golden root filesystem on the disk at full size, swap on the swap volume
        ids = volumes.fstab_ids(tree) if golden else {}
        features = volumes.ext4_features(profile.old_kernel)
        volumes.write_root(runner, targets["disk"], tree, ids.get("/"), features, say)
        volumes.make_swap(runner, targets["swap"], ids.get("swap"))

        # 4. the NoCloud seed; root's password stays on the host, 0600
        try:
            keys = host_keys.generate(name)
            secret = password.generate()
            root_password_hash = password.sha512_crypt(secret)
        except SeedError as exc:
            raise Failed(str(exc)) from None
        cloud_config = user_data.build(
            hostname=name,
            user=guest.user,
            authorized_keys=guest.ssh_authorized_keys,
            root_password_hash=root_password_hash,
            allow_from=guest.ssh_allow_from,
            sshd=profile.sshd,
            host_keys=keys,
            mirror=apt_mirror,
            security_mirror=apt_security,
        )
        files = {
            "user-data": dump(cloud_config, user_data.HEADER),
            "network-config": dump(network_config.build(guest_mac, address, gateway, dns)),
        }
        files["meta-data"] = dump(meta_data.build(name, *files.values()))
        runner.write_file(_system(runner, password_file), secret + "\n", 0o600, secret=True)
        # 0600: the seed holds the guest's private host keys.
        runner.write_bytes(_system(runner, seed_file), seed.build(files), 0o600, secret=True)
        runner.write_file(
            _system(runner, known_hosts),
            "".join(f"{name},{guest.ip} {k.public}\n" for k in keys),
        )

        # 5. /etc/xen/NAME.cfg: root first (pygrub boots the first disk), swap, the seed; booted
        # as guests.NAME.boot says (pvgrub by default)
        runner.write_file(_system(runner, cfg_file), xen_cfg.render(cfg))

        # 6. autostart: xendomains starts what /etc/xen/auto links to
        if guest.autostart:
            _symlink(runner, link, xen_cfg.LINK_TARGET.format(name=name))

        # 7. start it
        if not start:
            started = "not started (--no-start)"
        elif xl.run("info") is None:
            started = "no Xen here: not started"
            say(started)
        else:
            runner.change(
                f"start {name} (xl create {cfg_file})",
                lambda: runner.run(["xl", "create", str(cfg_file)]),
                lambda: runner.run(["xl", "destroy", name], check=False),
            )
            started = "started"

    return Built(
        name=name,
        distribution=distribution,
        mac=guest_mac,
        ip=str(guest.ip),
        gateway=str(gateway),
        volumes=(disk.path, swap.path),
        cfg=str(cfg_file),
        link=str(link) if guest.autostart else None,
        seed=str(seed_file),
        password_file=str(password_file),
        known_hosts=str(known_hosts),
        fingerprints=tuple(k.fingerprint for k in keys) if not runner.dry_run else (),
        started=started,
    )


def _xl_problem(name: str, text: str, guest, bridge: str, site: Site) -> Problem:
    """One of xen_cfg.problems' sentences as a Problem naming the setting it came from."""
    word = text.split()[0]
    field, value = {
        "name": ("--name", name),
        "memory": (f"guests.{name}.memory", f"{guest.memory >> 20}M"),
        "vcpus": (f"guests.{name}.vcpus", guest.vcpus),
        "bridge": (f"guests.{name}.bridge" if guest.bridge else "host.bridge", bridge),
        "mac": ("--name", name),
    }.get(word, ("host.storage", site.host.storage.kind))
    return Problem(field, value, f"the xl config would be wrong: {text}")


def check_loader(name: str, boot: str, host: Path = Path("/")) -> None:
    """The loader file the cfg names as its kernel is on the host (BadInput otherwise).

    On the host itself, also with --root: xl reads the kernel= file on the machine where it
    creates the domain, and guest.build's cfg names this host's paths (the volumes and the seed
    are real paths here, the cfg is `xl create`d here)."""
    path = xen_cfg.loader(boot)
    if path is None or (host / path.lstrip("/")).is_file():
        return
    raise BadInput(
        f"guests.{name}.boot",
        boot,
        f"needs {path} on this host (Debian/Ubuntu package {xen_cfg.LOADER_PACKAGE}, which"
        " invoke host.xen installs); or set boot: pygrub",
    )


def apt_mirrors(profile: str, images: ImagesConfig) -> Tuple[str, Optional[str]]:
    """(archive, security archive) the guest's apt uses: the ones its golden image came from."""
    from pipeline.guest import image

    mirrors = image.mirrors_for(profiles.profile_of(profile), images)
    # Ubuntu's -security suite lives in the same archive.
    return mirrors.main, mirrors.security or mirrors.main


def host_dns(resolv_conf: Path = Path("/etc/resolv.conf")) -> List[ipaddress.IPv4Address]:
    """The host's own IPv4 name servers, but not loopback stubs (systemd-resolved's 127.0.0.53)."""
    found = []
    if resolv_conf.is_file():
        for line in resolv_conf.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                try:
                    addr = ipaddress.IPv4Address(words[1])
                except ValueError:
                    continue
                if not addr.is_loopback:
                    found.append(addr)
    return found


def _remove_old(runner: Runner, site: Site, name: str, cfg: Path, link: Path, state: Path) -> None:
    """--force: the old guest's volumes, cfg, link and seed go first (not restored on failure)."""
    volumes.remove(runner, site.host.storage, name)
    for path in (link, cfg):
        if path.exists() or path.is_symlink():
            runner.change(f"remove {path}", path.unlink)
    if state.exists():
        runner.change(f"remove {state}", lambda: shutil.rmtree(str(state)))


def _system(runner: Runner, path: Path) -> str:
    """The system path of `path`, a path under the runner's --root (what its writers take)."""
    return "/" + str(path.relative_to(runner.root))


def _symlink(runner: Runner, link: Path, target: str) -> None:
    created = [p for p in reversed(link.parents) if not p.exists()]

    def make() -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    def undo() -> None:
        link.unlink()
        for folder in reversed(created):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    runner.change(f"link {link} -> {target}", make, undo)
