"""An SSH connection to one host of the fleet, with Fabric, and its host-key policy.

Keys and the user's ssh config (~/.ssh/config: HostName, User, Port, IdentityFile, ProxyJump...)
are Fabric's and paramiko's usual ones; the known host keys are ssh's (UserKnownHostsFile, else
~/.ssh/known_hosts, and the global file), which Fabric itself does not read: it accepts any host
key. Here an unknown key is refused (paramiko's RejectPolicy) unless
fleet.accept_new_host_keys is set, and then only a host that has no key there yet is accepted
and written to known_hosts (as ssh's StrictHostKeyChecking=accept-new). A key that differs from
the known one is always refused (paramiko raises BadHostKeyException before any policy).
"""

import os
import socket
from pathlib import Path
from typing import List, Optional, Tuple

import paramiko
from fabric import Connection

from pipeline.fleet.inventory import Member

KNOWN_HOSTS = "~/.ssh/known_hosts"
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


class AcceptNew(paramiko.AutoAddPolicy):
    """A host with no known key: accepted, and its key added to the user's known_hosts."""

    def __init__(self, known_hosts: str = KNOWN_HOSTS):
        self.known_hosts = Path(os.path.expanduser(known_hosts))

    def missing_host_key(self, client, hostname, key):
        super().missing_host_key(client, hostname, key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry = paramiko.hostkeys.HostKeyEntry([hostname], key)
        with open(str(self.known_hosts), "a") as fh:
            os.chmod(str(self.known_hosts), 0o600)
            fh.write(entry.to_line())


def policy(accept_new: bool, known_hosts: str = KNOWN_HOSTS) -> paramiko.MissingHostKeyPolicy:
    return AcceptNew(known_hosts) if accept_new else paramiko.RejectPolicy()


def connection(member: Member, connect_timeout: int, accept_new: bool) -> Connection:
    """A Fabric Connection (not opened yet) to `member`, with the fleet's host-key policy."""
    conn = Connection(
        host=member.address,
        user=member.user,
        port=member.port,
        connect_timeout=connect_timeout,
        # the handshake and authentication are held to the same limit as the TCP connect
        connect_kwargs={"banner_timeout": connect_timeout, "auth_timeout": connect_timeout},
    )
    for path in known_hosts_files(conn.ssh_config):
        conn.client.load_system_host_keys(str(path))
    mine = _words(conn.ssh_config.get("userknownhostsfile") or [KNOWN_HOSTS])
    conn.client.set_missing_host_key_policy(policy(accept_new, mine[0] if mine else KNOWN_HOSTS))
    return conn


def known_hosts_files(ssh_config) -> List[Path]:
    """The known_hosts files ssh reads for this host, those that exist: the ssh config's
    UserKnownHostsFile (else ~/.ssh/known_hosts) and GlobalKnownHostsFile (else
    /etc/ssh/ssh_known_hosts). Fabric itself reads none (it accepts every key)."""
    user = ssh_config.get("userknownhostsfile") or [KNOWN_HOSTS]  # the first gets new keys
    system = ssh_config.get("globalknownhostsfile") or [GLOBAL_KNOWN_HOSTS]
    found = []
    for name in [*_words(user), *_words(system)]:
        path = Path(os.path.expanduser(name))
        if path.is_file():
            found.append(path)
    return found


def _words(value) -> List[str]:
    items = value if isinstance(value, list) else [value]
    return [word for item in items for word in str(item).split() if word != "none"]


def why_not(exc: BaseException) -> Optional[Tuple[str, str]]:
    """(status, detail) when `exc` means the host was never reached or never let us in; None
    for anything else (a failure of the command itself)."""
    if isinstance(exc, paramiko.BadHostKeyException):
        return "host key refused", f"its host key changed ({exc.key.get_name()}): not trusted"
    if isinstance(exc, paramiko.AuthenticationException):
        return "login refused", str(exc) or "authentication failed"
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return "host key refused", (
            f"{exc} (add it with ssh-keyscan after checking its fingerprint, or set"
            " fleet.accept_new_host_keys: true)"
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "unreachable", str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "unreachable", f"timed out ({exc or 'no answer'})"
    if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
        return "unreachable", f"{type(exc).__name__}: {exc}"
    return None
