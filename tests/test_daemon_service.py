"""The daemon as a service: sd_notify on a real unix datagram socket,
SIGTERM, SIGHUP, the local HTTP API and 差评 alerts to real hooks."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from haochaping.daemon.bench.harness import (
    DaemonProcess,
    Mosquitto,
    NotifySocket,
    free_port,
    provision,
    write_config,
)
from haochaping.daemon.bench.peers import FakeTerminal, MqttHub, drive, make_key
from haochaping.daemon.sdnotify import Notifier
from haochaping.protocol import messages

TOKEN = "window-system-token-0123456789"


def test_notifier_speaks_the_datagram_protocol(tmp_path):
    ns = NotifySocket(tmp_path / "n.sock")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_s == 2.0
    assert n.ready("up")
    assert ns.wait_for("READY", "1")["STATUS"] == "up"
    assert n.watchdog()
    assert ns.wait_for("WATCHDOG", "1")
    n.close()
    ns.close()
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_s is None


def test_notifier_abstract_namespace():
    name = f"hcp-test-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(5)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert n.notify(STATUS="hello")
    assert s.recv(100) == b"STATUS=hello"
    s.close()
    n.close()


def api(port, method, path, body=None, token=TOKEN):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)  # fmt: skip
    if token:
        req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Hook(BaseHTTPRequestHandler):
    got: list[dict] = []
    fail_first = 1

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Hook.fail_first > 0:
            Hook.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        Hook.got.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.mark.slow
def test_service_api_alerts_signals(tmp_path, mosquitto_bin):
    broker = Mosquitto(mosquitto_bin, tmp_path / "broker").start()
    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hook_nocontact = HTTPServer(("127.0.0.1", 0), Hook)
    port = free_port()
    db = tmp_path / "hall.db"
    extra = f'\n[[alerts.webhook]]\nurl = "http://127.0.0.1:{hook.server_address[1]}/alert"\ncontact = true\n\n[[alerts.mqtt]]\ntopic = "hcp/alerts"\n\n[terminal]\nno_case_policy = 1\narm_timeout_s = 90\n'
    cfg = write_config(tmp_path / "hcp.toml", db, [{"url": f"mqtt://127.0.0.1:{broker.port}"}], port,
                       tokens={"window-sys": TOKEN}, extra=extra)  # fmt: skip
    t1 = FakeTerminal(0x5001, make_key(1, 5))
    t2 = FakeTerminal(0x5002, make_key(2, 5))
    provision(db, [t1], windows={0x5001: "W01"})
    d = DaemonProcess(cfg, tmp_path, env={"WATCHDOG_USEC": "1000000"})
    d.start()
    hub = MqttHub(broker.port)
    alerts_seen: list[bytes] = []
    hub.c.message_callback_add("hcp/alerts", lambda c, u, m: alerts_seen.append(m.payload))
    hub.c.subscribe("hcp/alerts", qos=1)
    p1 = hub.add(t1)
    try:
        assert d.notify is not None
        ready = d.notify.wait_for("READY", "1")
        assert "STATUS" in ready
        d.notify.wait_for("WATCHDOG", "1", timeout=5)

        # the API: auth, OpenAPI, refusals
        assert api(port, "GET", "/v1/terminals", token=None)[0] == 401
        assert api(port, "GET", "/v1/terminals", token="wrong-token-wrong-token")[0] == 401
        doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json").read())
        assert doc["openapi"].startswith("3.") and "/v1/cases" in doc["paths"]
        case = {"case_no": "QD-2026-0001", "item_code": "370200-001", "item_name": "营业执照", "window_no": "W01",
                "staff_id": "S7", "staff_name": "张三", "contact": "13800000000"}  # fmt: skip
        st, body = api(port, "POST", "/v1/cases", case)
        assert st == 409 and "offline" in body["error"]
        st, body = api(port, "POST", "/v1/cases", dict(case, window_no="W99"))
        assert st == 404 and "no terminal" in body["error"]
        assert api(port, "POST", "/v1/cases", {"case_no": "x"})[0] == 400

        # the terminal comes online: HELLO gets TIME, ACK, CONFIG
        p1.hello()
        deadline = time.monotonic() + 10
        while (
            not any(isinstance(m, messages.Config) for m in t1.received)
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        kinds = [type(m).__name__ for m in t1.received[:3]]
        assert kinds == ["Time", "Ack", "Config"]
        assert t1.received[2].settings == [(messages.C_NO_CASE_POLICY, 1)]

        st, body = api(port, "POST", "/v1/cases", case)
        assert st == 201, body
        token = body["session"]
        deadline = time.monotonic() + 10
        while t1.session != token and time.monotonic() < deadline:
            time.sleep(0.02)
        arm = [m for m in t1.received if isinstance(m, messages.Arm)][-1]
        assert arm.session == token and arm.timeout_s == 90

        # a 差评 on that case: stored, bound, alerted to both hooks
        t1.uptime_ms += 3000
        t1.press(1, reason=4)
        p1.send_new()
        assert drive([p1], 10)
        st, body = api(port, "GET", "/v1/ratings")
        r = body["ratings"][-1]
        assert (r["level"], r["case_no"], r["window_no"], r["staff_name"]) == (
            1,
            "QD-2026-0001",
            "W01",
            "张三",
        )
        deadline = time.monotonic() + 15
        while (not Hook.got or not alerts_seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Hook.got, "the webhook never got the alert (after one retry)"
        a = Hook.got[0]
        assert (a["level"], a["reason"], a["window_no"], a["staff_name"]) == (1, 4, "W01", "张三")
        assert a["case"]["case_no"] == "QD-2026-0001" and a["contact"] == "13800000000"
        m = json.loads(alerts_seen[0])
        assert m["level"] == 1 and "contact" not in m  # this hook is not configured for contacts
        st, body = api(port, "GET", "/v1/alerts")
        assert body["alerts"][0]["case_no"] == "QD-2026-0001"
        assert "13800000000" not in json.dumps(body)

        # staff asked for a review: found untrue; an annotation, the rating unchanged
        st, body = api(port, "POST", f"/v1/ratings/{r['id']}/review", {"outcome": "不属实"})
        assert st == 201 and body["outcome"] == "不属实"
        assert api(port, "POST", "/v1/ratings/999999/review", {"outcome": "不属实"})[0] == 404
        assert api(port, "POST", f"/v1/ratings/{r['id']}/review", {"outcome": ""})[0] == 400
        assert api(port, "GET", "/v1/ratings")[1]["ratings"][-1]["level"] == 1

        # cancel: DISARM
        st, body = api(port, "POST", "/v1/cases", dict(case, case_no="QD-2026-0002"))
        assert st == 201
        tok2 = body["session"]
        assert api(port, "DELETE", f"/v1/sessions/{tok2}")[0] == 200
        deadline = time.monotonic() + 10
        while (
            not any(isinstance(m, messages.Disarm) for m in t1.received)
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert any(isinstance(m, messages.Disarm) and m.session == tok2 for m in t1.received)

        st, body = api(port, "GET", "/v1/terminals")
        (term,) = body["terminals"]
        assert term["id"] == "00005001" and term["online"] and "key" not in term

        # SIGHUP: a newly provisioned terminal is served without a restart
        provision(db, [t2], windows={0x5002: "W02"})
        d.proc.send_signal(1)
        d.notify.wait_for("RELOADING", "1")
        p2 = hub.add(t2)
        p2.hello()
        t2.press(5)
        p2.send_new()
        assert drive([p2], 10)

        # SIGTERM: exit 0 within the stated bound
        t0 = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t0 < 10
        log = d.output()
        assert "13800000000" not in log and make_key(1, 5).hex() not in log
        assert "<6>hcp.daemon: ready" in log
    finally:
        if d.alive():
            d.kill9()
        hub.close()
        hook.shutdown()
        hook_nocontact.server_close()
        broker.stop()
