"""The fleet: fleet.hosts of the site config, each host's own site file loaded and checked, and
what spans the hosts (subnets that overlap, a guest name or address used twice).

Data in, data out: `load` reads the site files and returns the Fleet, or raises BadInput with
every problem, before any connection is made.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from pipeline.config import FleetConfig, Site, load_site
from pipeline.errors import BadInput, Problem


@dataclass(frozen=True)
class Member:
    """One host of the fleet: where to reach it and its own site."""

    name: str
    address: str
    user: str
    port: Optional[int]
    site_file: Path
    site_text: bytes  # the file as it is put on the host
    site: Site


@dataclass(frozen=True)
class Fleet:
    members: List[Member]  # the hosts to work on, in fleet.hosts' order
    parallel: int  # hosts at once
    connect_timeout: int
    accept_new_host_keys: bool


def selected(config: FleetConfig, hosts: Optional[str]) -> List[str]:
    """The names `--hosts a,b` picks (all of fleet.hosts when None); BadInput for an unknown one."""
    if not config.hosts:
        raise BadInput("fleet.hosts", {}, "is empty: name each host (address, user, site)")
    if hosts is None:
        return list(config.hosts)
    names = [name.strip() for name in hosts.split(",")]
    unknown = [name for name in names if name not in config.hosts]
    if unknown or not all(names):
        raise BadInput(
            "--hosts",
            hosts,
            f"names {', '.join(repr(n) for n in unknown) or 'an empty host'}, not in fleet.hosts"
            f" (known: {', '.join(config.hosts)})",
        )
    return list(dict.fromkeys(names))


def read_site(name: str, path: Path) -> Tuple[bytes, Site]:
    """A host's site file, as bytes and validated; BadInput naming fleet.hosts.NAME.site."""
    from ruamel.yaml import YAML, YAMLError

    field = f"fleet.hosts.{name}.site"
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise BadInput(field, str(path), f"cannot be read ({exc.strerror})") from None
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(field, str(path), f"is not valid YAML: {reason}") from None
    if not isinstance(data, dict):
        raise BadInput(field, str(path), "holds no mapping of sections (host:, guests:...)")
    try:
        return text, load_site(data)
    except BadInput as exc:
        raise BadInput.of([p._replace(field=f"{field}: {p.field}") for p in exc.problems]) from None


def across(sites: Dict[str, Site]) -> List[Problem]:
    """What no single site can see: two hosts whose subnets overlap, a guest name or a guest
    address that two hosts (or one host's two guests on different hosts) both have."""
    problems: List[Problem] = []
    names = list(sites)
    for i, later in enumerate(names):
        mine = sites[later].host.subnet
        for earlier in names[:i]:
            theirs = sites[earlier].host.subnet
            if mine.overlaps(theirs):
                problems.append(
                    Problem(
                        f"fleet.hosts.{later}.site: host.subnet",
                        str(mine),
                        f"overlaps fleet.hosts.{earlier}'s host.subnet {theirs}",
                    )
                )
    guest_owner: Dict[str, str] = {}
    ip_owner: Dict[str, Tuple[str, str]] = {}
    for host, site in sites.items():
        for guest, config in site.guests.items():
            field = f"fleet.hosts.{host}.site: guests.{guest}"
            if guest in guest_owner:
                problems.append(
                    Problem(field, guest, f"is also a guest of fleet.hosts.{guest_owner[guest]}")
                )
            else:
                guest_owner[guest] = host
            if config.ip is None:
                continue
            ip = str(config.ip)
            if ip in ip_owner and ip_owner[ip][0] != host:
                other_host, other_guest = ip_owner[ip]
                problems.append(
                    Problem(
                        f"{field}.ip",
                        ip,
                        f"is also the address of fleet.hosts.{other_host}'s guest {other_guest}",
                    )
                )
            else:
                ip_owner.setdefault(ip, (host, guest))
    return problems


def duplicate_addresses(config: FleetConfig) -> List[Problem]:
    """Two names for one SSH endpoint: the same host would be worked on twice at once."""
    problems, seen = [], {}
    for name, host in config.hosts.items():
        endpoint = (host.address, host.port or 22)
        if endpoint in seen:
            problems.append(
                Problem(
                    f"fleet.hosts.{name}.address",
                    host.address,
                    f"is fleet.hosts.{seen[endpoint]}'s address (and port) already",
                )
            )
        else:
            seen[endpoint] = name
    return problems


def load(config: FleetConfig, hosts: Optional[str] = None, cwd: Optional[Path] = None) -> Fleet:
    """The fleet to work on: every host's site file read and checked (all of them, not only the
    selected: a guest name is unique across the whole fleet), then `--hosts`' selection."""
    names = selected(config, hosts)
    base = Path.cwd() if cwd is None else Path(cwd)
    problems: List[Problem] = duplicate_addresses(config)
    texts: Dict[str, bytes] = {}
    sites: Dict[str, Site] = {}
    for name, host in config.hosts.items():
        try:
            texts[name], sites[name] = read_site(name, base / host.site)
        except BadInput as exc:
            problems += exc.problems
    if not problems:
        problems = across(sites)
    if problems:
        raise BadInput.of(problems)
    members = [
        Member(name, h.address, h.user, h.port, base / h.site, texts[name], sites[name])
        for name, h in config.hosts.items()
        if name in names
    ]
    return Fleet(
        members=members,
        parallel=config.parallel or len(members),
        connect_timeout=config.connect_timeout,
        accept_new_host_keys=config.accept_new_host_keys,
    )
