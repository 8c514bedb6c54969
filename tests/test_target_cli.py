"""`aoe serve` user errors: a clear one-line message, a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aoe.lab import Host, Lab
from aoe.target.config import ConfigError, config_size, parse_config

from .support.target import aoe_cmd, make_image


@pytest.fixture
def host(lab: Lab) -> Host:
    """A namespace with one veth (eth0), so nothing touches the machine's interfaces."""
    h = lab.host("t")
    lab.cable(h, lab.host("peer"))
    return h


def run_serve(host: Host, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return host.run(aoe_cmd("serve", *args), check=False, timeout=30, **kw)  # type: ignore[arg-type]


def assert_user_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    for n in needles:
        assert n in p.stderr, p.stderr


@pytest.mark.netns
def test_missing_interface(host: Host, tmp_path: Path) -> None:
    img = make_image(tmp_path / "d.img", 1 << 20)
    p = run_serve(host, "--state-dir", str(tmp_path), "nosuch0", "1.0", str(img))
    assert_user_error(p, "no network interface named 'nosuch0'")


@pytest.mark.netns
@pytest.mark.parametrize("address", ["1", "1.2.3", "x.1", "65535.0", "1.255", "-1.0", ""])
def test_bad_shelf_slot(host: Host, tmp_path: Path, address: str) -> None:
    img = make_image(tmp_path / "d.img", 1 << 20)
    p = run_serve(host, "eth0", address, str(img))
    assert_user_error(p, "SHELF.SLOT")


@pytest.mark.netns
def test_missing_file(host: Host, tmp_path: Path) -> None:
    p = run_serve(host, "-i", "eth0", "1.0", str(tmp_path / "absent.img"))
    assert_user_error(p, "no such file")


@pytest.mark.netns
def test_loopback_is_refused(host: Host, tmp_path: Path) -> None:
    img = make_image(tmp_path / "d.img", 1 << 20)
    p = run_serve(host, "--state-dir", str(tmp_path), "lo", "1.0", str(img))
    assert_user_error(p, "not an Ethernet interface")


@pytest.mark.netns
@pytest.mark.parametrize("args,needle", [
    (["--offset", "100"], "not a multiple of 512"),
    (["--offset", "4M"], "past the end"),
    (["--length", "2M"], "past the end"),
    (["--offset", "lots"], "not a size"),
    (["--mtu", "500"], "too small"),
])
def test_bad_export_options(host: Host, tmp_path: Path, args: list[str], needle: str) -> None:
    img = make_image(tmp_path / "d.img", 1 << 20)
    p = run_serve(host, "--state-dir", str(tmp_path), *args, "-i", "eth0", "1.0", str(img))
    assert_user_error(p, needle)


@pytest.mark.netns
def test_config_file_errors(host: Host, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = not [toml")
    assert_user_error(run_serve(host, "-c", str(bad)), "not valid TOML")
    assert_user_error(run_serve(host, "-c", str(tmp_path / "none.toml")), "does not exist")
    empty = tmp_path / "empty.toml"
    empty.write_text('interfaces = ["eth0"]\n')
    assert_user_error(run_serve(host, "-c", str(empty)), "nothing to serve")
    img = make_image(tmp_path / "d.img", 1 << 20)
    assert_user_error(run_serve(host, "-c", str(empty), "-i", "eth0", "1.0", str(img)), "not both")
    assert_user_error(run_serve(host), "need SHELF.SLOT FILE")


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_without_network_capabilities(host: Host, tmp_path: Path) -> None:
    """Root without CAP_NET_RAW/CAP_NET_ADMIN is like an ordinary user to the target."""
    img = make_image(tmp_path / "d.img", 1 << 20)
    p = host.run(["setpriv", "--bounding-set", "-net_raw,-net_admin", "--",
                  *aoe_cmd("serve", "--state-dir", str(tmp_path), "-i", "eth0", "1.0", str(img))],
                 check=False, timeout=30)
    assert_user_error(p, "must run as root")


def test_parse_config_checks() -> None:
    ok = parse_config({"interfaces": ["eth0", {"name": "eth1", "mtu": 9000}],
                       "export": [{"address": "1.2", "path": "/x", "length": "1G",
                                   "interfaces": ["eth1"], "config": "c"}]})
    assert ok.interfaces[1].mtu == 9000 and ok.exports[0].length == 1 << 30
    assert ok.exports[0].config == b"c" and ok.exports[0].interfaces == ["eth1"]
    only_named = parse_config({"export": [{"shelf": 1, "slot": 2, "path": "/x",
                                           "interfaces": "eth3"}]})
    assert [i.name for i in only_named.interfaces] == ["eth3"]
    for bad in (
        {"export": []},
        {"interfaces": ["eth0"], "export": [{"path": "/x"}]},
        {"interfaces": ["eth0"], "export": [{"address": "1.2"}]},
        {"interfaces": ["eth0"], "export": [{"address": "1.2", "path": "/x", "bogus": 1}]},
        {"interfaces": ["eth0"], "export": [{"address": "1.2", "path": "/x", "read_only": 1}]},
        {"interfaces": ["eth0"], "export": [{"address": "1.2", "path": "/x",
                                             "config": "x" * 1025}]},
        {"interfaces": [3], "export": [{"address": "1.2", "path": "/x"}]},
        {"export": [{"address": "1.2", "path": "/x"}]},
        {"nonsense": 1},
    ):
        with pytest.raises(ConfigError):
            parse_config(bad)  # type: ignore[arg-type]
    assert config_size("4k", "x") == 4096 and config_size("1MiB", "x") == 1 << 20
    with pytest.raises(ConfigError):
        config_size(-1, "x")
