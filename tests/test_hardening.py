"""Issue 14's input hardening: values that must never reach the system, refused with exit 2.

A trailing newline, a carriage return or a NUL in any string field of the site model; unusable
subnets; SSH keys that do not decode; interface names the kernel reserves; -f files and INVOKE_*
variables Invoke itself would trip over; --netns "".
"""

import typing

import pytest
from pydantic import BaseModel

from pipeline.config import Site, load_site
from pipeline.errors import BadInput
from tests.test_config import ECDSA, KEY, RSA

# A good value for each string field whose default is None or empty; a new string field without
# a string default fails test_every_string_field_has_a_sample until it gets one here.
SAMPLES = {
    "host.storage.device": "/dev/sdb",
    "host.xen.package": "xen-hypervisor-4.9-amd64",
    "install.mac": "52:54:00:12:34:56",
    "install.ssh_authorized_keys": KEY,
    "install.mirror": "http://mirror.example/ubuntu",
    "install.installer_url": "http://mirror.example/ubuntu/images",
    "install.password_hash": "$6$salt$" + "a" * 86,
    "install.kernel_args": "console=ttyS0,115200n8",
    "pxe.interface": "eth0",
    "pxe.dhcp_range": "192.0.2.8-192.0.2.14",
    "images.mirror": "http://mirror.example/debian",
    "images.security_mirror": "http://mirror.example/debian-security",
    "images.ubuntu_mirror": "http://mirror.example/ubuntu",
    "images.source": "http://cache.example/images",
    "guests.g1.bridge": "xenbr1",
    "guests.g1.ssh_authorized_keys": KEY,
    "fleet.hosts.g1.address": "192.0.2.9",
    "fleet.hosts.g1.site": "/etc/xenlab/hosts/g1.yaml",
}


def _unwrap(annotation):
    """(the str-like type inside Optional/Annotated, whether it is a list), or (None, False)."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Union:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None, False
            annotation = args[0]
        elif origin in (list, typing.List):
            annotation, is_list = typing.get_args(annotation)[0], True
        else:
            break
    if annotation is str or typing.get_origin(annotation) is typing.Literal:
        return annotation, is_list
    return None, False


def string_fields(model=Site, prefix=""):
    """[(dotted field, is_list, default)] of every str (or Literal) field, sections included."""
    found = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += string_fields(annotation, dotted + ".")
            continue
        if typing.get_origin(annotation) in (dict, typing.Dict):  # guests: NAME -> GuestConfig
            found += string_fields(typing.get_args(annotation)[1], dotted + ".g1.")
            continue
        kind, is_list = _unwrap(annotation)
        if kind is not None:
            found.append((dotted, is_list, info.default))
    return found


FIELDS = string_fields()


def good_value(dotted, is_list, default):
    if dotted in SAMPLES:
        return SAMPLES[dotted]
    if is_list and default:
        return default[0]
    return default if isinstance(default, str) and default else None


def site_with(dotted: str, value) -> dict:
    data = {"host": {"subnet": "192.0.2.0/28"}}
    if dotted.startswith("fleet.hosts.g1."):  # a fleet host needs both of these
        data["fleet"] = {"hosts": {"g1": {"address": SAMPLES["fleet.hosts.g1.address"],
                                          "site": SAMPLES["fleet.hosts.g1.site"]}}}  # fmt: skip
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


def test_every_string_field_has_a_sample():
    assert len(FIELDS) > 30, FIELDS
    missing = [d for d, is_list, default in FIELDS if good_value(d, is_list, default) is None]
    assert missing == [], f"add a good value for these to SAMPLES: {missing}"


@pytest.mark.parametrize("tail", ["\n", "\r", "\x00"], ids=["newline", "CR", "NUL"])
@pytest.mark.parametrize("dotted, is_list, default", FIELDS, ids=[f[0] for f in FIELDS])
def test_a_control_character_in_any_string_field_is_refused(dotted, is_list, default, tail):
    good = good_value(dotted, is_list, default)
    wrap = (lambda v: [v]) if is_list else (lambda v: v)
    load_site(site_with(dotted, wrap(good)))  # the control: the good value loads
    for bad in (good + tail, tail + good, good[:1] + tail + good[1:]):
        try:
            site = load_site(site_with(dotted, wrap(bad)))
        except BadInput as err:
            assert err.problems[0].field.startswith(dotted), (bad, err.problems)
            continue
        # Accepted only as a value rebuilt from what it means (a MAC in its one form): the
        # character itself never reaches the model.
        kept = value_at(site, dotted)
        assert not any(c in str(kept) for c in "\n\r\x00"), (bad, kept)


def value_at(site, dotted: str):
    node = site
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


# --- subnets refused by what they are -----------------------------------------------------------
@pytest.mark.parametrize(
    "subnet, words",
    [
        ("0.0.0.0/0", "every IPv4 address"),
        ("224.0.0.0/4", "multicast"),
        ("239.1.2.0/28", "multicast"),
        ("240.0.0.0/4", "class E"),
        ("255.255.255.240/28", "class E"),
        ("0.0.0.0/8", "'this network'"),
        ("0.1.2.0/28", "'this network'"),
        ("127.0.0.0/8", "loopback"),
        ("127.0.0.0/28", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("10.0.0.0/8", "wider than a subnet routed to one host"),
        ("172.16.0.0/12", "wider than a subnet routed to one host"),
        ("128.0.0.0/1", "wider than a subnet routed to one host"),
    ],
)
def test_unusable_subnets_are_refused(subnet, words):
    with pytest.raises(BadInput) as err:
        load_site({"host": {"subnet": subnet}})
    assert err.value.problems[0].field == "host.subnet" and words in err.value.problems[0].reason


@pytest.mark.parametrize(
    "subnet", ["192.0.2.0/28", "198.51.100.0/24", "203.0.113.4/30", "10.20.0.0/16", "100.64.1.0/24"]
)
def test_documentation_private_and_shared_subnets_are_allowed(subnet):
    assert str(load_site({"host": {"subnet": subnet}}).host.subnet) == subnet


# --- SSH keys: decoded, the type inside matching the line's ---------------------------------------
BODY = KEY.split()[1]
UNDECODABLE = [
    f"ssh-ed25519 {BODY[:-1]} me@laptop",  # cut short: bad padding
    f"ssh-ed25519 {BODY[:40]} me@laptop",  # cut short at a 4-character boundary
    f"ssh-rsa {BODY} me@laptop",  # an ed25519 blob under the rsa type
    f"ssh-ed25519 {RSA} me@laptop",  # and the other way round
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@laptop",  # the type only, no key
    "ssh-ed25519 QUFBQQ== me@laptop",  # decodes, but to no key
]


@pytest.mark.parametrize("key", UNDECODABLE)
@pytest.mark.parametrize("section", ["install", "guests.g1"])
def test_a_key_that_does_not_decode_is_refused(section, key):
    with pytest.raises(BadInput) as err:
        load_site(site_with(f"{section}.ssh_authorized_keys", [key]))
    assert err.value.problems[0].field == f"{section}.ssh_authorized_keys.0"


def test_real_keys_of_each_type_are_accepted():
    keys = [KEY, f"ssh-rsa {RSA} admin@lab", f"ecdsa-sha2-nistp256 {ECDSA}"]
    assert (
        load_site(site_with("guests.g1.ssh_authorized_keys", keys)).guests["g1"].ssh_authorized_keys
        == keys
    )


def test_the_example_keys_in_the_docs_and_the_default_site_are_real_keys():
    import re

    from pipeline.config import check_ssh_key
    from tests.conftest import REPO

    for name in ("docs/user-guide.md", "invoke.yaml", "README.md"):
        text = (REPO / name).read_text()
        for line in re.findall(r"(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-\S+) \S+(?: [\w@.-]+)?", text):
            check_ssh_key(line)


# --- interface names the kernel reserves ----------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["all", "default", "bonding_masters", ".", "..", "a/b", "a b", "a:b", "a" * 16, ""]
)
@pytest.mark.parametrize("field", ["host.bridge", "guests.g1.bridge", "pxe.interface"])
def test_reserved_and_impossible_interface_names_are_refused(field, name):
    if name == "" and field != "host.bridge":
        pytest.skip("empty means unset for an optional interface")
    with pytest.raises(BadInput) as err:
        load_site(site_with(field, name))
    assert err.value.problems[0].field == field
