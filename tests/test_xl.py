"""xl's outputs as data: `xl list` with every state flag and a domain in the middle of dying,
`xl list -l` JSON, `xentop -b`, `xl uptime`, waiting for a domain to be gone, Xen's version.

The files in tests/data/xl say in README.md which are recorded and which are written from xl's
and xentop's own printf formats (no Xen runs on this machine).
"""

from pathlib import Path

import pytest

from pipeline import xl

DATA = Path(__file__).parent / "data" / "xl"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# --- the state flags ----------------------------------------------------------------------------
STATES = {
    "Domain-0": ("r-----", ["running"], "running"),
    "guest-01": ("-b----", ["blocked"], "blocked"),
    "guest-02": ("--p---", ["paused"], "paused"),
    "guest-03": ("---s--", ["shutdown (poweroff)"], "shutdown"),
    "guest-04": ("---sc-", ["crashed"], "crashed"),
    "guest-05": ("-----d", ["dying"], "dying"),
    "guest-06": ("------", [], "runnable"),
    "guest-07": ("---sr-", ["shutdown (reboot)"], "shutdown"),
}


def test_every_state_flag_is_decoded():
    domains = xl.parse_list(recorded("xl-list-states.txt"))
    assert [d.name for d in domains] == list(STATES)
    for domain in domains:
        flags, states, word = STATES[domain.name]
        assert domain.state == flags
        assert xl.decode_state(domain.state) == states, domain.name
        assert xl.state_word(domain.state) == word, domain.name
    assert [d.name for d in domains if xl.leaving(d.state)] == [
        "guest-03", "guest-04", "guest-05", "guest-07",
    ]  # fmt: skip


def test_flags_together_and_every_shutdown_reason():
    assert xl.decode_state("--ps--") == ["paused", "shutdown (poweroff)"]
    assert xl.state_word("--ps--") == "shutdown"
    assert xl.decode_state("-b---d") == ["blocked", "dying"]
    assert xl.state_word("-b---d") == "dying"
    assert xl.decode_state("r-p---") == ["running", "paused"]
    reasons = {letter: xl.decode_state(f"---s{letter}-") for letter in "-rscwS"}
    assert reasons == {
        "-": ["shutdown (poweroff)"], "r": ["shutdown (reboot)"], "s": ["shutdown (suspend)"],
        "c": ["crashed"], "w": ["shutdown (watchdog)"], "S": ["shutdown (soft-reset)"],
    }  # fmt: skip
    assert xl.decode_state("---s?-") == ["shutdown (reason '?')"]
    assert xl.decode_state("") == []  # a short column reads as no flag


def test_a_domain_in_the_middle_of_dying():
    """After `xl shutdown -w`: first shut down (paused, s), then dying with its name gone."""
    going = xl.find(xl.parse_list(recorded("xl-list-shutting-down.txt")), "guest-01")
    assert going.state == "--ps--" and xl.leaving(going.state)
    assert xl.state_word(going.state) == "shutdown"
    dying = xl.parse_list(recorded("xl-list-dying.txt"))
    assert xl.find(dying, "guest-01") is None  # `xl list guest-01` fails from here on
    ghost = xl.find(dying, "(null)")
    assert ghost.id == 1 and ghost.memory_mib == 0
    assert xl.decode_state(ghost.state) == ["paused", "shutdown (poweroff)", "dying"]
    assert xl.state_word(ghost.state) == "dying"


def test_the_labs_recorded_list_still_reads():
    domains = xl.parse_list(recorded("xl-list.txt"))
    assert [(d.name, xl.state_word(d.state)) for d in domains] == [
        ("Domain-0", "running"), ("guest-01", "blocked"),
    ]  # fmt: skip


# --- xl list -l ----------------------------------------------------------------------------------
def test_xl_list_long_json():
    configs = {c.name: c for c in xl.parse_list_long(recorded("xl-list-long.json"))}
    one = configs["guest-01"]
    assert (one.domid, one.type, one.max_memkb, one.vcpus) == (1, "pv", 1048576, 2)
    assert one.kernel == "/usr/lib/grub-xen/grub-x86_64-xen.bin" and one.bootloader is None
    assert one.boot == "pvgrub"
    assert [(d.vdev, d.target, d.writable, d.cdrom) for d in one.disks] == [
        ("xvda2", "/dev/VolumeGroupXen/guest-01-disk", True, False),
        ("xvda1", "/dev/VolumeGroupXen/guest-01-swap", True, False),
        ("xvdc", "/var/lib/xenlab/guests/guest-01/seed.iso", False, True),
    ]
    assert one.nics == [xl.NicInfo(0, "00:16:3e:3f:a7:7c", "192.0.2.2", "xenbr0")]
    two = configs["guest-02"]
    assert two.boot == "pygrub" and two.vcpus == 1
    assert two.nics[0].mac == "00:16:3e:12:34:56"  # lower case, as xenlab compares MACs


def test_xl_list_long_is_defensive():
    assert xl.parse_list_long("[]") == []
    sparse = xl.parse_list_long('[{"domid": 3, "config": {"c_info": {"name": "bare"}}}]')
    assert sparse[0].name == "bare" and sparse[0].disks == [] and sparse[0].boot == "-"
    pvh = xl.parse_list_long(
        '[{"domid": 4, "config": {"c_info": {"type": "pvh", "name": "p"},'
        ' "b_info": {"kernel": "/usr/lib/grub-xen/grub-i386-xen_pvh.bin", "max_vcpus": 1}}}]'
    )
    assert pvh[0].boot == "pvh" and pvh[0].vcpus == 1
    old = xl.parse_list_long(  # Xen 4.9 keeps kernel inside type.pv
        '[{"domid": 5, "config": {"c_info": {"name": "o"},'
        ' "b_info": {"type.pv": {"kernel": "/usr/lib/grub-xen/grub-x86_64-xen.bin"}}}}]'
    )
    assert old[0].boot == "pvgrub"
    for text in ("(domain (domid 1))", '{"domid": 1}'):  # xl.conf output_format="sxp"; no list
        with pytest.raises(ValueError):
            xl.parse_list_long(text)


# --- xentop -b, xl uptime -------------------------------------------------------------------------
def test_xentop_batch_output_last_iteration():
    rows = {r.name: r for r in xl.parse_xentop(recorded("xentop-b.txt"))}
    assert list(rows) == ["Domain-0", "guest-01", "guest-02", "guest-03x-", "guest-04"]
    dom0 = rows["Domain-0"]
    assert dom0.maxmem_kib is None and dom0.cpu_pct == 4.2 and dom0.vcpus == 8
    assert xl.state_word(dom0.state) == "running"
    one = rows["guest-01"]
    assert (one.cpu_s, one.mem_kib, one.maxmem_kib, one.nets, one.vbds) == (
        121, 1048576, 1049600, 1, 3,
    )  # fmt: skip
    assert (one.net_tx_kib, one.net_rx_kib) == (1535, 20980)
    # xentop's own letter order (d s b c p r), decoded as xl's
    assert xl.state_word(one.state) == "blocked"
    assert xl.state_word(rows["guest-02"].state) == "paused"
    assert xl.state_word(rows["guest-03x-"].state) == "dying"  # names cut at 10 without -f
    assert xl.decode_state(rows["guest-04"].state) == ["crashed"]


def test_xentop_ignores_the_detail_lines():
    text = recorded("xentop-b.txt") + (
        "VCPUs(sec):   0:         60s  1:         61s\n"
        "Net0 RX:  2148007bytes    12043pkts        0err        0drop  TX:  1570816bytes\n"
        "VBD BlkBack 51714 [ca: 2] OO:        0   RD:     5413   WR:      815\n"
    )
    assert len(xl.parse_xentop(text)) == 5


def test_xl_uptime():
    assert xl.parse_uptime(recorded("xl-uptime.txt")) == {
        "Domain-0": 2 * 86400 + 3 * 3600 + 4 * 60 + 5,
        "guest-01": 12 * 60 + 34,
        "guest-02": 86400 + 10 * 3600 + 1,
    }


# --- waiting for a domain to go, with a clock of its own -----------------------------------------
class FakeXl:
    """`xl list NAME` answers for `lingers` more calls, then fails as for an unknown domain."""

    def __init__(self, lingers: int):
        self.lingers = lingers
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        if self.lingers > 0:
            self.lingers -= 1
            return xl.Answer(0, recorded("xl-list-one.txt"), "")
        return xl.Answer(
            1, "", "guest-01 is an invalid domain identifier (rc=-6)\n"
        )  # 4.17's words


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_gone_polls_until_xl_list_fails():
    fake, clock = FakeXl(lingers=14), Clock()  # 7 s at 0.5 s a poll, as after xl shutdown -w
    assert xl.wait_gone("guest-01", 30, ask=fake, clock=clock, sleep=clock.sleep)
    assert len(fake.calls) == 15 and set(fake.calls) == {("list", "guest-01")}
    assert clock.now == pytest.approx(107.0)


def test_wait_gone_gives_up_at_the_timeout():
    fake, clock = FakeXl(lingers=1000), Clock()
    assert not xl.wait_gone("guest-01", 5, ask=fake, clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(105.0)


# --- Xen's version --------------------------------------------------------------------------------
def test_xen_version_from_xl_info_and_from_packages():
    assert xl.info_version(xl.parse_info(recorded("xl-info.txt"))) == (4, 9)
    assert xl.info_version({}) is None
    assert xl.package_version(["xen-hypervisor-4.9-amd64"]) == (4, 9)
    assert xl.package_version(["xen-hypervisor-4.9-amd64", "xen-hypervisor-4.17-amd64"]) == (4, 17)
    assert xl.package_version(["xen-hypervisor-common", "xen-utils-4.17"]) is None


def test_no_xl_is_an_answer_not_an_exception(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    answer = xl.call("info")
    assert answer.code == 127 and "not installed" in answer.err
    assert xl.run("list") is None and not xl.running()
    version, source = xl.host_version()
    assert version is None and "no xl info answer" in source


# --- recorded on Debian 12's Xen 4.17.5 under qemu (tests/data/xl/README.md) ---------------------
def test_recorded_4_17_list_long_with_domain_0():
    configs = xl.parse_list_long(recorded("xl-list-long-4.17.json"))
    assert [(c.domid, c.name) for c in configs] == [(0, "Domain-0"), (1, "rec-01")]
    dom0, guest = configs
    assert dom0.disks == [] and dom0.nics == [] and dom0.boot == "-"
    assert (guest.type, guest.max_memkb, guest.vcpus, guest.boot) == ("pv", 524288, 1, "pvgrub")
    assert guest.kernel == "/usr/lib/grub-xen/grub-x86_64-xen.bin"  # guest.build's pvgrub2 cfg
    assert [(d.vdev, d.target, d.writable, d.cdrom) for d in guest.disks] == [
        ("xvda2", "/data/disk.img", True, False),
        ("xvda1", "/data/swap.img", True, False),
        ("xvdc", "/data/seed.iso", False, True),
    ]
    assert guest.nics == [xl.NicInfo(0, "00:16:3e:6f:ef:bb", "192.0.2.5", "xenbr0")]


def test_recorded_4_17_list_xentop_uptime_info_network_list():
    created = xl.parse_list(recorded("xl-list-4.17-created.txt"))
    assert [(d.name, d.id, d.memory_mib, d.vcpus, d.state) for d in created] == [
        ("Domain-0", 0, 1024, 2, "r-----"), ("rec-01", 1, 512, 1, "r-----"),
    ]  # fmt: skip
    paused = xl.find(
        xl.parse_list(recorded("xl-list-4.17-paused-twice-unpaused-once.txt")), "rec-01"
    )
    assert xl.state_word(paused.state) == "paused"  # Xen counts pauses: one unpause is not enough
    rows = xl.parse_xentop(recorded("xentop-b-4.17.txt"))
    assert [(r.name, xl.state_word(r.state), r.cpu_pct) for r in rows] == [
        ("Domain-0", "running", 53.1), ("rec-01", "running", 77.7),
    ]  # fmt: skip
    assert (rows[1].mem_kib, rows[1].maxmem_kib, rows[1].nets, rows[1].vbds) == (
        524288,
        525312,
        1,
        3,
    )
    assert xl.parse_uptime(recorded("xl-uptime-4.17.txt")) == {"Domain-0": 226, "rec-01": 168}
    info = xl.parse_info(recorded("xl-info-4.17.txt"))
    assert xl.info_version(info) == (4, 17) and xl.dom0_mem(info) == "1024M,max:1024M"
    assert xl.parse_network_list(recorded("xl-network-list-4.17.txt")) == {0: "00:16:3e:6f:ef:bb"}
    assert "invalid domain identifier" in recorded("xl-list-unknown-4.17.txt")
    assert "shutdown failed (rc=-9)" in recorded("xl-shutdown-w-paused-4.17.txt")


def test_recorded_4_17_shutdown_linger_and_a_name_in_use():
    going = xl.find(xl.parse_list(recorded("xl-list-4.17-shutting-down.txt")), "rec-01")
    assert going.state == "--ps--" and xl.leaving(going.state)
    assert xl.decode_state(going.state) == ["paused", "shutdown (poweroff)"]
    assert xl.find(xl.parse_list(recorded("xl-list-4.17-gone.txt")), "rec-01") is None
    paused = xl.find(xl.parse_list(recorded("xl-list-4.17-paused.txt")), "rec-01")
    assert xl.state_word(paused.state) == "paused"
    assert "has been shut down, reason code 0" in recorded("xl-shutdown-w-4.17.txt")
    # what guest.start's retry looks for when the old domain is still there
    assert "already exists" in recorded("xl-create-exists-4.17.txt")
