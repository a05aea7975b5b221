"""fleet.deploy: xenlab and its site file on every host, installed or upgraded, idempotently.

As the install's late setup does it (pxe/templates/late_setup.sh.j2), over SSH instead of HTTP:
the wheelhouse (pxe.build's, or one built for the host's install.profile) is copied to the host,
xenlab installed from it into APP_DIR/.venv with pip --no-index (no package index needed),
the app files unpacked beside it, the host's site file put at SITE_FILE and linked as
APP_DIR/invoke.yaml. The digest of what was deployed is kept on the host (DEPLOYED): the same
wheelhouse and site file again is "no changes", and nothing is copied.
"""

import hashlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pipeline.config import Site
from pipeline.errors import BadInput
from pipeline.fleet import run as fleet_run
from pipeline.fleet.inventory import Fleet, Member
from pipeline.runner import Runner
from pxe import wheelhouse
from pxe.preseed import APP_DIR, SITE_FILE

DEPLOYED = "/var/lib/xenlab/deployed"  # the digest of the wheelhouse and site file deployed
WHEELS = f"{APP_DIR}/wheelhouse"  # the deployed wheelhouse: pip's --find-links, kept for upgrades
_SUMS_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9_.+-]+)$")


@dataclass(frozen=True)
class Bundle:
    """A wheelhouse on this machine, checked: the files SHA256SUMS lists, xenlab's and pip's."""

    folder: Path
    files: List[str]  # SHA256SUMS' names, then SHA256SUMS itself
    xenlab: str  # xenlab==VERSION
    pip_wheel: str
    sums: bytes


def bundle(folder: Path, field: str = "--wheelhouse") -> Bundle:
    """The wheelhouse in `folder` (pxe.build's boot tree's wheelhouse/ or one like it)."""
    folder = Path(folder)
    try:
        sums = (folder / wheelhouse.SUMS).read_bytes()
    except OSError:
        raise BadInput(
            field, str(folder), f"holds no {wheelhouse.SUMS}: not a wheelhouse"
        ) from None
    names = []
    for line in sums.decode(errors="replace").splitlines():
        match = _SUMS_LINE.fullmatch(line)
        if match is None or not (folder / match.group(2)).is_file():
            raise BadInput(field, str(folder), f"its {wheelhouse.SUMS} line {line!r} names no file")
        names.append(match.group(2))
    xenlab = next(
        (f"xenlab=={n.split('-')[1]}" for n in sorted(names) if n.startswith("xenlab-")), None
    )
    pip = next((n for n in sorted(names) if n.startswith("pip-") and n.endswith(".whl")), None)
    if xenlab is None or pip is None or wheelhouse.APP not in names:
        raise BadInput(
            field, str(folder), f"lacks xenlab's wheel, pip's or {wheelhouse.APP}: not a wheelhouse"
        )
    return Bundle(folder, names + [wheelhouse.SUMS], xenlab, pip, sums)


def wheelhouse_for(
    site: Site, profile: str, explicit: Optional[str], say: Callable[[str], None]
) -> Bundle:
    """The wheelhouse for hosts of `profile`: --wheelhouse; else pxe.build's when it was built
    for that profile; else one built now for it, kept under install.cache_dir."""
    if explicit is not None:
        return bundle(Path(explicit))
    built = Path(site.pxe.tftp_root) / wheelhouse.DIR
    if site.install.profile == profile and (built / wheelhouse.SUMS).is_file():
        return bundle(built, "pxe.tftp_root")
    tree = Path(site.install.cache_dir) / "fleet" / profile
    say(f"building the wheelhouse for {profile} hosts in {tree / wheelhouse.DIR}")
    wheelhouse.place(Runner(say=say), tree, wheelhouse.make(profile, say))
    return bundle(tree / wheelhouse.DIR)


def digest(house: Bundle, member: Member) -> str:
    """What a deploy puts on `member`, as one SHA-256: the wheelhouse's sums, the site file and
    the Python it runs on."""
    h = hashlib.sha256()
    python = wheelhouse.target_for(member.site.install.profile).python
    for part in (house.sums, member.site_text, python.encode(), SITE_FILE.encode()):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


INSTALL = """set -eu
stage={stage}
app={app}
wheels={wheels}
trap 'rm -rf "$stage"' EXIT
missing=""
for pkg in {packages}; do
    dpkg-query -W -f='${{Status}}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
install -d -m 755 "$app" "$wheels"
find "$wheels" -mindepth 1 -maxdepth 1 -type f -delete
cp "$stage"/wheels/* "$wheels/"
(cd "$wheels" && sha256sum -c --quiet {sums})
tar -C "$app" --no-same-owner -xzf "$wheels/{app_tar}"
[ -x "$app/.venv/bin/python" ] || {python} -m venv --without-pip "$app/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$app/.venv/bin/python" -m pip --version >/dev/null 2>&1 ||
    "$app/.venv/bin/python" "$wheels/{pip_wheel}/pip" install -q --no-index --find-links "$wheels" pip
"$app/.venv/bin/python" -m pip install -q --no-index --find-links "$wheels" pip {xenlab}
# the same version number with other code: xenlab itself always from this wheelhouse
"$app/.venv/bin/python" -m pip install -q --no-index --find-links "$wheels" --force-reinstall --no-deps {xenlab}
install -d -m 700 "$(dirname {site_file})"
(umask 077 && cp "$stage/site.yaml" {site_file}.new && mv {site_file}.new {site_file})
ln -sfn {site_file} "$app/invoke.yaml"
"$app/.venv/bin/invoke" --search-root "$app" --list >/dev/null
install -d -m 755 "$(dirname {deployed})"
echo {digest} >{deployed}.new
mv {deployed}.new {deployed}
echo "installed $("$app/.venv/bin/python" -m pip --version | cut -d' ' -f1-2), {xenlab}, the site file {site_file}"
"""


def install_script(house: Bundle, member: Member, stage: str, sha: str) -> str:
    """The shell script that installs the staged files on the host; every value quoted."""
    target = wheelhouse.target_for(member.site.install.profile)
    q = shlex.quote
    return INSTALL.format(
        stage=q(stage), app=q(APP_DIR), wheels=q(WHEELS), sums=q(wheelhouse.SUMS),
        packages=" ".join(q(p) for p in target.apt_packages), app_tar=q(wheelhouse.APP),
        python=q(target.python), pip_wheel=q(house.pip_wheel), xenlab=q(house.xenlab),
        site_file=q(SITE_FILE), deployed=q(DEPLOYED), digest=q(sha),
    )  # fmt: skip


def deploy_one(
    fleet: Fleet, member: Member, house: Bundle, say: Callable[[str], None]
) -> fleet_run.HostResult:
    """Deploy on one host: nothing when its DEPLOYED digest is this deploy's, else stage the
    files over SFTP and run the install script as root."""
    sha = digest(house, member)
    root = lambda line: fleet_run.as_root(member, line)  # noqa: E731

    def work(conn) -> Tuple[str, Optional[int], str, Any]:
        invoke = shlex.quote(fleet_run.INVOKE)
        there = conn.run(
            root(f"test -x {invoke} && cat {shlex.quote(DEPLOYED)}"),
            hide=True, warn=True, in_stream=False,
        )  # fmt: skip
        if there.ok and there.stdout.strip() == sha:
            return "no changes", 0, f"{house.xenlab} and its site file are there already", None
        stage = conn.run("mktemp -d /tmp/xenlab-deploy.XXXXXX", hide=True, in_stream=False)
        stage_dir = stage.stdout.strip()
        conn.run(f"mkdir {shlex.quote(stage_dir + '/wheels')}", hide=True, in_stream=False)
        for name in house.files:
            conn.put(str(house.folder / name), f"{stage_dir}/wheels/{name}")
        conn.put(io.BytesIO(member.site_text), f"{stage_dir}/site.yaml")
        say(f"{member.name} | copied {len(house.files)} files, installing {house.xenlab}")
        script = install_script(house, member, stage_dir, sha)
        done = conn.run(root("sh -c " + shlex.quote(script)), hide=True, warn=True, in_stream=False)
        status = "deployed" if done.exited == 0 else fleet_run.status_of(done.exited)
        return status, done.exited, done.stdout + done.stderr, None

    return fleet_run.on_connection(fleet, member, work)


def deploy(
    fleet: Fleet, site: Site, explicit: Optional[str], say: Callable[[str], None]
) -> List[fleet_run.HostResult]:
    """fleet.deploy: the wheelhouse for each host's profile (found or built first, before any
    connection), then every host at once."""
    houses: Dict[str, Bundle] = {}
    for member in fleet.members:
        profile = member.site.install.profile
        if profile not in houses:
            houses[profile] = wheelhouse_for(site, profile, explicit, say)
    return fleet_run.on_hosts(
        fleet, lambda m: deploy_one(fleet, m, houses[m.site.install.profile], say)
    )
