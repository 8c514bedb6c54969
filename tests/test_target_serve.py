"""`aoe serve` as a process in a lab namespace: features beyond what vblade can be held to."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoe.lab import Lab
from aoe.lab.pair import TwoHosts, make_two_hosts
from aoe.protocol import (
    BROADCAST_MAC,
    AtaErrorBits,
    AtaOpcode,
    AtaStatus,
    Command,
    ConfigBody,
    ConfigCommand,
    Directive,
    DirectiveCommand,
    MaskBody,
    MaskCommand,
    ReserveBody,
    ReserveCommand,
    encode,
    parse_identify,
)
from aoe.protocol.errors import AoeError
from aoe.target import ExportSpec, Target

from .support.target import (
    Client,
    RunningTarget,
    aoe_cmd,
    make_image,
    rss_kib,
    start_pyaoe,
    target_mac,
)

pytestmark = pytest.mark.netns

OTHER = bytes.fromhex("02bb00000001")


@pytest.fixture
def served(two_hosts: TwoHosts, tmp_path: Path) -> Iterator[RunningTarget]:
    rt = start_pyaoe(two_hosts, make_image(tmp_path / "disk.img", 8 << 20), tmp_path / "state")
    yield rt
    rt.stop(two_hosts.lab)


def test_announces_itself_on_start(two_hosts: TwoHosts, client: Client, tmp_path: Path) -> None:
    rt = start_pyaoe(two_hosts, make_image(tmp_path / "d.img", 1 << 20), tmp_path / "st",
                     "--config-string", "hello")
    try:
        got = client.gather(0, 2.0, 1, to=BROADCAST_MAC)
        assert got, "no announcement"
        f = got[0].frame
        assert len(got[0].raw) >= 60 and f.command == Command.QUERY_CONFIG
        assert (f.shelf, f.slot) == (rt.shelf, rt.slot) and f.src == rt.mac
        assert isinstance(f.body, ConfigBody) and f.body.config == b"hello"
    finally:
        rt.stop(two_hosts.lab)


def test_version_error_and_padding(served: RunningTarget, client: Client) -> None:
    req = bytearray(encode(client.ata(served.mac, served.shelf, served.slot,
                                      AtaOpcode.READ_SECTORS_EXT, 0, 1)))
    req[14] = 0x20
    client.send(bytes(req))
    (r,) = client.gather(None, 1.0)
    assert r.frame.is_error and r.frame.error == AoeError.UNSUPPORTED_VERSION
    # Every kind of answer is at least 60 bytes on the wire (veth does not pad).
    frames = [
        client.config(served.mac, served.shelf, served.slot),
        client.ata(served.mac, served.shelf, served.slot, AtaOpcode.FLUSH_CACHE_EXT),
        client.ata(served.mac, served.shelf, served.slot, 0xC8, 0, 1),
        client.ata(served.mac, served.shelf, served.slot, AtaOpcode.READ_SECTORS_EXT, 0, 9),
        client.ata(served.mac, served.shelf, served.slot, AtaOpcode.READ_SECTORS_EXT, 0, 0),
        client.frame(served.mac, served.shelf, served.slot, 9),
        client.frame(served.mac, served.shelf, served.slot, Command.MAC_MASK_LIST,
                     MaskBody(MaskCommand.READ)),
        client.frame(served.mac, served.shelf, served.slot, Command.RESERVE_RELEASE,
                     ReserveBody(ReserveCommand.READ)),
    ]
    for f in frames:
        r2 = client.request(f)
        assert r2 is not None and len(r2.raw) >= 60, f


def test_mask_delete_reopens_access(served: RunningTarget, client: Client) -> None:
    mac, sh, sl = served.mac, served.shelf, served.slot
    edit = client.frame(mac, sh, sl, Command.MAC_MASK_LIST,
                        MaskBody(MaskCommand.EDIT, 0, [Directive(DirectiveCommand.ADD, OTHER)]))
    assert client.request(edit) is not None
    assert client.silent(client.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 0, 1))
    delete = client.frame(mac, sh, sl, Command.MAC_MASK_LIST,
                          MaskBody(MaskCommand.EDIT, 0,
                                   [Directive(DirectiveCommand.DELETE, OTHER)]), src=OTHER)
    r = client.request(delete, to=OTHER)
    assert r is not None and r.frame.body.directives == []  # type: ignore[union-attr]
    assert client.request(client.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 0, 1)) is not None


def test_state_survives_restart(two_hosts: TwoHosts, client: Client, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 1 << 20)
    state = tmp_path / "state"
    rt = start_pyaoe(two_hosts, image, state)
    mac, sh, sl = rt.mac, rt.shelf, rt.slot
    assert client.request(client.config(mac, sh, sl, ConfigCommand.SET, b"kept"))
    assert client.request(client.frame(mac, sh, sl, Command.MAC_MASK_LIST, MaskBody(
        MaskCommand.EDIT, 0, [Directive(DirectiveCommand.ADD, client.mac)])))
    assert client.request(client.frame(mac, sh, sl, Command.RESERVE_RELEASE,
                                       ReserveBody(ReserveCommand.SET, [client.mac])))
    rt.stop(two_hosts.lab)
    (state_file,) = state.glob(f"e{sh}.{sl}-*.json")
    assert json.loads(state_file.read_text())["config_text"] == "kept"
    rt = start_pyaoe(two_hosts, image, state)
    try:
        r = client.request(client.config(mac, sh, sl))
        assert r is not None and r.frame.body.config == b"kept"  # type: ignore[union-attr]
        r = client.request(client.frame(mac, sh, sl, Command.MAC_MASK_LIST,
                                        MaskBody(MaskCommand.READ)))
        assert r is not None and [d.mac for d in r.frame.body.directives] == [client.mac]  # type: ignore[union-attr]
        r = client.request(client.frame(mac, sh, sl, Command.RESERVE_RELEASE,
                                        ReserveBody(ReserveCommand.READ)))
        assert r is not None and r.frame.body.macs == [client.mac]  # type: ignore[union-attr]
        # A stranger is still locked out after the restart.
        assert client.silent(client.config(mac, sh, sl, src=OTHER), to=OTHER)
    finally:
        rt.stop(two_hosts.lab)


def test_read_only_slice(two_hosts: TwoHosts, client: Client, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 1 << 20)
    content = image.read_bytes()
    rt = start_pyaoe(two_hosts, image, tmp_path / "st", "--read-only", "--offset", "64K",
                     "--length", "8K")
    try:
        mac, sh, sl = rt.mac, rt.shelf, rt.slot
        r = client.request(client.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 14, 2))
        assert r is not None and bytes(r.frame.body.data) == content[65536 + 14 * 512 :  # type: ignore[union-attr]
                                                                    65536 + 16 * 512]
        r = client.request(client.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 15, 2))
        assert r is not None and r.frame.body.cmd_status & AtaStatus.ERR  # type: ignore[union-attr]
        r = client.request(client.ata(mac, sh, sl, AtaOpcode.WRITE_SECTORS_EXT, 0, 1,
                                      b"w" * 512, write=True))
        assert r is not None and r.frame.body.err_feature & AtaErrorBits.ABRT  # type: ignore[union-attr]
        r = client.request(client.ata(mac, sh, sl, AtaOpcode.IDENTIFY_DEVICE, count=1))
        assert r is not None
        assert parse_identify(bytes(r.frame.body.data)).sectors == 16  # type: ignore[union-attr]
    finally:
        out, _ = rt.stop(two_hosts.lab)
    assert image.read_bytes() == content
    assert "errors.ata_read_only=1" in out and "errors.ata_out_of_range=1" in out


def test_counters_on_sigusr1_and_exit_as_json(two_hosts: TwoHosts, client: Client,
                                              tmp_path: Path) -> None:
    rt = start_pyaoe(two_hosts, make_image(tmp_path / "d.img", 1 << 20), tmp_path / "st",
                     "--json")
    assert json.loads(rt.first_line)["ready"]["ports"][0]["max_sectors"] == 2
    for i in range(5):
        assert client.request(client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.READ_SECTORS_EXT,
                                         i, 2))
    client.send(b"\xff" * 6 + client.mac + b"\x88\xa2" + b"\x10")  # undecodable
    time.sleep(0.2)
    rt.proc.send_signal(signal.SIGUSR1)
    assert rt.proc.stdout is not None
    line = rt.proc.stdout.readline()
    first = json.loads(line)["counters"]
    assert first["reads"] == 5 and first["bytes_read"] == 5 * 1024
    assert first["errors"]["decode"] == 1
    out, _ = rt.stop(two_hosts.lab, signal.SIGINT)
    last = json.loads(out.strip().splitlines()[-1])["counters"]
    assert last["frames_in"] >= 6 and last["frames_out"] >= 6
    assert rt.proc.returncode == 130  # 128 + SIGINT


@pytest.mark.parametrize("accel", ["1", "0"], ids=["compiled", "python"])
def test_burst_path_named_in_the_ready_line(two_hosts: TwoHosts, tmp_path: Path,
                                            accel: str) -> None:
    """AOE_ACCEL=0 keeps the Python burst path; by default the compiled one serves (the
    install builds it where a C compiler is found, as `make setup` provides)."""
    rt = start_pyaoe(two_hosts, make_image(tmp_path / "d.img", 1 << 20), tmp_path / "st",
                     "--json", env={"AOE_ACCEL": accel})
    try:
        (port,) = json.loads(rt.first_line)["ready"]["ports"]
        assert port["compiled_burst_path"] is (accel == "1")
    finally:
        rt.stop(two_hosts.lab)


@pytest.fixture(params=["1", "0"], ids=["compiled", "python"])
def served_both(request: pytest.FixtureRequest, two_hosts: TwoHosts,
                tmp_path: Path) -> Iterator[RunningTarget]:
    """`aoe serve` on each burst path in turn."""
    rt = start_pyaoe(two_hosts, make_image(tmp_path / "disk.img", 8 << 20), tmp_path / "state",
                     env={"AOE_ACCEL": request.param})
    yield rt
    rt.stop(two_hosts.lab)


def test_fuzzed_frames_then_correct_data(two_hosts: TwoHosts, served_both: RunningTarget,
                                        client: Client) -> None:
    """10,000 random and mutated frames; the target must still answer correctly."""
    served = served_both
    rng = random.Random(99)
    mac, sh, sl = served.mac, served.shelf, served.slot
    seeds = [
        encode(client.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, 1, 2)),
        encode(client.ata(mac, sh, sl, AtaOpcode.WRITE_SECTORS_EXT, 2048, 2, b"\x01" * 1024,
                          write=True)),
        encode(client.ata(mac, sh, sl, AtaOpcode.IDENTIFY_DEVICE, count=1)),
        encode(client.config(mac, sh, sl, ConfigCommand.TEST_PREFIX, b"abc")),
        encode(client.frame(mac, sh, sl, Command.MAC_MASK_LIST, MaskBody(MaskCommand.READ))),
        encode(client.frame(mac, sh, sl, Command.RESERVE_RELEASE,
                            ReserveBody(ReserveCommand.READ))),
    ]
    sent = 0
    while sent < 10_000:
        f = bytearray(rng.choice(seeds))
        # Keep the destination (ours) and source (so no MAC list locks us out); mutate the
        # rest, never the 12 address bytes.
        for _ in range(rng.randint(1, 6)):
            f[rng.randrange(12, len(f))] = rng.randrange(256)
        if rng.random() < 0.25:
            f = f[: rng.randrange(14, len(f) + 1)]
        if rng.random() < 0.05:
            f = bytearray(mac + client.mac + b"\x88\xa2" + rng.randbytes(rng.randrange(60)))
        # No mask or reserve edits from us: they would lock the final check out.
        if len(f) > 20 and f[19] in (2, 3) and f[14] == 0x10:
            f[19] = 0x77
        try:
            client.send(bytes(f))
        except OSError:
            continue  # e.g. a frame the kernel refuses
        sent += 1
        if sent % 500 == 0:
            client.gather(None, 0.01, None)  # keep our receive queue short
    assert served.proc.poll() is None, "target died"
    client.gather(None, 0.3, None)  # drain
    content = served.image.read_bytes()
    for lba in (0, 100, 1000, 4000):
        r = client.request(client.ata(mac, sh, sl, AtaOpcode.READ_SECTORS_EXT, lba, 2))
        assert r is not None and bytes(r.frame.body.data) == content[lba * 512 : lba * 512 + 1024]  # type: ignore[union-attr]
    out, _ = served.stop(two_hosts.lab)
    assert "errors.decode=" in out


def test_rss_stays_flat_on_a_4gib_sparse_image(two_hosts: TwoHosts, client: Client,
                                               tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        f.truncate(4 << 30)
    rt = start_pyaoe(two_hosts, image, tmp_path / "st")
    try:
        sectors = (4 << 30) // 512
        rng = random.Random(5)
        window = 16
        tags = []
        for i in range(3000):
            lba = rng.randrange(0, sectors - 2) if i % 2 else (i * 2) % sectors
            fr = client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.READ_SECTORS_EXT, lba, 2)
            client.send(fr)
            tags.append(fr.tag)
            if len(tags) >= window:
                got = client.gather(None, 1.0, window)
                assert len(got) == window
                tags.clear()
        client.gather(None, 1.0, len(tags))
        r = client.request(client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.READ_SECTORS_EXT,
                                      sectors - 2, 2))
        assert r is not None and bytes(r.frame.body.data) == bytes(1024)  # type: ignore[union-attr]
        rss = rss_kib(rt.proc.pid)
        print(f"aoe serve RSS after 3000 reads over a 4 GiB sparse image: {rss} KiB")
        assert rss <= 64 * 1024, f"RSS {rss} KiB"
    finally:
        rt.stop(two_hosts.lab)


def test_config_file_serves_many_exports_on_two_interfaces(lab: Lab, tmp_path: Path) -> None:
    th = make_two_hosts(lab)
    second = lab.cable(th.target, th.initiator, mtu=9000)  # target eth1 <-> initiator eth1
    a = make_image(tmp_path / "a.img", 1 << 20, seed=1)
    b = make_image(tmp_path / "b.img", 2 << 20, seed=2)
    cfg = tmp_path / "exports.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        'interfaces = ["eth0", { name = "eth1" }]\n'
        "[[export]]\n"
        f'address = "3.1"\npath = "{a}"\nconfig = "first"\n'
        "[[export]]\n"
        f'address = "3.2"\npath = "b.img"\noffset = "512K"\nread_only = true\n'
        'interfaces = ["eth1"]\n'
    )
    proc = th.target.popen(aoe_cmd("serve", "-c", str(cfg)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    c0 = Client(th.initiator, "eth0")
    c1 = Client(th.initiator, "eth1")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert all(line.startswith("ready") for line in lines), lines
        mac0 = target_mac(th)
        mac1 = bytes.fromhex(second.mac(th.target).replace(":", ""))
        got0 = c0.gather(None, 0.1, None)  # drop announcements
        del got0
        c0.send(c0.config(BROADCAST_MAC, 3, 0xFF))
        on0 = {r.frame.slot for r in c0.gather(None, 0.5, None)}
        c1.send(c1.config(BROADCAST_MAC, 0xFFFF, 0xFF))
        on1 = {(r.frame.slot, r.frame.body.sector_count)  # type: ignore[union-attr]
               for r in c1.gather(None, 0.5, None)}
        assert on0 == {1} and on1 == {(1, 17), (2, 17)}
        r = c1.request(c1.ata(mac1, 3, 2, AtaOpcode.READ_SECTORS_EXT, 0, 4))
        assert r is not None and bytes(r.frame.body.data) == b.read_bytes()[1 << 19 :  # type: ignore[union-attr]
                                                                           (1 << 19) + 2048]
        r = c0.request(c0.config(mac0, 3, 1))
        assert r is not None and r.frame.body.config == b"first"  # type: ignore[union-attr]
    finally:
        c0.close()
        c1.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        lab.untrack(proc)
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert "counters:" in out


def test_python_api_in_a_thread(two_hosts: TwoHosts, client: Client, tmp_path: Path) -> None:
    image = make_image(tmp_path / "d.img", 1 << 20)
    with two_hosts.target.enter():
        target = Target([ExportSpec(5, 5, str(image))], ["eth0"], state_dir=None)
        target.open()
    try:
        target.start()
        r = client.request(client.ata(target_mac(two_hosts), 5, 5, AtaOpcode.READ_SECTORS_EXT,
                                      0, 2))
        assert r is not None and bytes(r.frame.body.data) == image.read_bytes()[:1024]  # type: ignore[union-attr]
        assert target.counters.reads == 1
    finally:
        target.close()
    assert os.path.exists(image)


def test_mtu_option_and_a_down_interface(two_hosts: TwoHosts, client: Client,
                                       tmp_path: Path) -> None:
    two_hosts.cable.set_link(False, end=two_hosts.target)  # the target brings it up itself
    rt = start_pyaoe(two_hosts, make_image(tmp_path / "d.img", 1 << 20), tmp_path / "st",
                     "--mtu", "4000", "-v")
    try:
        assert "mtu=4000" in rt.first_line and "max_sectors=7" in rt.first_line
        r = client.request(client.config(rt.mac, rt.shelf, rt.slot))
        assert r is not None and r.frame.body.sector_count == 7  # type: ignore[union-attr]
    finally:
        _, err = rt.stop(two_hosts.lab)
    # -v: structured key=value log lines
    assert "info interface_up interface=eth0" in err
    assert "info serving interface=eth0 mtu=4000" in err


def test_direct_and_sync_io(two_hosts: TwoHosts, client: Client, tmp_path: Path) -> None:
    image = make_image(tmp_path / "d.img", 1 << 20)
    rt = start_pyaoe(two_hosts, image, tmp_path / "st", "--direct", "--sync")
    try:
        data = os.urandom(1024)
        w = client.request(client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.WRITE_SECTORS_EXT,
                                      33, 2, data, write=True))
        assert w is not None and w.frame.body.cmd_status == AtaStatus.DRDY  # type: ignore[union-attr]
        assert image.read_bytes()[33 * 512 : 35 * 512] == data
        r = client.request(client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.READ_SECTORS_EXT,
                                      33, 2))
        assert r is not None and bytes(r.frame.body.data) == data  # type: ignore[union-attr]
        f = client.request(client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.FLUSH_CACHE_EXT))
        assert f is not None and f.frame.body.cmd_status == AtaStatus.DRDY  # type: ignore[union-attr]
    finally:
        out, _ = rt.stop(two_hosts.lab)
    assert "flushes=1" in out


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    image = make_image(tmp_path / "loop.img", 3 << 20, seed=9)
    try:
        dev = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no loop device: {exc}")
    try:
        yield dev, image
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, timeout=10)


def test_block_device_export(two_hosts: TwoHosts, client: Client, tmp_path: Path,
                             loop_device: tuple[str, Path]) -> None:
    dev, image = loop_device
    rt = start_pyaoe(two_hosts, Path(dev), tmp_path / "st", "--read-only")
    try:
        r = client.request(client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.IDENTIFY_DEVICE,
                                      count=1))
        assert r is not None
        assert parse_identify(bytes(r.frame.body.data)).sectors == (3 << 20) // 512  # type: ignore[union-attr]
        r = client.request(client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.READ_SECTORS_EXT,
                                      77, 2))
        assert r is not None
        assert bytes(r.frame.body.data) == image.read_bytes()[77 * 512 : 79 * 512]  # type: ignore[union-attr]
    finally:
        rt.stop(two_hosts.lab)


def test_link_flap_while_serving(two_hosts: TwoHosts, served: RunningTarget,
                                 client: Client) -> None:
    """The link going down and up again under a running target: it keeps serving."""
    ask = lambda: client.request(  # noqa: E731
        client.ata(served.mac, served.shelf, served.slot, AtaOpcode.READ_SECTORS_EXT, 0, 1))
    assert ask() is not None
    two_hosts.cable.set_link(False, end=two_hosts.target)
    time.sleep(0.3)
    two_hosts.cable.set_link(True, end=two_hosts.target)
    deadline = time.monotonic() + 5
    r = None
    while r is None and time.monotonic() < deadline:
        r = ask()
    assert r is not None and served.proc.poll() is None
