"""The conformance suite against real targets in a lab: `aoe serve` must pass all of it;
vblade gets the report documented in docs/conformance.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aoe.checks.conformance import (
    CheckResult,
    Status,
    all_check_names,
    failed,
    format_markdown,
    format_table,
    run_conformance,
)
from aoe.cli import main
from aoe.lab.pair import TwoHosts, netns_unavailable_reason
from tests.support.tools import AOE, make_image, start_aoe_serve, start_vblade

_SKIP = netns_unavailable_reason()
netns = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
SCRATCH = (1000, 8)
TIMEOUT = 0.3


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.check: r for r in results}


@netns
def test_aoe_serve_passes_every_check_and_keeps_its_data(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    original = make_image(image)
    start_aoe_serve(two_hosts, image, tmp_path / "state")
    with two_hosts.initiator.enter():
        results = run_conformance("eth0", 1, 0, scratch=SCRATCH, timeout=TIMEOUT)
    not_passed = [r for r in results if r.status is not Status.PASS]
    assert not not_passed, format_table(not_passed)
    assert [r.check for r in results] == all_check_names()
    # Scratch written and restored, nothing else touched.
    assert image.read_bytes() == original


@netns
def test_vblade_report_matches_what_vblade_is_known_to_do(
        two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    original = make_image(image)
    proc = start_vblade(two_hosts, image)
    with two_hosts.initiator.enter():
        results = run_conformance("eth0", 1, 0, scratch=SCRATCH, timeout=TIMEOUT, retries=1)
    got = by_name(results)
    status = {name: r.status for name, r in got.items()}
    report = format_table(results)
    for name in ["discovery", "header.echo", "header.unknown-command", "address.broadcast-all",
                 "config.read", "config.test-mismatch", "config.set-when-present",
                 "config.restore", "ata.identify", "ata.read-lba28", "ata.read-lba48",
                 "ata.read-past-end", "ata.count-too-large", "ata.write-read",
                 "scratch.restore", "reserve.set", "reserve.other-write", "reserve.restore",
                 "mask.add", "mask.acl"]:
        assert status[name] is Status.PASS, report
    # The differences docs/conformance.md explains.
    assert status["header.bad-version"] is Status.FAIL
    assert "no error" in got["header.bad-version"].detail
    assert status["config.length-mismatch"] is Status.FAIL
    assert status["ata.flush"] is Status.FAIL and "DRDY" in got["ata.flush"].detail
    assert status["ata.flush-ext"] is Status.NOT_SUPPORTED
    assert status["mask.delete"] is Status.FAIL
    assert status["target.alive"] is Status.FAIL  # the mask delete brings vblade down
    assert proc.poll() is not None
    assert failed(results)
    assert image.read_bytes() == original
    assert "| `mask.delete` | fail |" in format_markdown(results)


@netns
def test_read_only_run_changes_nothing(two_hosts: TwoHosts, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    original = make_image(image)
    start_aoe_serve(two_hosts, image, tmp_path / "state")
    done = two_hosts.initiator.run(
        [AOE, "conformance", "eth0", "1.0", "--read-only", "--json", "--timeout", str(TIMEOUT),
         "--scratch-lba", "1000", "--scratch-sectors", "8", "--skip", "header"],
        check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    status = {r["check"]: r["status"] for r in doc["results"]}
    assert doc["summary"]["fail"] == 0 and doc["read_only"] is True
    for name in ["ata.write-read", "scratch.restore", "config.set-when-empty",
                 "config.force-set", "mask.add", "mask.acl", "reserve.set"]:
        assert status[name] == "skipped"
    assert status["header.echo"] == "skipped"  # --skip header
    assert status["config.read"] == status["ata.read-lba48"] == status["mask.read"] == "pass"
    assert image.read_bytes() == original


@netns
def test_missing_target_fails_discovery_with_exit_1(two_hosts: TwoHosts) -> None:
    done = two_hosts.initiator.run([AOE, "conformance", "eth0", "4.4", "--timeout", "0.1"],
                                   check=False, timeout=30)
    assert done.returncode == 1
    assert "discovery" in done.stdout and "no answer from 4.4" in done.stdout
    assert "Traceback" not in done.stderr


@netns
def test_cli_reports_a_missing_interface_cleanly(two_hosts: TwoHosts) -> None:
    done = two_hosts.initiator.run([AOE, "conformance", "nosuch0", "1.0"], check=False)
    assert done.returncode == 1
    assert "nosuch0" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["eth0", "1.x"], "not a SHELF.SLOT"),
    (["eth0", "65535.0"], "broadcast"),
    (["eth0", "1.0", "--scratch-lba", "5"], "go together"),
    (["eth0", "1.0", "--skip", "disk"], "disk"),
])
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["conformance", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_run_conformance_rejects_a_bad_scratch_range_before_sending() -> None:
    with pytest.raises(ValueError, match="scratch"):
        run_conformance("lo", 1, 0, scratch=(5, 0))
    with pytest.raises(ValueError, match="unknown area"):
        run_conformance("lo", 1, 0, skip=["disk"])

