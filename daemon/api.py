"""The local HTTP API (aiohttp), loopback by default.

Window business systems (窗口业务系统) post a finished case (办件) for a
window; the daemon stores it, arms that window's terminal for one rating and
returns the session id.  Every /v1 call needs ``Authorization: Bearer TOKEN``
(tokens from ``api.tokens_file``).  ``/metrics`` (Prometheus text) and
``/openapi.json`` need none.  Responses never carry a key or a contact.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any

from aiohttp import web
from haochaping.daemon.clock import now_ms
from haochaping.daemon.core import ArmError

log = logging.getLogger("hcp.api")

MAX_BODY = 16 * 1024
REVIEW_MAX = 64  # characters of a review outcome
CASE_FIELDS = {
    "case_no": "办件编号 (projectNo)",
    "item_code": "事项编码 (taskCode)",
    "item_name": "事项名称 (taskName)",
    "handle_item": "办理项 (taskHandleItem)",
    "dept_code": "部门编码",
    "dept_name": "部门名称 (proDepart)",
    "area_code": "行政区划编码",
    "window_no": "窗口编号 (winNo)",
    "window_name": "窗口名称",
    "staff_id": "工作人员编号",
    "staff_name": "工作人员姓名 (proManager)",
    "service_number": "服务编号",
}
REQUIRED = ("case_no", "item_code", "item_name", "window_no", "staff_name")


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
                        "409": {"description": "the window's terminal is offline"}, "503": err,
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
                    "responses": {"201": {"description": "recorded"}, "400": err, "404": err},
                }
            },
            "/v1/alerts": {"get": {"summary": "差评 alerts after since_id", "security": bearer,
                                   "parameters": [{"name": "since_id", "in": "query", "schema": {"type": "integer"}}],
                                   "responses": {"200": {"description": "list"}}}},
            "/metrics": {"get": {"summary": "Prometheus text format", "responses": {"200": {"description": "metrics"}}}},
        },
    }  # fmt: skip


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
        app.router.add_get("/v1/ratings", self.ratings)
        app.router.add_post("/v1/ratings/{rating}/review", self.review)
        app.router.add_get("/v1/alerts", self.alerts)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
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
        if request.path.startswith("/v1/"):
            h = request.headers.get("Authorization", "")
            tok = h[7:] if h.startswith("Bearer ") else ""
            ok = any(hmac.compare_digest(tok, t) for t in self.d.cfg.api_tokens) if tok else False
            if not ok:
                return _err(401, "a valid bearer token is required")
            request["client"] = self.d.cfg.api_tokens[tok]
        return await handler(request)

    async def post_case(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001
            return _err(400, "body must be JSON")
        if not isinstance(body, dict):
            return _err(400, "body must be a JSON object")
        for k in REQUIRED:
            if not isinstance(body.get(k), str) or not body[k]:
                return _err(400, f"{k} is required (text)")
        for k in body:
            if k not in CASE_FIELDS and k not in ("service_ms", "contact", "timeout_s"):
                return _err(400, f"unknown field {k}")
        timeout_s = body.get("timeout_s", self.d.cfg.arm_timeout_s)
        if not isinstance(timeout_s, int) or not 1 <= timeout_s <= 0xFFFF:
            return _err(400, "timeout_s must be 1..65535")
        core, store = self.d.core, self.d.store
        window = body["window_no"]
        t = now_ms()
        tid = core.by_window.get(window)
        if tid is None:
            return _err(404, f"window {window} has no terminal")
        if not core.online(tid, t):
            return _err(409, f"the terminal of window {window} is offline")
        contact = body.get("contact")
        enc = (
            self.d.cipher.encrypt(contact, body["case_no"])
            if isinstance(contact, str) and contact
            else None
        )
        case = {k: body.get(k) for k in CASE_FIELDS}
        case["service_ms"] = body.get("service_ms", t)
        try:
            case_id = await self.d._on_store(store.add_case, case, enc, t)
            token = fresh_token()
            while token in core.sessions:
                token = fresh_token()
            await self.d._on_store(
                store.add_session, token, case_id, window, tid, t, t + timeout_s * 1000
            )
        except Exception as e:  # noqa: BLE001
            log.error("case not stored: %s", type(e).__name__)
            return _err(503, "the store is unavailable")
        try:
            sess, frames = core.arm(window, case_id, body["case_no"], token, t, timeout_s)
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
        try:
            token = int(request.match_info["session"])
        except ValueError:
            return _err(400, "session is an integer")
        if token not in self.d.core.sessions:
            return _err(404, "no such session")
        await self.d._on_store(self.d.store.cancel_session, token, now_ms())
        self.d._send(self.d.core.cancel(token))
        return web.json_response({"session": token, "cancelled": True})

    async def terminals(self, request: web.Request) -> web.Response:
        t = now_ms()
        rows = self.d.reader.terminals()
        for r in rows:
            r["online"] = self.d.core.online(r["id"], t)
            r["id"] = "{:08x}".format(r["id"])
        return web.json_response({"terminals": rows})

    def _int(self, request: web.Request, name: str, default: int, hi: int) -> int:
        try:
            v = int(request.query.get(name, default))
        except ValueError:
            raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
        return max(0, min(v, hi))

    async def ratings(self, request: web.Request) -> web.Response:
        rows = self.d.reader.ratings(
            self._int(request, "since_id", 0, 2**62), self._int(request, "limit", 1000, 10000)
        )
        return web.json_response({"ratings": rows})

    async def review(self, request: web.Request) -> web.Response:
        """A review outcome for a rating (e.g. 不属实): an annotation, the rating stays as it is."""
        try:
            rid = int(request.match_info["rating"])
            body = await request.json()
        except (ValueError, TypeError):
            return _err(400, "rating id is an integer and the body JSON")
        except Exception:  # noqa: BLE001
            return _err(400, "body must be JSON")
        outcome = body.get("outcome") if isinstance(body, dict) else None
        if not isinstance(outcome, str) or not 1 <= len(outcome) <= REVIEW_MAX:
            return _err(400, f"outcome is text of 1..{REVIEW_MAX} characters")
        if not self.d.reader.conn.execute("SELECT 1 FROM ratings WHERE id = ?", (rid,)).fetchone():
            return _err(404, "no such rating")
        aid = await self.d._on_store(self.d.store.annotate, rid, "review", outcome, now_ms())
        return web.json_response(
            {"annotation": aid, "rating_id": rid, "outcome": outcome}, status=201
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
