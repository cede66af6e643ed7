"""The broker's credentials (daemon/broker.py, issue #12) against a real
Mosquitto running deploy/mosquitto.conf with the password and ACL files
hcp writes: what a terminal may not do is refused by the broker (PUBACK or
CONNACK 0x87, a message the broker never delivers, its own log lines), not
by the daemon.  MQTT v5 with paho, so the broker's reason codes are seen.

Nothing here sleeps to synchronise: every wait is on an event, a queue or
the broker's own log, with a deadline."""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import queue
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from haochaping.daemon import broker
from haochaping.daemon.bench.harness import free_port

from .conftest import ROOT, missing

DEPLOY = ROOT / "deploy"
NOT_AUTHORIZED = 0x87  # PUBACK and CONNACK (MQTT v5)
A, B, C = 0x0000A001, 0x0000B002, 0x0000C003
AN, BN, CN = (f"{t:08x}" for t in (A, B, C))
WAIT = 10.0  # seconds any one event may take on a loaded machine


# --- a broker as shipped ---------------------------------------------------


class ShippedBroker:
    """deploy/mosquitto.conf with its paths moved into ``d``, a pid file, the
    log at log_type all.  ``as_user``: the broker's ``user`` line (None: the
    broker's own default, i.e. it drops root to 'mosquitto')."""

    def __init__(self, binary: str, d: Path, files: broker.BrokerFiles,
                 as_user: str | None = "self", state: Path | None = None) -> None:  # fmt: skip
        self.port = free_port()
        state = state or d
        self.log = state / "broker.log"
        self.pid_file = state / "mosquitto.pid"
        conf = (DEPLOY / "mosquitto.conf").read_text()
        for old, new in (
            ("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1"),
            ("/etc/mosquitto/haochaping.passwd", str(files.password_file)),
            ("/etc/mosquitto/haochaping.acl", str(files.acl_file)),
            ("/var/lib/mosquitto/", f"{state}/"),
        ):
            assert old in conf, old
            conf = conf.replace(old, new)
        if as_user == "self":  # as root, mosquitto would drop to its own user
            conf += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
        conf += f"\nlog_dest file {self.log}\nlog_type all\npid_file {self.pid_file}\n"
        self.conf = d / "mosquitto.conf"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("broker did not start:\n" + self.log_text()) from None
                time.sleep(0.02)  # polling for the listener: a condition with a deadline
                continue
            if self.pid_file.exists():
                break

    def log_text(self) -> str:
        try:
            return self.log.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def reloads(self) -> int:
        return self.log_text().count("Reloading config.")

    def wait_reloaded(self, before: int) -> None:
        """Until the broker logs its reload.  It logs the line, then re-reads
        the files and checks its clients before it reads another packet, so a
        connection made after this sees the new files."""
        deadline = time.monotonic() + WAIT
        while self.reloads() <= before:
            assert time.monotonic() < deadline, "no reload in the broker's log"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(WAIT)


class Mqtt:
    """A paho MQTT v5 client that records what the broker answered."""

    def __init__(self, port: int, user: str | None, password: str | None,
                 subscribe: tuple[str, ...] = ()) -> None:  # fmt: skip
        import paho.mqtt.client as mqtt

        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user or "",
                             protocol=mqtt.MQTTv5)  # fmt: skip
        if user is not None:
            self.c.username_pw_set(user, password)
        self.connacks: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.gone = threading.Event()
        self.cond = threading.Condition()
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.c.on_connect = lambda c, u, f, rc, p: self.connacks.put(int(rc.value))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.gone.set()
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.c.on_publish = self._ack
        self.c.on_subscribe = self._suback
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        self.connack = self.connacks.get(timeout=WAIT)
        if self.connack == 0 and subscribe:
            self.granted = self.subscribe(*subscribe)

    def _ack(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        with self.cond:
            self.acks[mid] = int(rc.value)
            self.cond.notify_all()

    def _suback(self, c: Any, u: Any, mid: int, codes: Any, props: Any) -> None:
        with self.cond:
            self.subacks[mid] = [int(x.value) for x in codes]
            self.cond.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """QoS 1; the PUBACK's reason code."""
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.acks, WAIT), f"no PUBACK for {topic}"
            return self.acks[mid]

    def subscribe(self, *filters: str) -> list[int]:
        """The SUBACK's reason codes, one per filter."""
        _rc, mid = self.c.subscribe([(f, 1) for f in filters])
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, WAIT), "no SUBACK"
            return self.subacks[mid]

    def next(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=WAIT)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def connack(port: int, user: str | None, password: str | None) -> int:
    """The broker's answer to one CONNECT, paho driven from here (no thread,
    so no reconnect after a refusal)."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user or "", protocol=mqtt.MQTTv5)
    if user is not None:
        c.username_pw_set(user, password)
    got: list[int] = []
    c.on_connect = lambda c_, u, f, rc, p: got.append(int(rc.value))
    c.connect("127.0.0.1", port, 30)
    deadline = time.monotonic() + WAIT
    while not got:
        assert time.monotonic() < deadline, "no CONNACK"
        c.loop(0.1)  # returns as soon as the CONNACK is read
    if got[0] == 0:
        c.disconnect()
    return got[0]


class Hall:
    """A broker running the files BrokerFiles wrote: the daemon, terminals A
    and B, and lines an operator added (a comment, a monitoring login)."""

    def __init__(self, mosquitto_bin: str, d: Path) -> None:
        self.d = d
        monitor_pw = broker.generate_password()
        (d / "passwd").write_text(f"# hall 3, added by the operator\nmonitor:{broker.hash_password(monitor_pw)}\n")
        (d / "acl").write_text("# the operator's own login\nuser monitor\ntopic read hcp/t/+/state\n")
        # as the config names them; pid_file where ShippedBroker's broker writes it
        self.files = broker.from_config({"password_file": d / "passwd", "acl_file": d / "acl",
                                         "pid_file": d / "mosquitto.pid"})  # fmt: skip
        self.pw = {n: broker.generate_password() for n in ("daemon", AN, BN, CN)}
        self.files.set_daemon(self.pw["daemon"])
        self.files.set_terminal(A, self.pw[AN])
        self.files.set_terminal(B, self.pw[BN])
        self.broker = ShippedBroker(mosquitto_bin, d, self.files)
        self.port = self.broker.port
        self.clients: list[Mqtt] = []

    def login(self, user: str, password: str | None = None, *subscribe: str) -> Mqtt:
        pw = password if password is not None else self.pw["daemon" if user == "hcp-daemon" else user]
        m = Mqtt(self.port, user, pw, subscribe)
        self.clients.append(m)
        assert m.connack == 0, f"{user} refused at CONNECT ({m.connack:#x})"
        return m

    def daemon(self) -> Mqtt:
        return self.login("hcp-daemon", None, "hcp/t/+/up", "hcp/t/+/state")

    def close(self) -> None:
        for m in self.clients:
            m.close()
        self.broker.stop()


@pytest.fixture
def hall(tmp_path: Path, mosquitto_bin: str) -> Iterator[Hall]:
    h = Hall(mosquitto_bin, tmp_path)
    try:
        yield h
    finally:
        h.close()


# --- the broker refuses what a terminal may not do --------------------------


@pytest.mark.slow
def test_a_terminal_publishes_only_on_its_own_up_and_state(hall: Hall) -> None:
    d = hall.daemon()
    a = hall.login(AN)
    # another terminal's topics, the daemon's, and its own down: the broker's PUBACK refuses each
    for topic in (f"hcp/t/{BN}/up", f"hcp/t/{BN}/state", f"hcp/t/{BN}/down",
                  f"hcp/t/{AN}/down", "hcp/alerts", f"hcp/t/{CN}/up"):  # fmt: skip
        assert a.publish(topic, b"forged") == NOT_AUTHORIZED, topic
    assert a.publish(f"hcp/t/{AN}/up", b"a-own") == 0
    assert a.publish(f"hcp/t/{AN}/state", b"online", retain=True) == 0
    # the daemon reads both, and nothing forged came first (one publisher: in order)
    assert d.next() == (f"hcp/t/{AN}/up", b"a-own")
    assert d.next() == (f"hcp/t/{AN}/state", b"online")
    assert d.messages.empty()
    # the broker's own record of each refusal
    log = hall.broker.log_text()
    assert re.search(rf"Denied PUBLISH from {AN} \(d0, q1, r0, m\d+, 'hcp/t/{BN}/up'", log), log[-3000:]
    assert len(re.findall(rf"Sending PUBACK to {AN} \(m\d+, rc135\)", log)) == 6


@pytest.mark.slow
def test_a_terminal_reads_only_its_own_down(hall: Hall) -> None:
    d = hall.daemon()
    b = hall.login(BN, None, f"hcp/t/{BN}/down")
    a = hall.login(AN)
    # Mosquitto's acl_file never refuses a SUBSCRIBE (2.0.11 grants it); it
    # checks the read right on every message it would deliver instead.
    granted = a.subscribe(f"hcp/t/{BN}/down", "hcp/t/+/up", "hcp/t/+/state", "hcp/#")
    assert granted == [1, 1, 1, 1], granted
    assert b.publish(f"hcp/t/{BN}/up", b"b-up") == 0
    assert d.next() == (f"hcp/t/{BN}/up", b"b-up")  # the broker routed it: the daemon has it
    assert d.publish(f"hcp/t/{BN}/down", b"for-b") == 0
    assert b.next() == (f"hcp/t/{BN}/down", b"for-b")
    assert d.publish(f"hcp/t/{AN}/down", b"for-a") == 0
    # Had the broker let a read b-up or for-b, they would be queued for a
    # before for-a: the first and only message a gets is its own.
    assert a.next() == (f"hcp/t/{AN}/down", b"for-a")
    assert a.messages.empty()
    log = hall.broker.log_text()
    sent_to_a = [ln for ln in log.splitlines() if f"Sending PUBLISH to {AN} " in ln]
    assert len(sent_to_a) == 1 and f"'hcp/t/{AN}/down'" in sent_to_a[0], sent_to_a


@pytest.mark.slow
def test_the_daemon_reads_every_up_and_writes_every_down(hall: Hall) -> None:
    d = hall.daemon()
    a = hall.login(AN, None, f"hcp/t/{AN}/down")
    b = hall.login(BN, None, f"hcp/t/{BN}/down")
    assert a.publish(f"hcp/t/{AN}/up", b"1") == 0 and b.publish(f"hcp/t/{BN}/up", b"2") == 0
    assert {d.next(), d.next()} == {(f"hcp/t/{AN}/up", b"1"), (f"hcp/t/{BN}/up", b"2")}
    for t, m in ((AN, a), (BN, b)):
        assert d.publish(f"hcp/t/{t}/down", b"ack") == 0
        assert m.next() == (f"hcp/t/{t}/down", b"ack")
    assert d.publish("hcp/alerts", b"{}") in (0, 0x10)  # 0x10: no subscriber yet
    # but the daemon may not pose as a terminal
    assert d.publish(f"hcp/t/{AN}/up", b"x") == NOT_AUTHORIZED


@pytest.mark.slow
def test_wrong_credentials_are_refused_at_connect(hall: Hall) -> None:
    assert connack(hall.port, AN, hall.pw[AN]) == 0
    assert connack(hall.port, AN, hall.pw[BN]) == NOT_AUTHORIZED  # another terminal's password
    assert connack(hall.port, AN, hall.pw[AN][:-1] + "!") == NOT_AUTHORIZED
    assert connack(hall.port, CN, hall.pw[CN]) == NOT_AUTHORIZED  # not provisioned
    assert connack(hall.port, "hcp-daemon", hall.pw[AN]) == NOT_AUTHORIZED
    assert connack(hall.port, None, None) == NOT_AUTHORIZED  # anonymous
    log = hall.broker.log_text()
    assert len(re.findall(r"Sending CONNACK to \S+ \(0, 135\)", log)) == 5, log[-2000:]


# --- retire, rekey, provision while the broker runs --------------------------


@pytest.mark.slow
def test_a_retired_terminal_is_cut_off_at_reload(hall: Hall) -> None:
    d = hall.daemon()
    a = hall.login(AN)
    b = hall.login(BN)
    assert hall.files.remove_terminal(A) is True
    assert hall.files.terminals() == [B]
    before = hall.broker.reloads()
    did = hall.files.reload()
    assert did == f"sent SIGHUP to mosquitto (pid {hall.broker.proc.pid})"
    # the broker checks its live clients again: a's connection is closed
    assert a.gone.wait(WAIT), "the broker kept the retired terminal connected"
    hall.broker.wait_reloaded(before)
    assert f"Client {AN} disconnected" in hall.broker.log_text()
    # b and the daemon keep theirs, with their rights
    assert b.publish(f"hcp/t/{BN}/up", b"still here") == 0
    assert d.next() == (f"hcp/t/{BN}/up", b"still here")
    assert not b.gone.is_set() and not d.gone.is_set()
    assert connack(hall.port, AN, hall.pw[AN]) == NOT_AUTHORIZED
    assert hall.files.remove_terminal(A) is False


@pytest.mark.slow
def test_a_rekeyed_terminal_needs_its_new_password_after_reload(hall: Hall) -> None:
    d = hall.daemon()
    a = hall.login(AN)
    new = broker.generate_password()
    hall.files.set_terminal(A, new)
    before = hall.broker.reloads()
    # the way a systemd unit reloads it (Debian's ExecReload)
    did = broker.reload(command=["kill", "-HUP", hall.broker.pid_file.read_text().strip()])
    assert did.startswith("ran kill -HUP")
    assert a.gone.wait(WAIT), "a connection made with the old password survived the rekey"
    hall.broker.wait_reloaded(before)
    assert connack(hall.port, AN, hall.pw[AN]) == NOT_AUTHORIZED
    a2 = hall.login(AN, new)
    assert a2.publish(f"hcp/t/{AN}/up", b"rekeyed") == 0
    assert d.next() == (f"hcp/t/{AN}/up", b"rekeyed")
    assert not d.gone.is_set()


@pytest.mark.slow
def test_a_terminal_provisioned_while_the_broker_runs_connects_after_reload(hall: Hall) -> None:
    d = hall.daemon()
    hall.files.set_terminal(C, hall.pw[CN])
    # the broker reads its files only at start and on reload
    assert connack(hall.port, CN, hall.pw[CN]) == NOT_AUTHORIZED
    before = hall.broker.reloads()
    # a failing command, then the pid file: the second way works
    did = broker.reload(pid_file=hall.broker.pid_file, command=["false"])
    assert did.startswith("sent SIGHUP")
    hall.broker.wait_reloaded(before)
    c = hall.login(CN)
    assert c.publish(f"hcp/t/{CN}/up", b"new") == 0
    assert d.next() == (f"hcp/t/{CN}/up", b"new")
    assert c.publish(f"hcp/t/{AN}/up", b"forged") == NOT_AUTHORIZED
    assert not d.gone.is_set()


@pytest.mark.slow
def test_the_broker_as_the_mosquitto_user_reads_root_mosquitto_0640(mosquitto_bin: str) -> None:
    """The deployment's shape: files root:mosquitto 0640 (group='mosquitto'),
    the broker started as root and dropped to 'mosquitto', which re-reads the
    files on every reload (a 0600 root file would lock every login out then)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the broker must drop to the mosquitto user")
    try:
        gid = grp.getgrnam("mosquitto").gr_gid
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user and group (Debian's mosquitto package makes them)")
    # a directory the mosquitto user can reach (pytest's tmp_path is 0700)
    d = Path(tempfile.mkdtemp(prefix="hcp-broker-"))
    try:
        os.chmod(d, 0o750)
        os.chown(d, 0, gid)
        state = d / "state"
        state.mkdir()
        shutil.chown(state, "mosquitto", "mosquitto")
        files = broker.BrokerFiles(d / "passwd", d / "acl", group="mosquitto")
        pw = {n: broker.generate_password() for n in ("daemon", AN, CN)}
        files.set_daemon(pw["daemon"])
        files.set_terminal(A, pw[AN])
        for p in (files.password_file, files.acl_file):
            st = os.stat(p)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, gid), p
        b = ShippedBroker(mosquitto_bin, d, files, as_user=None, state=state)
        try:
            pid = int(b.pid_file.read_text())
            uid = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:")]
            assert uid[0].split()[1] == str(pwd.getpwnam("mosquitto").pw_uid), uid
            assert connack(b.port, AN, pw[AN]) == 0
            files.set_terminal(C, pw[CN])
            before = b.reloads()
            broker.reload(pid_file=b.pid_file)
            b.wait_reloaded(before)
            assert connack(b.port, CN, pw[CN]) == 0, b.log_text()[-2000:]
            assert connack(b.port, AN, pw[AN]) == 0
            assert "Unable to open pwfile" not in b.log_text()
        finally:
            b.stop()
    finally:
        shutil.rmtree(d)


# --- the files ---------------------------------------------------------------


def test_the_hash_is_the_one_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        missing("mosquitto_passwd", "apt-get install mosquitto")
    pw = broker.generate_password()
    subprocess.run([tool, "-c", "-b", str(tmp_path / "p"), "u", pw], check=True)
    theirs = (tmp_path / "p").read_text().strip().split(":", 1)[1]
    _, kind, iterations, salt, _digest = theirs.split("$")
    assert (kind, int(iterations), len(base64.b64decode(salt))) == (
        "7", broker.PBKDF2_ITERATIONS, broker.SALT_BYTES)  # fmt: skip
    assert broker.hash_password(pw, base64.b64decode(salt)) == theirs
    assert broker.hash_password(pw) != theirs  # a fresh salt each time


def test_generated_passwords() -> None:
    pws = {broker.generate_password() for _ in range(200)}
    assert len(pws) == 200
    for p in pws:
        assert len(p) == broker.PASSWORD_LENGTH and set(p) <= set(broker.PASSWORD_ALPHABET)
        assert json.dumps(p) == f'"{p}"'  # nothing to escape in JSON (the firmware's config)
    assert len(broker.PASSWORD_ALPHABET) ** broker.PASSWORD_LENGTH >= 2**128
    assert set(broker.PASSWORD_ALPHABET) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@contextmanager
def umask(m: int) -> Iterator[None]:
    old = os.umask(m)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_file_modes_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
        f.set_terminal(A, broker.generate_password())
        assert (mode(f.password_file), mode(f.acl_file)) == (0o600, 0o600)
        g = broker.BrokerFiles(tmp_path / "g-passwd", tmp_path / "g-acl", group=os.getgid())
        g.set_terminal(A, broker.generate_password())
        for p in (g.password_file, g.acl_file):
            assert (mode(p), os.stat(p).st_gid) == (0o640, os.getgid())
        # an operator's 0644 loses the others' bit and keeps the group's
        os.chmod(f.password_file, 0o644)
        f.set_terminal(B, broker.generate_password())
        assert mode(f.password_file) == 0o640 and mode(f.acl_file) == 0o600
        # a rekey rewrites only the password file; the ACL stays as it was
        acl_inode = os.stat(f.acl_file).st_ino
        f.set_terminal(B, broker.generate_password())
        assert os.stat(f.acl_file).st_ino == acl_inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "g-acl", "g-passwd", "passwd"]


def test_a_rewrite_keeps_the_files_group_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    f.set_terminal(A, broker.generate_password())
    if os.geteuid() == 0:
        gid = 4242
        os.chown(f.password_file, -1, gid)
        os.chmod(f.password_file, 0o640)
        f.set_terminal(B, broker.generate_password())
        st = os.stat(f.password_file)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (gid, 0o640)
    with pytest.raises(broker.BrokerFileError, match="no group 'no-such-group-hcp'"):
        broker.BrokerFiles(tmp_path / "x", tmp_path / "y", group="no-such-group-hcp")


def test_lines_an_operator_added_are_kept(tmp_path: Path) -> None:
    monitor = f"monitor:{broker.hash_password(broker.generate_password())}"
    (tmp_path / "passwd").write_text(f"# hall 3\n{monitor}\n")
    acl_before = [
        "# the operator's logins",
        "user monitor",
        "topic read hcp/t/+/state",
        "",
        f"user {AN}",
        f"topic write hcp/t/{AN}/up",
        "# window 12",
        f"topic write hcp/t/{AN}/state",
        f"topic read hcp/t/{AN}/down",
    ]
    (tmp_path / "acl").write_text("\n".join(acl_before) + "\n")
    f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    f.set_terminal(A, broker.generate_password())
    f.set_terminal(B, broker.generate_password())
    f.remove_terminal(B)
    f.set_terminal(A, broker.generate_password())
    pw = (tmp_path / "passwd").read_text().splitlines()
    assert pw[: len(broker.PASSWORD_HEADER)] == list(broker.PASSWORD_HEADER)
    assert pw[len(broker.PASSWORD_HEADER) :][:2] == ["# hall 3", monitor]
    assert [ln.split(":")[0] for ln in pw if not ln.startswith("#")] == ["monitor", AN]
    acl = (tmp_path / "acl").read_text().splitlines()
    assert acl.count(broker.ACL_HEADER[0]) == 1
    i = acl.index("user monitor")
    assert acl[i - 1 : i + 2] == ["# the operator's logins", "user monitor", "topic read hcp/t/+/state"]
    assert "# window 12" in acl and acl.index("# window 12") > acl.index(f"user {AN}")
    assert f"user {BN}" not in acl
    assert sum(ln.startswith("user ") for ln in acl) == 3  # monitor, A, the daemon
    # idempotent: nothing changes when nothing is asked
    text = (tmp_path / "acl").read_bytes(), (tmp_path / "passwd").read_bytes()
    f.sync()
    f.sync()
    assert ((tmp_path / "acl").read_bytes(), (tmp_path / "passwd").read_bytes()) == text


def test_the_shipped_acl_is_the_shape_hcp_writes(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "mosquitto.acl", tmp_path / "acl")
    f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    f.check()
    f.sync()
    assert (tmp_path / "acl").read_text() == (DEPLOY / "mosquitto.acl").read_text()
    assert "pattern" not in "".join(ln for ln in (DEPLOY / "mosquitto.acl").read_text().splitlines()
                                    if not ln.startswith("#"))  # fmt: skip
    f.set_terminal(0xABCD, broker.generate_password())
    acl = (tmp_path / "acl").read_text()
    assert acl.endswith("\n".join(broker.terminal_acl(0xABCD)) + "\n")


def test_an_old_pattern_acl_says_what_to_do(tmp_path: Path) -> None:
    old = "user hcp-daemon\ntopic read hcp/t/+/up\n\n# %u = the user\npattern write hcp/t/%u/up\n"
    (tmp_path / "acl").write_text(old)
    f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    with pytest.raises(broker.BrokerFileError) as e:
        f.set_terminal(A, broker.generate_password())
    assert str(e.value).startswith(f"{tmp_path / 'acl'}:5: a 'pattern' line gives its rights to every login")
    assert not (tmp_path / "passwd").exists()
    (tmp_path / "acl").write_text(old.replace("pattern write hcp/t/%u/up\n", ""))
    f.set_terminal(A, broker.generate_password())
    assert f"user {AN}" in (tmp_path / "acl").read_text()


SECRET = "hunter2hunter2hunter2"


@pytest.mark.parametrize(
    "which, text, line, says",
    [
        ("passwd", "# ok\nno colon here\n", 2, "not a password entry"),
        ("passwd", f"{AN}:{SECRET}\n", 1, "not a hash Mosquitto 2.0 reads"),
        ("passwd", "u:$7$1$a$b\n# x\nu:$7$1$c$d\n", 3, "'u' again (first on line 1"),
        ("passwd", b"# ok\n# ok\n\xff\xfe:x\n", 3, "not UTF-8"),
        ("acl", "user x\n  # indented\n", 2, "a comment must start in the first column"),
        ("acl", f"# ok\nuser {AN}\ntopic readwrite hcp/#\n", 3, "not a line hcp writes there"),
        ("acl", "user hcp-daemon\ntopic read other/t/+/up\n", 2, "not a line hcp writes there"),
        ("acl", "user x\ntopic sometimes hcp/x\n", 2, "access 'sometimes'"),
        ("acl", "user x\ntopic read hcp/#/x\n", 2, "not a valid topic filter"),
        ("acl", "user\n", 1, "'user' without a name"),
        ("acl", "frobnicate hcp\n", 1, "not an ACL line Mosquitto reads"),
    ],
)
def test_a_malformed_file_names_its_line(tmp_path: Path, which: str, text: str | bytes,
                                         line: int, says: str) -> None:  # fmt: skip
    p = tmp_path / which
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = {q.name: q.read_bytes() for q in tmp_path.iterdir()}
    f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    for call in (f.check, lambda: f.set_terminal(B, broker.generate_password()), f.sync):
        with pytest.raises(broker.BrokerFileError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"{p}:{line}: ") and says in msg, msg
        assert SECRET not in msg and e.value.__cause__ is None
    assert {q.name: q.read_bytes() for q in tmp_path.iterdir()} == before  # nothing written


@pytest.mark.parametrize("line", ["  # an indented comment", "frobnicate hcp"])
def test_mosquitto_refuses_the_acl_lines_we_refuse(tmp_path: Path, mosquitto_bin: str, line: str) -> None:
    """Why such a line is an error and not kept: the broker will not load the file."""
    (tmp_path / "acl").write_text(f"user x\n{line}\n")
    (tmp_path / "m.conf").write_text(f"listener {free_port()} 127.0.0.1\nacl_file {tmp_path / 'acl'}\n"
                                     f"user {pwd.getpwuid(os.geteuid()).pw_name}\n")  # fmt: skip
    p = subprocess.run([mosquitto_bin, "-c", str(tmp_path / "m.conf")], capture_output=True,
                       text=True, timeout=WAIT)  # fmt: skip
    assert p.returncode != 0 and "acl" in (p.stderr + p.stdout).lower(), p


def test_arguments_are_checked_and_passwords_never_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl", prefix="hall7")
    pw = broker.generate_password()
    f.set_terminal(A, pw)
    f.set_daemon(pw[::-1])
    assert f.terminals() == [A] and f.has_daemon()
    assert f"topic read hall7/t/{AN}/down" in (tmp_path / "acl").read_text()
    for bad in ("short", SECRET + " with space", SECRET + "\n", "密码" * 10):
        with pytest.raises(broker.BrokerFileError) as e:
            f.set_terminal(B, bad)
        assert bad.strip() not in str(e.value)
    for bad_id in (-1, 2**32, True):
        with pytest.raises(broker.BrokerFileError):
            f.set_terminal(bad_id, pw)  # type: ignore[arg-type]
    for kw in ({"prefix": "a/#"}, {"prefix": ""}, {"daemon_user": "0000abcd"}, {"daemon_user": "a b"}):
        with pytest.raises(broker.BrokerFileError):
            broker.BrokerFiles(tmp_path / "p2", tmp_path / "a2", **kw)  # type: ignore[arg-type]
    files = (tmp_path / "passwd").read_text() + (tmp_path / "acl").read_text()
    out = capsys.readouterr()
    for secret in (pw, pw[::-1]):
        assert secret not in files and secret not in out.out + out.err
        assert secret not in caplog.text
    assert f.terminals() == [A]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def provision(base: int) -> None:
        f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
        try:
            for i in range(5):
                f.set_terminal(base + i, broker.generate_password())
        except BaseException as e:  # shown below
            errors.append(e)

    threads = [threading.Thread(target=provision, args=(0x100 * k,)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    f = broker.BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    want = sorted(0x100 * k + i for k in range(1, 9) for i in range(5))
    assert f.terminals() == want
    acl = (tmp_path / "acl").read_text()
    blocks = [int(ln[5:], 16) for ln in acl.splitlines() if ln.startswith("user ") and ln != "user hcp-daemon"]
    assert sorted(blocks) == want  # each once (a new block goes at the end; none moves)


def test_from_config_takes_a_mapping_or_an_object(tmp_path: Path) -> None:
    from types import SimpleNamespace

    f = broker.from_config(SimpleNamespace(password_file=str(tmp_path / "p"), acl_file=str(tmp_path / "a"),
                                           prefix="hall7", group=None, reload_command="systemctl reload mosquitto"))  # fmt: skip
    assert (f.password_file, f.prefix, f.daemon_user, f.pid_file) == (tmp_path / "p", "hall7", "hcp-daemon", None)
    assert f.reload_command == "systemctl reload mosquitto"
    with pytest.raises(broker.BrokerFileError, match="need acl_file"):
        broker.from_config({"password_file": tmp_path / "p"})
    with pytest.raises(broker.BrokerReloadError, match="configure its pid file or a reload command"):
        broker.from_config({"password_file": tmp_path / "p", "acl_file": tmp_path / "a"}).reload()


# --- reload's errors ---------------------------------------------------------


def test_reload_says_why_it_could_not(tmp_path: Path) -> None:
    with pytest.raises(broker.BrokerReloadError, match="configure its pid file or a reload command"):
        broker.reload()
    with pytest.raises(broker.BrokerReloadError, match=f"{tmp_path / 'none.pid'}: cannot read"):
        broker.reload(pid_file=tmp_path / "none.pid")
    (tmp_path / "junk.pid").write_text("mosquitto\n")
    with pytest.raises(broker.BrokerReloadError, match="junk.pid: no pid in it"):
        broker.reload(pid_file=tmp_path / "junk.pid")
    with pytest.raises(broker.BrokerReloadError, match=r"false: exit status 1"):
        broker.reload(command="false")
    with pytest.raises(broker.BrokerReloadError, match="no-such-reload-tool mosquitto: command not found"):
        broker.reload(command=["no-such-reload-tool", "mosquitto"])
    # a stale pid file naming another process: refused, and that process is not hung up
    other = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    try:
        (tmp_path / "stale.pid").write_text(f"{other.pid}\n")
        with pytest.raises(broker.BrokerReloadError, match=f"process {other.pid} is 'cat', not mosquitto"):
            broker.reload(pid_file=tmp_path / "stale.pid", command=[sys.executable, "-c", "raise SystemExit(3)"])
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    with pytest.raises(broker.BrokerReloadError, match=f"no process {other.pid}"):
        broker.reload(pid_file=tmp_path / "stale.pid")
