"""NoCloud user-data (#cloud-config): the admin user, key-only sshd limited to allowed networks,
root's random password as a hash, the guest's own SSH host keys, the apt mirror."""

import ipaddress
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from cloudinit.host_keys import HostKey

HEADER = "#cloud-config\n"


@dataclass(frozen=True)
class Sshd:
    """How the guest's sshd can be told who may connect.

    libwrap: sshd honours /etc/hosts.allow and hosts.deny (Ubuntu 18.04's does; Debian 12's
    OpenSSH was built without tcp-wrappers). dropin: sshd_config Includes sshd_config.d/*.conf
    (OpenSSH 8.2 and later); otherwise the settings are appended to sshd_config itself.
    """

    libwrap: bool
    dropin: bool


DROPIN = "/etc/ssh/sshd_config.d/10-xenlab.conf"


def sshd_settings(
    user: str, allow_from: Sequence[ipaddress.IPv4Network], libwrap: bool
) -> List[str]:
    """sshd_config lines: key-only, no root; where libwrap cannot limit the networks, AllowUsers does."""
    lines = [
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "ChallengeResponseAuthentication no",
        "PubkeyAuthentication yes",
        "AuthenticationMethods publickey",
    ]
    if allow_from and not libwrap:
        # user@CIDR: sshd checks the user and the client address together (sshd_config(5)).
        lines.append("AllowUsers " + " ".join(f"{user}@{net.with_prefixlen}" for net in allow_from))
    else:
        lines.append(f"AllowUsers {user}")
    return lines


def hosts_allow(allow_from: Sequence[ipaddress.IPv4Network]) -> str:
    # tcp-wrappers' portable form is net/mask; /prefix needs a newer libwrap than some releases have.
    nets = " ".join(f"{net.network_address}/{net.netmask}" for net in allow_from)
    return f"# xenlab: who may reach sshd\nsshd: {nets}\n"


HOSTS_DENY = "# xenlab: sshd only from the networks in hosts.allow\nsshd: ALL\n"


def build(
    *,
    hostname: str,
    user: str,
    authorized_keys: Sequence[str],
    root_password_hash: str,
    allow_from: Sequence[ipaddress.IPv4Network],
    sshd: Sshd,
    host_keys: Sequence[HostKey],
    mirror: Optional[str] = None,
    security_mirror: Optional[str] = None,
) -> Dict[str, Any]:
    """The cloud-config for one guest, as data (dump with HEADER)."""
    settings = "".join(f"{line}\n" for line in sshd_settings(user, allow_from, sshd.libwrap))
    files: List[Dict[str, Any]] = []
    if sshd.dropin:
        files.append({"path": DROPIN, "content": "# xenlab\n" + settings, "permissions": "0644"})
    else:
        # sshd keeps the first value of a keyword; the stock file leaves these commented out.
        files.append(
            {
                "path": "/etc/ssh/sshd_config",
                "content": "\n# xenlab\n" + settings,
                "append": True,
            }
        )
    if sshd.libwrap and allow_from:
        files.append({"path": "/etc/hosts.allow", "content": hosts_allow(allow_from)})
        files.append({"path": "/etc/hosts.deny", "content": HOSTS_DENY})

    ssh_keys: Dict[str, str] = {}
    for key in host_keys:
        ssh_keys[f"{key.type}_private"] = key.private
        ssh_keys[f"{key.type}_public"] = key.public

    data: Dict[str, Any] = {
        "hostname": hostname,
        # Always there, nothing to generate: minimal images have no other locale and cloud-init's
        # default (en_US.UTF-8) would fail there.
        "locale": "C.UTF-8",
        "manage_etc_hosts": True,
        "users": [
            {
                "name": user,
                "gecos": "xenlab admin",
                "groups": ["sudo"],
                "shell": "/bin/bash",
                # The admin has no password (locked), so sudo cannot ask for one.
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": list(authorized_keys),
            },
            # Root keeps a password for the console only (sshd refuses root); only its hash is here.
            {"name": "root", "lock_passwd": False, "hashed_passwd": root_password_hash},
        ],
        "disable_root": True,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_keys": ssh_keys,
        "write_files": files,
    }
    if mirror:
        apt: Dict[str, Any] = {"primary": [{"arches": ["default"], "uri": mirror}]}
        if security_mirror:
            apt["security"] = [{"arches": ["default"], "uri": security_mirror}]
        data["apt"] = apt
    return data
