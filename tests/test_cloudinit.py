"""The NoCloud seed's parts: user-data that cloud-init's own schema accepts, network-config that
cloud-init renders as meant, meta-data, and the ISO read back as cloud-init will find it."""

import ipaddress
import shutil
import subprocess

import pytest

from cloudinit import host_keys, meta_data, network_config, password, seed, user_data
from cloudinit.errors import SeedError
from cloudinit.yaml_text import dump
from pipeline import mac

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcIRqNcmYzCKyRlQhYiqbUzXqiYF3Y7mAGwB54Tt3Ko test@xenlab"
NETS = [ipaddress.IPv4Network("192.0.2.0/28"), ipaddress.IPv4Network("198.51.100.0/24")]
HASH = "$6$saltsalt$" + "x" * 86


def cloud_config(libwrap: bool, dropin: bool, keys=()):
    return user_data.build(
        hostname="guest-01",
        user="admin",
        authorized_keys=[KEY],
        root_password_hash=HASH,
        allow_from=NETS,
        sshd=user_data.Sshd(libwrap=libwrap, dropin=dropin),
        host_keys=keys,
        mirror="http://mirror.example/debian",
        security_mirror="http://mirror.example/debian-security",
    )


@pytest.fixture(scope="module")
def keys():
    return host_keys.generate("guest-01")


def files_of(data):
    return {f["path"]: f for f in data["write_files"]}


@pytest.mark.parametrize(
    "libwrap,dropin", [(True, False), (False, True)], ids=["bionic", "bookworm"]
)
def test_user_data_passes_cloud_inits_schema(tmp_path, keys, libwrap, dropin):
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed (./setup --test installs it)")
    path = tmp_path / "user-data"
    path.write_text(dump(cloud_config(libwrap, dropin, keys), user_data.HEADER))
    proc = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout


def test_user_data_admin_user_and_root():
    data = cloud_config(False, True)
    admin, root = data["users"]
    assert admin["name"] == "admin" and admin["ssh_authorized_keys"] == [KEY]
    assert admin["lock_passwd"] is True
    assert root == {"name": "root", "lock_passwd": False, "hashed_passwd": HASH}
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    assert data["apt"]["primary"][0]["uri"] == "http://mirror.example/debian"
    assert data["apt"]["security"][0]["uri"] == "http://mirror.example/debian-security"


def test_sshd_without_libwrap_limits_networks_in_a_dropin():
    files = files_of(cloud_config(libwrap=False, dropin=True))
    assert "/etc/hosts.allow" not in files and "/etc/hosts.deny" not in files
    text = files[user_data.DROPIN]["content"]
    assert "AllowUsers admin@192.0.2.0/28 admin@198.51.100.0/24\n" in text
    assert "PermitRootLogin no\n" in text and "PasswordAuthentication no\n" in text


def test_sshd_with_libwrap_uses_hosts_allow_and_deny():
    files = files_of(cloud_config(libwrap=True, dropin=False))
    assert files["/etc/hosts.allow"]["content"].endswith(
        "sshd: 192.0.2.0/255.255.255.240 198.51.100.0/255.255.255.0\n"
    )
    assert files["/etc/hosts.deny"]["content"].endswith("sshd: ALL\n")
    appended = files["/etc/ssh/sshd_config"]
    assert appended["append"] is True
    assert "PermitRootLogin no\n" in appended["content"]
    assert "AllowUsers admin\n" in appended["content"]  # the networks are libwrap's job here


def test_host_keys_are_in_user_data_with_their_fingerprints(keys):
    data = cloud_config(False, True, keys)
    assert {k.type for k in keys} == {"ed25519", "rsa"}
    for key in keys:
        assert data["ssh_keys"][f"{key.type}_private"].startswith("-----BEGIN OPENSSH PRIVATE KEY")
        assert data["ssh_keys"][f"{key.type}_public"] == key.public
        assert "SHA256:" in key.fingerprint and key.fingerprint.endswith(f"({key.type.upper()})")


def test_a_failing_ssh_keygen_is_the_leafs_own_error_with_what_it_said():
    with pytest.raises(SeedError, match=r"^ssh-keygen exited \d+: .*nonsense"):
        host_keys._run(["ssh-keygen", "-q", "-t", "nonsense", "-N", "", "-f", "/dev/null/x"])


def test_a_missing_openssl_is_the_leafs_own_error_naming_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SeedError) as err:
        password.sha512_crypt("x")
    assert str(err.value) == "openssl is missing (Debian/Ubuntu package openssl)"


def test_password_hash_is_sha512_crypt_of_the_password():
    secret = password.generate()
    hashed = password.sha512_crypt(secret)
    assert hashed.startswith("$6$") and secret not in hashed
    salt = hashed.split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=secret + "\n",
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert again == hashed
    assert len(secret) >= 24 and password.generate() != secret


def test_network_config_v2():
    data = network_config.build(
        "00:16:3E:12:34:56",
        ipaddress.IPv4Interface("192.0.2.2/28"),
        ipaddress.IPv4Address("192.0.2.1"),
        [ipaddress.IPv4Address("192.0.2.1")],
    )
    assert data == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "00:16:3e:12:34:56"},
                "set-name": "eth0",
                "addresses": ["192.0.2.2/28"],
                "gateway4": "192.0.2.1",
                "nameservers": {"addresses": ["192.0.2.1"]},
            }
        },
    }


@pytest.mark.parametrize("renderer", ["eni", "netplan"])
def test_cloud_init_renders_the_network_config(tmp_path, renderer):
    """cloud-init's own converter: Debian's ifupdown (eni) and Ubuntu's netplan get the address,
    the default route and the name servers."""
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed (./setup --test installs it)")
    src = tmp_path / "network-config"
    src.write_text(
        dump(
            network_config.build(
                mac.derive("guest-01"),
                ipaddress.IPv4Interface("192.0.2.2/28"),
                ipaddress.IPv4Address("192.0.2.1"),
                [ipaddress.IPv4Address("192.0.2.14")],
            )
        )
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        ["cloud-init", "devel", "net-convert", "-p", str(src), "-k", "yaml", "-d", str(out),
         "-D", "debian" if renderer == "eni" else "ubuntu", "-O", renderer],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rendered = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "192.0.2.2" in rendered and "192.0.2.14" in rendered
    if renderer == "eni":
        assert "gateway 192.0.2.1" in rendered
    else:
        assert "192.0.2.1" in rendered and mac.derive("guest-01") in rendered


def test_meta_data_instance_id_follows_the_seed():
    one = meta_data.build("guest-01", "user-data A")
    assert one["local-hostname"] == "guest-01" and one["instance-id"].startswith("guest-01-")
    assert meta_data.build("guest-01", "user-data A") == one
    assert meta_data.build("guest-01", "user-data B")["instance-id"] != one["instance-id"]


def test_seed_iso_reads_back_with_label_and_files(tmp_path):
    files = {
        "meta-data": "instance-id: x\n",
        "user-data": "#cloud-config\n",
        "network-config": "version: 2\n",
    }
    image = seed.build(files)
    assert seed.read(image) == ("cidata", files)
    path = tmp_path / "seed.iso"
    path.write_bytes(image)
    # What the guest's blkid sees: cloud-init's NoCloud looks for this label.
    probe = subprocess.run(
        ["blkid", "-o", "export", str(path)], capture_output=True, text=True
    ).stdout
    assert "LABEL=cidata" in probe and "TYPE=iso9660" in probe
