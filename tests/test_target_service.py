"""The target as a service: access at start-up, exclusive stores, partial sectors.

Real `aoe serve` processes in lab namespaces, real loop devices and a real ext4 mount."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoe.lab import Host
from aoe.lab.pair import TwoHosts

from .support.target import SHELF, SLOT, Client, aoe_cmd, make_image, start_pyaoe

FOREIGN_MAC = bytes.fromhex("020000bbbbbb")


def run_serve(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return host.run(aoe_cmd("serve", *args), check=False, timeout=30)


def assert_one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode != 0, p
    assert "Traceback" not in p.stderr + p.stdout
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, p.stderr
    for n in needles:
        assert n in errors[0], p.stderr


@pytest.mark.netns
def test_partial_sector_is_logged(two_hosts: TwoHosts, tmp_path: Path) -> None:
    img = make_image(tmp_path / "odd.img", (1 << 20) + 100)
    rt = start_pyaoe(two_hosts, img, tmp_path / "st")
    c = Client(two_hosts.initiator)
    try:
        r = c.request(c.ata(rt.mac, SHELF, SLOT, 0xEC, count=1))
        assert r is not None
        sectors = int.from_bytes(r.frame.body.data[200:208], "little")
    finally:
        c.close()
        _, err = rt.stop(two_hosts.lab)
    assert sectors == 2048
    line = next(ln for ln in err.splitlines() if "partial_sector" in ln)
    assert "bytes_not_served=100" in line


@pytest.mark.netns
def test_allow_seeds_the_mask_list(two_hosts: TwoHosts, tmp_path: Path) -> None:
    c = Client(two_hosts.initiator)
    img = make_image(tmp_path / "d.img", 1 << 20)
    rt = start_pyaoe(two_hosts, img, tmp_path / "st", "--allow", c.mac.hex(":"))
    try:
        assert c.request(c.config(rt.mac, SHELF, SLOT)) is not None
        # The same request from another MAC is not answered: the mask list holds only ours.
        assert c.silent(c.config(rt.mac, SHELF, SLOT, src=FOREIGN_MAC), to=FOREIGN_MAC)
        mask = c.request(c.frame(rt.mac, SHELF, SLOT, 2, b"\0\0\0\0"))
        assert mask is not None
        assert [d.mac for d in mask.frame.body.directives] == [c.mac]
    finally:
        c.close()
        _, err = rt.stop(two_hosts.lab)
    assert "open_to_all" not in err


@pytest.mark.netns
def test_writable_export_open_to_all_warns_once(two_hosts: TwoHosts, tmp_path: Path) -> None:
    img = make_image(tmp_path / "d.img", 1 << 20)
    rt = start_pyaoe(two_hosts, img, tmp_path / "st")
    _, err = rt.stop(two_hosts.lab)
    assert len([ln for ln in err.splitlines() if "open_to_all" in ln]) == 1, err
    rt = start_pyaoe(two_hosts, img, tmp_path / "st2", "--read-only")
    _, err = rt.stop(two_hosts.lab)
    assert "open_to_all" not in err


@pytest.mark.netns
def test_toml_allow_and_which_value_won(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """allow = [...] in the TOML; on restart the TOML wins over saved state unless
    --keep-state, and a log line says which value won."""
    img = make_image(tmp_path / "d.img", 1 << 20)
    conf = tmp_path / "t.toml"

    def write(allow: str, config: str) -> None:
        conf.write_text(f'state_dir = "{tmp_path / "st"}"\ninterfaces = ["eth0"]\n'
                        f'[[export]]\naddress = "{SHELF}.{SLOT}"\npath = "{img}"\n'
                        f'allow = [{allow}]\nconfig = "{config}"\n')

    def start(*extra: str) -> subprocess.Popen[str]:
        p = two_hosts.target.popen(aoe_cmd("serve", "-v", "-c", str(conf), *extra),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        assert p.stdout.readline().startswith("ready"), p.stderr.read() if p.stderr else ""
        return p

    def stop(p: subprocess.Popen[str]) -> str:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        two_hosts.lab.untrack(p)
        return err

    write('"02:00:00:00:00:01"', "one")
    err = stop(start())
    assert "state_conflict" not in err
    write('"02:00:00:00:00:02"', "two")
    err = stop(start("--keep-state"))
    lines = [ln for ln in err.splitlines() if "state_conflict" in ln]
    assert len(lines) == 2 and all("won=\"saved state (--keep-state)\"" in ln for ln in lines)
    err = stop(start())
    lines = [ln for ln in err.splitlines() if "state_conflict" in ln]
    assert len(lines) == 2 and all("won=configuration" in ln for ln in lines), err
    saved = next((tmp_path / "st").glob("*.json")).read_text()
    assert "02:00:00:00:00:02" in saved and '"config_text": "two"' in saved


# --- exclusive backing store ------------------------------------------------------------
@pytest.fixture
def loop_image(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A small ext4 image attached to a real loop device (detached afterwards)."""
    img = tmp_path / "fs.img"
    make_image(img, 8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield img, dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.netns
def test_loop_attached_image_is_refused(two_hosts: TwoHosts, tmp_path: Path,
                                        loop_image: tuple[Path, str]) -> None:
    img, dev = loop_image
    p = run_serve(two_hosts.target, "--state-dir", str(tmp_path / "st"), "-i", "eth0", "1.0",
                  str(img))
    assert_one_line_error(p, f"attached to {dev}", "--read-only", "--force")
    rt = start_pyaoe(two_hosts, img, tmp_path / "st", "--read-only")
    rt.stop(two_hosts.lab)
    rt = start_pyaoe(two_hosts, img, tmp_path / "st", "--force")
    rt.stop(two_hosts.lab)


@pytest.mark.netns
def test_mounted_image_and_device_are_refused(two_hosts: TwoHosts, tmp_path: Path,
                                              loop_image: tuple[Path, str]) -> None:
    img, dev = loop_image
    # An unmounted block device is opened exclusively and served.
    rt = start_pyaoe(two_hosts, Path(dev), tmp_path / "st")
    rt.stop(two_hosts.lab)
    mnt = Path(tempfile.mkdtemp(prefix="pyaoe-mnt-"))
    subprocess.run(["mount", dev, str(mnt)], check=True)
    try:
        p = run_serve(two_hosts.target, "--state-dir", str(tmp_path / "st"), "-i", "eth0", "1.0",
                      str(img))
        assert_one_line_error(p, f"attached to {dev} and mounted on {mnt}")
        p = run_serve(two_hosts.target, "--state-dir", str(tmp_path / "st"), "-i", "eth0",
                      "1.0", dev)
        assert_one_line_error(p, f"{dev} is in use", "--read-only")
        rt = start_pyaoe(two_hosts, Path(dev), tmp_path / "st", "--read-only")
        rt.stop(two_hosts.lab)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


@pytest.mark.netns
def test_sighup_without_config_keeps_serving(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """SIGHUP used to kill the target (exit 129): now it is logged and serving goes on."""
    img = make_image(tmp_path / "d.img", 1 << 20)
    rt = start_pyaoe(two_hosts, img, tmp_path / "st")
    c = Client(two_hosts.initiator)
    try:
        rt.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert rt.proc.poll() is None
        assert c.request(c.config(rt.mac, SHELF, SLOT)) is not None
    finally:
        c.close()
        out, err = rt.stop(two_hosts.lab)
    assert rt.proc.returncode == 143  # stopped by SIGTERM, as a shell would report it
    assert "reload_ignored" in err and "no --config file" in err
    assert "counters:" in out
