"""Boot menus per loader, armed and not; loader choice; values that would break a menu refused.

The GRUB menus are checked by GRUB's own parser (grub-script-check, grub-common).
"""

import dataclasses
import re
import shutil
import subprocess

import pytest
from pydantic import ValidationError

from pipeline.config import InstallConfig
from pipeline.errors import BadInput
from pxe import menus

ARMED = "52:54:00:77:00:10"
OTHER = "52:54:00:77:00:11"
SERVER = menus.ServerInfo(
    address="10.77.0.1",
    http_port=8080,
    install=InstallConfig(
        profile="debian-12",
        hostname="xen01",
        domain="lab.example.net",
        kernel_args=["console=ttyS0,115200n8"],
    ),
)


TFTP_ONLY = dataclasses.replace(SERVER, http_boot=False)  # pxe.http_boot: false


def armed(mac: str) -> bool:
    return mac == ARMED


def render(path: str, server: menus.ServerInfo = SERVER) -> str:
    text = menus.render(path, server, armed)
    assert text is not None, path
    return text


def grub_check(tmp_path, text: str) -> None:
    tool = shutil.which("grub-script-check")
    if tool is None:
        pytest.skip("grub-script-check is not installed (grub-common)")
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(text)
    proc = subprocess.run([tool, str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


PRESEED_URL = f"url=http://10.77.0.1:8080/preseed/{ARMED}.cfg"
INSTALL_ARGS = [
    "auto=true",
    "priority=critical",
    PRESEED_URL,
    "interface=auto",
    "netcfg/dhcp_timeout=30",
    "hostname=xen01",
    "domain=lab.example.net",
    "locale=en_US.UTF-8",
    "keymap=us",
    "console=ttyS0,115200n8",
]


@pytest.mark.parametrize(
    "server, kernel, initrd",
    [
        (
            SERVER,  # lpxelinux.0 fetches them over HTTP
            "http://10.77.0.1:8080/installers/debian-12/linux",
            "http://10.77.0.1:8080/installers/debian-12/initrd.gz",
        ),
        (
            TFTP_ONLY,  # pxelinux.0 over TFTP, from the TFTP root, not bios/
            "::installers/debian-12/linux",
            "::installers/debian-12/initrd.gz",
        ),
    ],
)
def test_pxelinux_armed_installs_by_default(server, kernel, initrd):
    text = render("bios/pxelinux.cfg/01-52-54-00-77-00-10", server)
    assert re.search(r"^DEFAULT install$", text, re.M)
    assert re.search(r"^UI vesamenu\.c32$", text, re.M)
    assert re.search(rf"^  KERNEL {re.escape(kernel)}$", text, re.M)
    assert re.search(rf"^  INITRD {re.escape(initrd)}$", text, re.M)
    append = re.search(r"^\s*APPEND (.*)$", text, re.M).group(1).split()
    assert append == INSTALL_ARGS
    assert "LOCALBOOT 0" in text  # the way out is still offered
    assert re.search(r"^SERIAL 0 115200$", text, re.M)


@pytest.mark.parametrize(
    "path", ["bios/pxelinux.cfg/01-52-54-00-77-00-11", "bios/pxelinux.cfg/default"]
)
def test_pxelinux_unarmed_and_default_boot_the_local_disk(path):
    text = render(path)
    assert re.search(r"^DEFAULT local$", text, re.M)
    assert "LOCALBOOT 0" in text
    assert "KERNEL" not in text and "preseed" not in text


def test_pxelinux_menu_is_plain_text_with_known_keywords():
    keywords = {"SERIAL", "UI", "MENU", "TIMEOUT", "DEFAULT", "LABEL", "KERNEL", "INITRD"}
    keywords |= {"APPEND", "LOCALBOOT"}
    for line in render("bios/pxelinux.cfg/01-52-54-00-77-00-10").splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split()[0] in keywords, line
            assert line.isprintable()


def test_grub_dispatcher_chooses_by_mac_and_falls_back_to_local(tmp_path):
    text = render("/grub/grub.cfg")  # GRUB asks with a leading slash
    assert 'source "$prefix/mac/${net_default_mac}.cfg"' in text
    assert "exit" in text and "linux " not in text
    assert "serial --unit=0 --speed=115200" in text
    grub_check(tmp_path, text)


@pytest.mark.parametrize("server, device", [(SERVER, "(http,10.77.0.1:8080)"), (TFTP_ONLY, "")])
def test_grub_armed_installs_over_http_or_tftp(tmp_path, server, device):
    text = render(f"grub/mac/{ARMED}.cfg", server)
    assert "set default=install" in text
    linux = re.search(r"^\s*linux (\S+) (.*)$", text, re.M)
    assert linux.group(1) == f"{device}/installers/debian-12/linux"
    assert linux.group(2).split() == INSTALL_ARGS
    initrd = f"{device}/installers/debian-12/initrd.gz"
    assert re.search(rf"^\s*initrd {re.escape(initrd)}$", text, re.M)
    assert "set xenlab_menu=1" in text
    grub_check(tmp_path, text)


def test_grub_unarmed_boots_the_local_disk(tmp_path):
    text = render(f"grub/mac/{OTHER}.cfg")
    assert "set default=local" in text and "linux " not in text
    grub_check(tmp_path, text)


def test_ipxe_armed_loads_the_installer_over_http():
    text = render(f"ipxe/{ARMED}.ipxe")
    assert text.startswith("#!ipxe\n")
    kernel = re.search(r"^kernel (\S+) (.*)$", text, re.M)
    assert kernel.group(1) == "http://10.77.0.1:8080/installers/debian-12/linux"
    assert kernel.group(2).split() == ["initrd=initrd.gz"] + INSTALL_ARGS
    assert re.search(r"^initrd http://10.77.0.1:8080/installers/debian-12/initrd.gz$", text, re.M)
    assert re.search(r"^boot$", text, re.M)


def test_ipxe_unarmed_exits_to_the_next_boot_device():
    text = render(f"ipxe/{OTHER}.ipxe")
    assert text.startswith("#!ipxe\n")
    assert re.search(r"^exit$", text, re.M) and "kernel" not in text


@pytest.mark.parametrize(
    "path",
    [
        "bios/pxelinux.0",
        "bios/pxelinux.cfg/C0A80001",
        "bios/pxelinux.cfg/01-52-54-00-77-00",
        "bios/pxelinux.cfg/01-52-54-00-77-00-10/../default",
        "grub/x86_64-efi/grub.cfg",  # GRUB's first try: absent, so it reads grub/grub.cfg
        "grub/mac/52:54:00:77:00:1G.cfg",
        "ipxe/../preseed/52:54:00:77:00:10.cfg",
        "ipxe/52-54-00-77-00-10.ipxe",
        "installers/debian-12/linux",
        "",
    ],
)
def test_other_paths_are_not_menus(path):
    assert menus.render(path, SERVER, armed) is None


def test_loader_follows_the_architecture_and_ipxe():
    assert menus.loader_for(0, None, ARMED, SERVER) == "bios/lpxelinux.0"
    assert menus.loader_for(0, None, ARMED, TFTP_ONLY) == "bios/pxelinux.0"
    for arch in (6, 7, 9):
        assert menus.loader_for(arch, None, ARMED, SERVER) == "bootx64.efi"
    url = menus.loader_for(0, b"iPXE", "52:54:00:77:00:10", SERVER)
    assert url == f"http://10.77.0.1:8080/ipxe/{ARMED}.ipxe"
    # the URL names exactly the path render() answers
    assert menus.render(url.split(":8080/")[1], SERVER, armed).startswith("#!ipxe")


@pytest.mark.parametrize("server", [SERVER, TFTP_ONLY])
def test_uefi_http_boot_gets_shim_as_a_url(server):
    """Vendor class HTTPClient (UEFI HTTP Boot): shim's URL, whatever pxe.http_boot says (such
    firmware has no TFTP); shim then fetches grubx64.efi beside it."""
    for arch in (16, 7):
        url = menus.loader_for(arch, None, ARMED, server, http_client=True)
        assert url == "http://10.77.0.1:8080/bootx64.efi"
    # iPXE's own user class still wins: it runs its script
    assert menus.loader_for(16, b"iPXE", ARMED, SERVER, http_client=True).endswith(".ipxe")


@pytest.mark.parametrize(
    "field, value",
    [
        ("kernel_args", ['quiet "x']),
        ("kernel_args", ["a\nb"]),
        ("kernel_args", ["a b"]),
        ("kernel_args", ["$(reboot)"]),
        ("hostname", 'x"y'),
        ("hostname", "x\ny"),
        ("domain", "lab'x"),
        ("locale", "en_US\n"),
        ("keyboard", "us;exit"),
        ("disk", "/dev/sda\n"),
        ("user", "ad min"),
    ],
)
def test_values_with_quotes_or_newlines_are_refused(field, value):
    with pytest.raises(ValidationError) as err:
        InstallConfig(**{field: value})
    assert field in str(err.value)


def test_the_template_guard_refuses_what_slipped_past_validation():
    # a config built without validation (model_construct) still cannot break a menu
    values = dict(SERVER.install)
    values["hostname"] = 'x" rm'
    bad = InstallConfig.model_construct(**values)
    server = menus.ServerInfo("10.77.0.1", 8080, bad)
    with pytest.raises(BadInput):
        menus.render(f"ipxe/{ARMED}.ipxe", server, armed)


def test_a_bad_server_address_is_refused():
    server = menus.ServerInfo('10.77.0.1" x', 8080, SERVER.install)
    with pytest.raises(BadInput):
        menus.render(f"ipxe/{ARMED}.ipxe", server, armed)
