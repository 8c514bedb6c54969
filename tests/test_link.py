"""aoe.net.link and `aoe link`: interface state read and set in the current namespace."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from aoe.cli import main
from aoe.lab.pair import TwoHosts, netns_unavailable_reason
from aoe.net.link import (
    LinkError,
    LinkNotFoundError,
    MtuError,
    link_down,
    link_info,
    link_up,
    list_links,
    set_mtu,
)

_SKIP = netns_unavailable_reason()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def test_link_info_sees_the_hosts_namespace(two_hosts: TwoHosts) -> None:
    with two_hosts.initiator.enter():
        info = link_info("eth0")
        names = [i.name for i in list_links()]
    assert names == ["lo", "eth0"]
    assert info.mac == two_hosts.cable.b_mac and info.kind == "veth"
    assert info.up and info.operstate == "UP" and info.mtu == 1500
    assert info.max_mtu is not None and info.max_mtu >= 9000


def test_up_down_and_mtu(two_hosts: TwoHosts) -> None:
    with two_hosts.target.enter():
        assert not link_down("eth0").up
        assert link_up("eth0").up
        assert set_mtu("eth0", 9000).mtu == 9000
        assert link_info("eth0").mtu == 9000
    # the other end is a different namespace and kept its own MTU
    assert two_hosts.initiator.call(link_info, "eth0").mtu == 1500


def test_clear_errors(two_hosts: TwoHosts) -> None:
    with two_hosts.target.enter():
        with pytest.raises(LinkNotFoundError, match="no network interface named 'eth7'"):
            link_info("eth7")
        with pytest.raises(LinkNotFoundError):
            set_mtu("", 1500)
        max_mtu = link_info("eth0").max_mtu
        with pytest.raises(MtuError, match=f"above the maximum {max_mtu}"):
            set_mtu("eth0", (max_mtu or 65535) + 1)
        with pytest.raises(MtuError, match="below the minimum"):
            set_mtu("eth0", 10)
        with pytest.raises(MtuError):
            set_mtu("eth0", "9000")  # type: ignore[arg-type]
        assert link_info("eth0").mtu == 1500  # nothing changed
    assert issubclass(LinkNotFoundError, LinkError) and issubclass(MtuError, ValueError)


def test_link_cli_in_namespace(two_hosts: TwoHosts) -> None:
    runner = CliRunner()
    with two_hosts.target.enter():
        shown = runner.invoke(main, ["link", "show", "eth0", "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["mac"] == two_hosts.cable.a_mac
        res = runner.invoke(main, ["link", "mtu", "eth0", "4000"])
        assert res.exit_code == 0 and "mtu 4000" in res.output
        assert link_info("eth0").mtu == 4000
        res = runner.invoke(main, ["link", "up", "eth0"])
        assert res.exit_code == 0 and "eth0: up" in res.output
        for argv, needle in ((["link", "show", "nope0"], "no network interface"),
                             (["link", "mtu", "eth0", "999999"], "above the maximum"),
                             (["link", "mtu", "eth0", "big"], "not a valid integer"),
                             (["link", "mtu", "eth0", "547"], "too small for AoE")):
            res = runner.invoke(main, argv)
            assert res.exit_code != 0 and needle in res.output
            assert "Traceback" not in res.output and not isinstance(res.exception, LinkError)
        assert link_info("eth0").mtu == 4000  # the refused MTUs changed nothing
        res = runner.invoke(main, ["link", "mtu", "eth0", "547", "--force"])
        assert res.exit_code == 0 and link_info("eth0").mtu == 547


def test_missing_interface_is_named_plainly(two_hosts: TwoHosts) -> None:
    """Every command that opens a raw socket says the same thing about a missing one."""
    runner = CliRunner()
    with two_hosts.target.enter():
        for argv in (["sniff", "nope0"], ["ping", "1.0", "-i", "nope0"],
                     ["conformance", "nope0", "1.0"], ["fuzz", "nope0", "1.0"]):
            res = runner.invoke(main, argv)
            assert res.exit_code == 1, (argv, res.output)
            assert "interface 'nope0' does not exist" in res.output, (argv, res.output)
            assert "Errno" not in res.output and "Traceback" not in res.output
