"""`aoe sniff` and `aoe ping` in a lab: the sniffer catches a ping exchange (and its pcap
decodes), ping measures RTTs against vblade and `aoe serve`, and fails clearly without one."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from aoe.capture.pcap import PcapWriter, read_pcap
from aoe.capture.sniff import Captured, ping, sniff
from aoe.cli import main
from aoe.lab.pair import TwoHosts, netns_unavailable_reason
from aoe.protocol import AtaBody, AtaOpcode, ConfigBody, decode
from tests.support.tools import AOE, make_image, read_line, start_aoe_serve, start_vblade

_SKIP = netns_unavailable_reason()
netns = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def start_sniffer(th: TwoHosts, *args: str) -> subprocess.Popen[str]:
    proc = th.initiator.popen([AOE, "sniff", "eth0", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = read_line(proc.stderr)
    assert line.startswith("listening on eth0"), line
    return proc


@netns
def test_sniff_captures_a_ping_exchange_and_the_pcap_decodes(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    make_image(image, 2048)
    start_vblade(two_hosts, image, 5, 1)
    pcap = tmp_path / "ping.pcap"
    sniffer = start_sniffer(two_hosts, "--count", "4", "--pcap", str(pcap), "--json",
                            "--target", "5.1")
    done = two_hosts.initiator.run([AOE, "ping", "5.1", "-i", "eth0", "--count", "1"],
                                   timeout=30)
    out, err = sniffer.communicate(timeout=20)
    assert sniffer.returncode == 0, err
    assert "4 frames captured" in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["command"], d["response"], d["outgoing"]) for d in lines] == [
        ("QUERY_CONFIG", False, True), ("QUERY_CONFIG", True, False),
        ("ATA", False, True), ("ATA", True, False)]
    frames = [decode(raw) for _, raw in read_pcap(pcap)]
    assert len(frames) == 4
    request, answer, ident_req, ident_ans = frames
    assert isinstance(request.body, ConfigBody) and isinstance(answer.body, ConfigBody)
    assert request.tag == answer.tag and answer.is_response
    assert (answer.shelf, answer.slot) == (5, 1)
    assert isinstance(ident_req.body, AtaBody)
    assert ident_req.body.cmd_status == AtaOpcode.IDENTIFY_DEVICE
    assert isinstance(ident_ans.body, AtaBody) and len(ident_ans.body.data) == 512
    assert ident_req.tag == ident_ans.tag
    assert "5.1 from" in done.stdout and "identify" in done.stdout
    # The project's own decoder reads the capture as well.
    decoded = two_hosts.initiator.run([AOE, "decode", str(pcap)]).stdout
    assert decoded.count("QUERY_CONFIG") == 2 and decoded.count("ATA") == 2


@netns
def test_sniff_filters_by_command_and_dissects_with_scapy(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    make_image(image, 2048)
    start_vblade(two_hosts, image)
    sniffer = start_sniffer(two_hosts, "--count", "2", "--command", "ata", "--verbose")
    with two_hosts.initiator.enter():
        result = ping("eth0", 1, 0, count=1, timeout=1.0)
    out, err = sniffer.communicate(timeout=20)
    assert result.answered == 1
    assert sniffer.returncode == 0, err
    assert "QUERY_CONFIG" not in out
    heads = [line for line in out.splitlines() if re.match(r"\d\d:\d\d:\d\d\.\d{6} ", line)]
    assert len(heads) == 2 and all(" ATA " in line for line in heads)
    assert "req ATA IDENTIFY_DEVICE" in heads[0] and "rsp ATA" in heads[1]
    assert "###[ AoE ]###" in out and "###[ AoE ATA ]###" in out


@netns
@pytest.mark.parametrize("kind", ["vblade", "aoe-serve"])
def test_ping_reports_round_trip_times(kind: str, two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    make_image(image, 2048)
    if kind == "vblade":
        start_vblade(two_hosts, image)
    else:
        start_aoe_serve(two_hosts, image, tmp_path / "state")
    seen: list[int] = []
    with two_hosts.initiator.enter():
        result = ping("eth0", 1, 0, count=3, interval=0.05, timeout=1.0,
                      on_probe=lambda p: seen.append(p.seq))
    assert seen == [1, 2, 3]
    assert result.answered == 3
    for probe in result.probes:
        assert probe.config_rtt is not None and probe.config_rtt > 0
        assert probe.identify_rtt is not None and probe.identify_rtt > 0
        assert probe.mac == bytes.fromhex(two_hosts.cable.a_mac.replace(":", ""))
    stats = result.stats("config_rtt")
    assert stats is not None and stats[0] <= stats[1] <= stats[2]
    assert "3 probes, 3 answered, 0% loss" in result.summary()
    as_json = json.loads(two_hosts.initiator.run(
        [AOE, "ping", "1.0", "-i", "eth0", "-c", "2", "--interval", "0.05", "--json"]).stdout)
    assert as_json["answered"] == 2 and as_json["config_rtt_ms"]["min"] > 0


@netns
def test_ping_to_a_missing_target_exits_nonzero(two_hosts: TwoHosts) -> None:
    done = two_hosts.initiator.run(
        [AOE, "ping", "9.9", "-i", "eth0", "--count", "2", "--interval", "0.05", "--timeout",
         "0.2"], check=False, timeout=30)
    assert done.returncode == 1
    assert "no answer from 9.9 on eth0" in done.stderr
    assert "seq=1 no answer" in done.stdout and "0 answered, 100% loss" in done.stdout
    assert "Traceback" not in done.stderr


@netns
def test_sniff_library_stops_on_timeout_and_ignores_other_targets(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    make_image(image, 2048)
    start_vblade(two_hosts, image, 2, 2)
    captured: list[Captured] = []
    ready = threading.Event()

    def run() -> None:
        with two_hosts.initiator.enter():
            captured.extend(sniff("eth0", target=(3, 3), timeout=1.5, on_ready=ready.set))

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(5)
    with two_hosts.initiator.enter():
        assert ping("eth0", 2, 2, count=1).answered == 1
    thread.join(10)
    assert not thread.is_alive()
    assert captured == []  # all of the traffic was for 2.2


def test_pcap_writer_output_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    frames = [b"\xff" * 6 + b"\x02" * 6 + b"\x88\xa2" + bytes(46), b"\x01" * 60]
    with PcapWriter(path) as writer:
        for i, raw in enumerate(frames):
            writer.write(1000.25 + i, raw)
    got = list(read_pcap(path))
    assert [raw for _, raw in got] == frames
    assert got[0][0] == pytest.approx(1000.25)


@pytest.mark.parametrize("args, message", [
    (["sniff", "eth0", "--command", "disk"], "disk"),
    (["sniff", "eth0", "--target", "1"], "SHELF.SLOT"),
    (["ping", "1.0"], "--interface"),
    (["ping", "1.0", "-i", "eth0", "--count", "0"], "count"),
])
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output


@netns
def test_sniff_on_a_missing_interface_is_a_clean_error(two_hosts: TwoHosts) -> None:
    done = two_hosts.initiator.run([AOE, "sniff", "nosuch0", "--count", "1"], check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "nosuch0" in done.stderr

