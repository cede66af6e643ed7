"""deploy/: the systemd unit, the example config, the Mosquitto config and ACL."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from haochaping.daemon import config as config_mod
from haochaping.daemon.bench.harness import DaemonProcess, free_port, provision
from haochaping.daemon.bench.peers import FakeTerminal, MqttHub, drive, make_key

from .conftest import ROOT, missing

DEPLOY = ROOT / "deploy"
SCORE_MAX = 2.0


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        missing("systemd-analyze", "apt-get install systemd")
    return exe  # type: ignore[return-value]


UNITS = ["haochaping.service", "haochaping-uplink.service"]


@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies(tmp_path, name):
    exe = _analyze()
    # /usr/bin/hcp exists on an installed system; here the venv's hcp stands in
    hcp = Path(sys.executable).parent / "hcp"
    unit = tmp_path / name
    unit.write_text((DEPLOY / name).read_text().replace("/usr/bin/hcp", str(hcp)))
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    text = unit.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=haochaping",
                 "ConfigurationDirectory=haochaping", "DynamicUser=yes"):  # fmt: skip
        assert line in text


def test_uplink_unit_shares_the_daemons_user_and_database():
    # DynamicUser allocates one user per name: the daemon's unit is named
    # haochaping, so the uplink must run as User=haochaping to open its files.
    daemon = (DEPLOY / "haochaping.service").read_text()
    uplink = (DEPLOY / "haochaping-uplink.service").read_text()
    assert "User=" not in daemon.replace("DynamicUser=", "")
    assert "\nUser=haochaping\n" in uplink
    db = re.search(r'^path = "(.+)"', (DEPLOY / "haochaping.toml").read_text(), re.M)
    assert db and f"--db {db.group(1)} " in uplink


@pytest.mark.parametrize("name", UNITS)
def test_unit_security_score(name):
    exe = _analyze()
    r = subprocess.run([exe, "security", "--offline=yes", str(DEPLOY / name)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    m = re.search(rf"Overall exposure level for {re.escape(name)}: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= SCORE_MAX
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert f"`{name}`: exposure level {m.group(1)}" in ops, "docs/operations.md must record the score"


def test_example_config_loads(tmp_path):
    for name in ("haochaping.toml",):
        shutil.copy(DEPLOY / name, tmp_path / name)
    (tmp_path / "api-tokens").write_text("window-sys 0123456789abcdef0123\n")
    (tmp_path / "mqtt-password").write_text("secret\n")
    for f in ("api-tokens", "mqtt-password"):
        (tmp_path / f).chmod(0o600)
    cfg = config_mod.load(tmp_path / "haochaping.toml")
    assert [t.url.split(":")[0] for t in cfg.transports] == ["mqtt", "serial"]
    assert cfg.transports[0].options["password"] == "secret"
    assert "secret" not in repr(cfg) and "0123456789abcdef0123" not in repr(cfg)
    assert cfg.hooks[0].contact and not cfg.hooks[1].contact
    (tmp_path / "api-tokens").unlink()
    with pytest.raises(
        config_mod.ConfigError, match=r"haochaping.toml: api.tokens_file: cannot read"
    ):
        config_mod.load(tmp_path / "haochaping.toml")


class TemplateBroker:
    """deploy/mosquitto.conf and deploy/mosquitto.acl as shipped, with their
    paths moved into a test directory, mosquitto_passwd users, and each
    terminal's ACL block written by daemon/broker.py."""

    def __init__(self, tmp_path: Path, mosquitto_bin: str, users: dict[str, str],
                 without: str | None = None) -> None:  # fmt: skip
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not Path(passwd).exists():
            missing("mosquitto_passwd", "apt-get install mosquitto")
        self.port = free_port()
        conf = (DEPLOY / "mosquitto.conf").read_text()
        conf = conf.replace("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1")
        conf = conf.replace("/etc/mosquitto/haochaping.passwd", str(tmp_path / "passwd"))
        conf = conf.replace("/etc/mosquitto/haochaping.acl", str(tmp_path / "acl"))
        conf = conf.replace("/var/lib/mosquitto/", str(tmp_path) + "/")
        if without is not None:  # the config as it was before a fix, to show the defect
            assert without in conf
            conf = conf.replace(without, "")
        import pwd

        # as root, mosquitto would switch to its own user and not read these files
        conf += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\nlog_dest file {tmp_path}/broker.log\n"
        conf += "log_type all\n"
        (tmp_path / "mosquitto.conf").write_text(conf)
        shutil.copy(DEPLOY / "mosquitto.acl", tmp_path / "acl")
        (tmp_path / "acl").chmod(0o600)
        first = True
        for user, pw in users.items():
            subprocess.run([passwd, *(["-c"] if first else []), "-b", str(tmp_path / "passwd"), user, pw],
                           check=True)  # fmt: skip
            first = False
        (tmp_path / "passwd").chmod(0o600)
        # the terminals' ACL blocks, as hcp terminal provision writes them
        # from the password file (the template holds the daemon's block only)
        from haochaping.daemon import broker as broker_files

        broker_files.BrokerFiles(tmp_path / "passwd", tmp_path / "acl").sync()
        self.log = tmp_path / "broker.log"
        self.proc = subprocess.Popen([mosquitto_bin, "-c", str(tmp_path / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        import socket
        import time

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "broker did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _daemon_on(tmp_path: Path, broker: TemplateBroker, terms: list[FakeTerminal]) -> tuple[DaemonProcess, int]:
    db = tmp_path / "hall.db"
    (tmp_path / "mqtt-password").write_text("daemon-pw\n")
    (tmp_path / "mqtt-password").chmod(0o600)
    api = free_port()
    cfgp = tmp_path / "hcp.toml"
    cfgp.write_text(
        f'[store]\npath = "hall.db"\n[api]\nlisten = "127.0.0.1:{api}"\n[[transports]]\n'
        f'url = "mqtt://127.0.0.1:{broker.port}"\nusername = "hcp-daemon"\nclient_id = "hcp-daemon"\n'
        'password_file = "mqtt-password"\n'
    )
    provision(db, terms)
    return DaemonProcess(cfgp, tmp_path).start(), api


def _terminal_client(broker: TemplateBroker, login: str, pw: str, client_id: str, sub: str | None):
    import threading

    import paho.mqtt.client as mqtt

    hub = MqttHub.__new__(MqttHub)
    hub.prefix = "hcp"
    hub.peers = {}
    hub.subscribed = threading.Event()
    hub.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    hub.c.username_pw_set(login, pw)
    hub.granted: list[int] = []

    def on_subscribe(c, u, mid, codes, props):  # type: ignore[no-untyped-def]
        hub.granted = [int(getattr(x, "value", x)) for x in codes]
        hub.subscribed.set()

    hub.c.on_connect = lambda c, u, f, rc, p: c.subscribe(sub, qos=1) if sub else hub.subscribed.set()
    hub.c.on_subscribe = on_subscribe
    hub.c.on_message = hub._on_message
    hub.c.connect("127.0.0.1", broker.port, 30)
    hub.c.loop_start()
    assert hub.subscribed.wait(10)
    return hub


@pytest.mark.slow
def test_mosquitto_template_with_acl_and_password(tmp_path, mosquitto_bin):
    t = FakeTerminal(0x6001, make_key(1, 6))
    tname = f"{t.id:08x}"
    broker = TemplateBroker(tmp_path, mosquitto_bin, {"hcp-daemon": "daemon-pw", tname: "terminal-pw"})
    d, _api = _daemon_on(tmp_path, broker, [t])
    hub = None
    try:
        # a terminal that logs in as itself may use only its own topics
        hub = _terminal_client(broker, tname, "terminal-pw", tname, f"hcp/t/{tname}/down")
        p = hub.add(t)
        p.hello()
        t.press(5)
        p.send_new()
        assert drive([p], 20), "the daemon did not serve a terminal through the ACL"
        assert d.stop() == 0
    finally:
        if hub is not None:
            hub.close()
        if d.alive():
            d.kill9()
        broker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("shipped", [True, False], ids=["shipped", "before-the-fix"])
def test_a_terminal_login_cannot_take_over_the_daemons_client_id(tmp_path, mosquitto_bin, shipped):
    """With the shipped config (use_username_as_clientid), a terminal's login
    connecting under the daemon's client id, or another terminal's, gets its
    own id from the broker: the daemon and the other terminal stay connected.
    Without that line (the config before issue #11) the same logins knock the
    daemon and terminal b off the broker: the test sees the defect."""
    a, b = FakeTerminal(0x6002, make_key(2, 6)), FakeTerminal(0x6003, make_key(3, 6))
    an, bn = f"{a.id:08x}", f"{b.id:08x}"
    broker = TemplateBroker(tmp_path, mosquitto_bin, {"hcp-daemon": "daemon-pw", an: "a-pw", bn: "b-pw"},
                            without=None if shipped else "use_username_as_clientid true\n")  # fmt: skip
    d, api = _daemon_on(tmp_path, broker, [a, b])
    hubs = []
    try:
        hb = _terminal_client(broker, bn, "b-pw", bn, f"hcp/t/{bn}/down")
        hubs.append(hb)
        pb = hb.add(b)
        pb.hello()
        assert drive([pb], 20)
        before = _metrics(api)
        # terminal a's login, under the daemon's client id and then under b's
        for cid in ("hcp-daemon", bn):
            hubs.append(_terminal_client(broker, an, "a-pw", cid, None))
        log = broker.log.read_text()
        kicked = "Client hcp-daemon already connected" in log or f"Client {bn} already connected" in log
        if not shipped:
            assert kicked, "the old config should let a terminal's login take the daemon's id"
            return
        assert not kicked, log[-2000:]
        assert log.count(f"as {an} ") == 2  # the broker gave both connections a's own id
        b.press(5)
        pb.send_new()
        assert drive([pb], 20), "terminal b lost its link to the daemon"
        after = _metrics(api)
        assert after["hcp_transport_up"] == 1
        assert after["hcp_transport_restarts"] == before["hcp_transport_restarts"]
        assert d.stop() == 0
    finally:
        for h in hubs:
            h.close()
        if d.alive():
            d.kill9()
        broker.stop()


def _metrics(api: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hcp_transport_up{") or line.startswith("hcp_transport_restarts_total{"):
            k, v = line.rsplit(" ", 1)
            name = "hcp_transport_up" if k.startswith("hcp_transport_up") else "hcp_transport_restarts"
            out[name] = out.get(name, 0) + float(v)
    return out


def test_cli_add_terminal(tmp_path):
    from click.testing import CliRunner
    from haochaping.daemon.store import Store

    from haochaping.cli import main

    cfg = tmp_path / "hcp.toml"
    cfg.write_text('[store]\npath = "hall.db"\n')
    key = bytes(range(32))
    (tmp_path / "k.hex").write_text(key.hex() + "\n")
    r = CliRunner().invoke(main, ["daemon", "--config", str(cfg), "add-terminal", "--id", "0a1b2c3d",
                                  "--window", "W12", "--key-file", str(tmp_path / "k.hex")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "0a1b2c3d" in r.output and key.hex() not in r.output
    s = Store(tmp_path / "hall.db")
    rec = s.start_terminals()[0x0A1B2C3D]
    assert rec.key == key and rec.window_no == "W12"
    s.close()
    r = CliRunner().invoke(main, ["daemon", "add-terminal", "--config", str(cfg), "--id", "xyz",
                                  "--key-file", str(tmp_path / "k.hex")])  # fmt: skip
    assert r.exit_code == 2 and "8 hex digits" in r.output
    r = CliRunner().invoke(main, ["daemon"])
    assert r.exit_code == 2 and "--config" in r.output
