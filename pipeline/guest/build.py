"""guest.build: a Xen guest from a golden image and a personal NoCloud seed, in one pass.

validate -> volumes -> root filesystem and swap -> seed -> /etc/xen/NAME.cfg -> autostart link ->
xl create. All of it inside one runner transaction: a failure at any step removes what this run
created. The per-guest cost is an image write, not a debootstrap.
"""

import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from cloudinit import host_keys, meta_data, network_config, password, seed, user_data
from cloudinit.yaml_text import dump
from pipeline import mac, xl
from pipeline.config import ImagesConfig, Site
from pipeline.guest import checks as guest_checks
from pipeline.guest import volumes, xen_cfg
from pipeline.runner import Runner

STATE_DIR = "/var/lib/xenlab/guests"  # per guest: seed.iso, root-password, known_hosts


@dataclass(frozen=True)
class Profile:
    sshd: user_data.Sshd
    old_kernel: bool  # before 5.15: no orphan_file/metadata_csum_seed in its ext4


PROFILES = {
    # Ubuntu 18.04: OpenSSH 7.6 with libwrap, no sshd_config.d; kernel 4.15.
    "ubuntu-18.04": Profile(user_data.Sshd(libwrap=True, dropin=False), old_kernel=True),
    # Debian 12: OpenSSH 9.2 without tcp-wrappers, with sshd_config.d; kernel 6.1.
    "debian-12": Profile(user_data.Sshd(libwrap=False, dropin=True), old_kernel=False),
}


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
    profile = PROFILES[guest.profile]
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
        keys = host_keys.generate(name)
        secret = password.generate()
        cloud_config = user_data.build(
            hostname=name,
            user=guest.user,
            authorized_keys=guest.ssh_authorized_keys,
            root_password_hash=password.sha512_crypt(secret),
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
        runner.write_file(
            str(password_file.relative_to(runner.root)), secret + "\n", 0o600, secret=True
        )
        _write_bytes(runner, seed_file, seed.build(files))
        runner.write_file(
            str(known_hosts.relative_to(runner.root)),
            "".join(f"{name},{guest.ip} {k.public}\n" for k in keys),
        )

        # 5. /etc/xen/NAME.cfg: root first (pygrub boots the first disk), swap, the seed
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
        )
        runner.write_file(str(cfg_file.relative_to(runner.root)), xen_cfg.render(cfg))

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


def apt_mirrors(profile: str, images: ImagesConfig) -> Tuple[str, Optional[str]]:
    """(archive, security archive) the guest's apt uses: the ones its golden image came from."""
    from pipeline.guest import image

    mirrors = image.mirrors_for(image.profile_of(profile), images)
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


def _write_bytes(runner: Runner, path: Path, data: bytes) -> None:
    """A binary file (the seed ISO), 0600: it holds the guest's private host keys."""

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(str(tmp), str(path))

    runner.change(f"write {path} ({len(data)} bytes, mode 600)", write, path.unlink)


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
