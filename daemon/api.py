"""The local HTTP API (aiohttp), loopback by default.

Window business systems (窗口业务系统) post a finished case (办件) for a
window; the daemon stores it, arms that window's terminal for one rating and
returns the session id.  Every /v1 call needs ``Authorization: Bearer TOKEN``
(tokens from ``api.tokens_file``).  ``/metrics`` (Prometheus text) and
``/openapi.json`` need none.  ``/status`` and ``/v1/status`` (the hall's
health, a page and its JSON) have their own auth: status_page.py.  Responses never carry a key or a contact.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from typing import Any

from aiohttp import web
from haochaping.daemon import cases, status_page
from haochaping.daemon.cases import CASE_FIELDS, REQUIRED
from haochaping.daemon.clock import now_ms
from haochaping.daemon.core import ArmError, SelfTestError
from haochaping.daemon.store import StoreError, StoreFull
from haochaping.protocol import messages

log = logging.getLogger("hcp.api")

MAX_BODY = 16 * 1024
REVIEW_MAX = 64  # characters of a review outcome
ID_MAX = 2**63 - 1  # SQLite's largest integer: a larger id names nothing
TEST_WAIT_MAX_S = 10.0  # a self-test step waits at most this long for its ECHO
TEST_POLL_S = 0.02
# self-test ops by name (messages.T_*); the first four may be sent
STEPS = ("end", "led", "buzzer", "echo", "press", "timeout", "busy")


def openapi() -> dict[str, Any]:
    case_props: dict[str, Any] = {
        k: {"type": "string", "description": v} for k, v in CASE_FIELDS.items()
    }
    case_props["service_ms"] = {"type": "integer", "description": "service finished, UTC ms"}
    case_props["contact"] = {
        "type": "string",
        "description": "applicant contact for the 差评 callback; stored encrypted",
    }
    case_props["timeout_s"] = {"type": "integer", "minimum": 1, "maximum": 65535}
    case_props["service_ms"]["minimum"] = cases.SERVICE_MIN_MS
    err = {
        "description": "refused",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "haochaping hall daemon", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "Case": {"type": "object", "properties": case_props, "required": list(REQUIRED)},
            },
        },
        "paths": {
            "/v1/cases": {
                "post": {
                    "summary": "A case finished at a window: store it and arm the window's terminal",
                    "security": bearer,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Case"}}}},
                    "responses": {
                        "201": {"description": "armed; body: session, case_id, terminal, expires_ms"},
                        "400": err, "401": err, "404": {"description": "the window has no terminal"},
                        "409": {"description": "the window's terminal is offline"},
                        "413": err, "503": {"description": "the store is full or failing; nothing was taken"},
                    },
                }
            },
            "/v1/sessions/{session}": {
                "delete": {
                    "summary": "Cancel an armed case (DISARM the terminal)",
                    "security": bearer,
                    "parameters": [{"name": "session", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {"200": {"description": "cancelled"}, "404": err},
                }
            },
            "/v1/terminals": {"get": {"summary": "Terminals with health", "security": bearer,
                                      "responses": {"200": {"description": "list"}}}},
            "/v1/ratings": {"get": {"summary": "Ratings after since_id", "security": bearer,
                                    "parameters": [{"name": "since_id", "in": "query", "schema": {"type": "integer"}},
                                                   {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                                    "responses": {"200": {"description": "list"}}}},
            "/v1/ratings/{rating}/review": {
                "post": {
                    "summary": "Record a review outcome (e.g. 不属实) for a rating; the rating is never changed",
                    "security": bearer,
                    "parameters": [{"name": "rating", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"outcome": {"type": "string", "maxLength": REVIEW_MAX}},
                        "required": ["outcome"]}}}},
                    "responses": {"201": {"description": "recorded"},
                                  "200": {"description": "the same outcome was recorded before (idempotent)"},
                                  "400": err, "404": err, "413": err},
                }
            },
            "/v1/alerts": {"get": {"summary": "差评 alerts after since_id", "security": bearer,
                                   "parameters": [{"name": "since_id", "in": "query", "schema": {"type": "integer"}}],
                                   "responses": {"200": {"description": "list"}}}},
            "/v1/terminals/{terminal}/test": {"post": {
                "summary": "one self-test step (led, buzzer, echo, end) for a terminal; waits for its ECHO",
                "parameters": [{"name": "terminal", "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "8 hex digits"}],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                    "step": {"type": "string", "enum": list(STEPS[:4])},
                    "button": {"type": "integer", "minimum": 0, "maximum": 4},
                    "wait_s": {"type": "number", "minimum": 0, "maximum": TEST_WAIT_MAX_S}},
                    "required": ["step"]}}}},
                "responses": {"200": {"description": "echoed"}, "404": err, "409": err, "504": err}}},
            "/v1/terminals/{terminal}/echoes": {"get": {
                "summary": "the terminal's ECHOs after number 'after' (presses during the self-test)",
                "parameters": [{"name": "terminal", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "after", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "list"}, "404": err}}},
            "/metrics": {"get": {"summary": "Prometheus text format", "responses": {"200": {"description": "metrics"}}}},
            **status_page.OPENAPI_PATHS,
        },
    }  # fmt: skip


def _path_int(request: web.Request, name: str) -> int | None:
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    return int(raw)


def fresh_token() -> int:
    """A random ARM session token (u32, never 0)."""
    while True:
        t = secrets.randbits(32)
        if t:
            return t


def _err(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


class Api:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.runner: web.AppRunner | None = None
        self.address = ""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._auth])
        app.router.add_post("/v1/cases", self.post_case)
        app.router.add_delete("/v1/sessions/{session}", self.cancel)
        app.router.add_get("/v1/terminals", self.terminals)
        app.router.add_post("/v1/terminals/{terminal}/test", self.test)
        app.router.add_get("/v1/terminals/{terminal}/echoes", self.echoes)
        app.router.add_get("/v1/ratings", self.ratings)
        app.router.add_post("/v1/ratings/{rating}/review", self.review)
        app.router.add_get("/v1/alerts", self.alerts)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        self.status = status_page.StatusPage(daemon, app)  # /status, /v1/status: their own auth
        self.app = app

    async def start(self) -> None:
        host, _, port = self.d.cfg.listen.rpartition(":")
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, int(port))
        await site.start()
        server: Any = site._server
        sock = server.sockets[0] if server is not None and server.sockets else None
        if sock is not None:
            h, p = sock.getsockname()[:2]
            self.address = f"{h}:{p}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.status.owns(request.path):
            return await self.status.guard(request, handler)
        if request.path.startswith("/v1/"):
            h = request.headers.get("Authorization", "")
            tok = h[7:] if h.startswith("Bearer ") else ""
            # compared as bytes: a token with characters beyond ASCII is simply wrong
            given = tok.encode("utf-8", "surrogateescape")
            match = None
            for t, name in self.d.cfg.api_tokens.items():
                if given and hmac.compare_digest(given, t.encode("utf-8", "surrogateescape")):
                    match = name
            if match is None:  # a read-only status token: 403 saying so
                return self.status.refused(given) or _err(401, "a valid bearer token is required")
            request["client"] = match
            if self.d.core is None:
                return _err(503, "the store is full: nothing can be taken until there is room"
                                 " (docs/operations.md)")
        return await handler(request)

    async def _json(self, request: web.Request) -> Any:
        """The body as JSON, or an HTTP error naming the problem (413 when too large)."""
        try:
            return await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_BODY, actual_size=request.content_length or 0,
                text=json.dumps({"error": f"the body is larger than {MAX_BODY} bytes"}),
                content_type="application/json",
            ) from None
        except Exception:  # noqa: BLE001 - any decoding problem is the client's
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body must be JSON (UTF-8)"}), content_type="application/json"
            ) from None

    def _unavailable(self, e: Exception) -> web.Response:
        if isinstance(e, StoreFull):
            return _err(503, "the store is full: nothing was taken (see docs/operations.md)")
        log.error("store failed: %s", type(e).__name__)
        return _err(503, "the store is failing: nothing was taken")

    async def post_case(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        t = now_ms()
        try:
            case = cases.check(body, t, self.d.cfg.arm_timeout_s)
        except cases.CaseError as e:
            return _err(400, str(e))
        if self.d.store_full:
            return _err(503, "the store is full: nothing was taken (see docs/operations.md)")
        core, store = self.d.core, self.d.store
        window = case.fields["window_no"]
        timeout_s = case.timeout_s
        tid = core.by_window.get(window)
        if tid is None:
            return _err(404, f"window {window} has no terminal")
        if not core.online(tid, t):
            return _err(409, f"the terminal of window {window} is offline")
        enc = self.d.cipher.encrypt(case.contact, case.fields["case_no"]) if case.contact else None
        try:
            case_id = await self.d._on_store(store.add_case, case.fields, enc, t)
            token = fresh_token()
            while token in core.sessions:
                token = fresh_token()
            await self.d._on_store(
                store.add_session, token, case_id, window, tid, t, t + timeout_s * 1000
            )
        except (StoreError, OSError) as e:
            return self._unavailable(e)
        try:
            sess, frames = core.arm(window, case_id, case.fields["case_no"], token, t, timeout_s)
        except ArmError as e:
            return _err(409, str(e))
        self.d._send(frames)
        return web.json_response(
            {
                "session": sess.token,
                "case_id": case_id,
                "terminal": f"{tid:08x}",
                "expires_ms": sess.expires_ms,
            },
            status=201,
        )

    async def cancel(self, request: web.Request) -> web.Response:
        token = _path_int(request, "session")
        if token is None:
            return _err(400, "session is an integer")
        if token not in self.d.core.sessions:
            return _err(404, "no such session")
        try:
            await self.d._on_store(self.d.store.cancel_session, token, now_ms())
        except StoreError as e:
            return self._unavailable(e)
        self.d._send(self.d.core.cancel(token))
        return web.json_response({"session": token, "cancelled": True})

    async def terminals(self, request: web.Request) -> web.Response:
        t = now_ms()
        rows = self.d.reader.terminals()
        for r in rows:
            r["online"] = self.d.core.online(r["id"], t)
            r["id"] = "{:08x}".format(r["id"])
            if r["journal_id"] is not None:
                r["journal_id"] = "{:08x}".format(r["journal_id"])
        return web.json_response({"terminals": rows})

    def _terminal(self, request: web.Request) -> int | None:
        raw = request.match_info["terminal"]
        if len(raw) != 8 or not all(c in "0123456789abcdefABCDEF" for c in raw):
            return None
        return int(raw, 16)

    @staticmethod
    def _echo(e: tuple[int, int, int, int]) -> dict[str, Any]:
        n, at, op, arg = e
        return {"n": n, "at_ms": at, "step": STEPS[op] if op < len(STEPS) else str(op), "button": arg}

    async def test(self, request: web.Request) -> web.Response:
        """A self-test step (SPEC.md "Self-test"): sent, then its ECHO awaited."""
        tid = self._terminal(request)
        if tid is None:
            return _err(400, "the terminal id is 8 hex digits")
        body = await self._json(request)
        if not isinstance(body, dict) or set(body) - {"step", "button", "wait_s"}:
            return _err(400, 'the body is {"step": "led"|"buzzer"|"echo"|"end", "button": 0..4, "wait_s": s}')
        step, button, wait_s = body.get("step"), body.get("button", 0), body.get("wait_s", 5)
        if step not in STEPS[:4]:
            return _err(400, "step is one of " + ", ".join(STEPS[:4]))
        if type(button) is not int or not 0 <= button <= 4 or (button and step != "led"):
            return _err(400, "button is 0..4, and only for the led step")
        if type(wait_s) not in (int, float) or not 0 <= wait_s <= TEST_WAIT_MAX_S:
            return _err(400, f"wait_s is a number 0..{TEST_WAIT_MAX_S:g}")
        core = self.d.core
        if tid not in core.peers:
            return _err(404, f"no terminal {tid:08x}")
        op = STEPS.index(step)
        after = core.peers[tid].echo_n
        try:
            frames = core.test(tid, op, button, now_ms())
        except SelfTestError as e:
            return _err(409, str(e))
        self.d._send(frames)
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            for echo in core.echoes(tid, after):
                if echo[2] == messages.T_BUSY:
                    return _err(409, f"terminal {tid:08x} is busy (a case is armed or a rating in progress)")
                if echo[2] == op and echo[3] == button:
                    return web.json_response({"terminal": f"{tid:08x}", "after": after, "echo": self._echo(echo)})
            if asyncio.get_running_loop().time() >= deadline:
                return _err(504, f"no ECHO of {step} from terminal {tid:08x} within {wait_s:g} s")
            await asyncio.sleep(TEST_POLL_S)

    async def echoes(self, request: web.Request) -> web.Response:
        tid = self._terminal(request)
        if tid is None:
            return _err(400, "the terminal id is 8 hex digits")
        if tid not in self.d.core.peers:
            return _err(404, f"no terminal {tid:08x}")
        after = self._int(request, "after", 0, 2**62)
        return web.json_response({
            "terminal": f"{tid:08x}", "testing": self.d.core.testing(tid, now_ms()),
            "echoes": [self._echo(e) for e in self.d.core.echoes(tid, after)]})  # fmt: skip

    def _int(self, request: web.Request, name: str, default: int, hi: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 20:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"{name} must be an integer"}), content_type="application/json"
            )
        return max(0, min(int(raw), hi))

    async def ratings(self, request: web.Request) -> web.Response:
        rows = self.d.reader.ratings(
            self._int(request, "since_id", 0, 2**62), self._int(request, "limit", 1000, 10000)
        )
        return web.json_response({"ratings": rows})

    async def review(self, request: web.Request) -> web.Response:
        """A review outcome for a rating (e.g. 不属实): an annotation, the rating stays as it is."""
        rid = _path_int(request, "rating")
        if rid is None:
            return _err(400, "the rating id is an integer")
        body = await self._json(request)
        if not isinstance(body, dict) or set(body) - {"outcome"}:
            return _err(400, "the body is {\"outcome\": text}")
        outcome = body.get("outcome")
        if not isinstance(outcome, str) or not 1 <= len(outcome) <= REVIEW_MAX or not outcome.strip():
            return _err(400, f"outcome is text of 1..{REVIEW_MAX} characters")
        if not cases.plain_text(outcome):
            return _err(400, "outcome: control characters and lone surrogates are not allowed")
        if not 1 <= rid <= ID_MAX or not self.d.reader.conn.execute(
            "SELECT 1 FROM ratings WHERE id = ?", (rid,)
        ).fetchone():
            return _err(404, "no such rating")
        try:
            aid, new = await self.d._on_store(
                self.d.store.annotate_once, rid, "review", outcome, now_ms()
            )
        except StoreError as e:
            return self._unavailable(e)
        return web.json_response(
            {"annotation": aid, "rating_id": rid, "outcome": outcome}, status=201 if new else 200
        )

    async def alerts(self, request: web.Request) -> web.Response:
        rows = self.d.reader.alerts(
            self._int(request, "since_id", 0, 2**62), self._int(request, "limit", 1000, 10000)
        )
        return web.json_response({"alerts": rows})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.d.metrics_text(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi())
