"""差评 alerts: a rating of level 1 or 2 fires at once to every hook.

Hooks: HTTP webhooks (POST JSON, retried with capped backoff), MQTT topics
(published QoS 1 through the daemon's MQTT transport), and the API's alert
list (the ``alerts`` table, written in the same transaction as the rating).
The payload carries what the callback needs: case, window, staff, time,
level, reason.  The applicant's contact (decrypted only here) goes only to
hooks configured with ``contact = true``.  Nothing here logs a payload.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("hcp.alerts")

WEBHOOK_ATTEMPTS = 6
WEBHOOK_BACKOFF_S = (1, 2, 4, 8, 16)  # capped; then the delivery is counted as failed
WEBHOOK_TIMEOUT_S = 10
MAX_IN_FLIGHT = 1000  # deliveries waiting or retrying; past it new ones are counted failed


class AlertHub:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.fired = 0
        self.failures = 0
        self.delivered = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: Any = None
        self.hooks = list(daemon.cfg.hooks)

    def reconfigure(self) -> None:
        self.hooks = list(self.d.cfg.hooks)

    def fire(self, rating_ids: list[int]) -> None:
        self.fired += len(rating_ids)
        if not self.hooks:
            return
        rows = self.d.reader.alerts_for(rating_ids)
        for row in rows:
            base = payload(row)
            for hook in self.hooks:
                body = dict(base)
                if hook.contact and row.get("contact_enc") and self.d.cipher is not None:
                    try:
                        body["contact"] = self.d.cipher.decrypt(row["contact_enc"], row["case_no"])
                    except Exception:  # noqa: BLE001 - a bad blob must not stop the alert
                        body["contact"] = None
                data = json.dumps(body, ensure_ascii=False).encode()
                if hook.kind == "mqtt":
                    self._mqtt(hook.target, data)
                elif len(self.tasks) >= MAX_IN_FLIGHT:
                    self.failures += 1
                else:
                    t = asyncio.get_running_loop().create_task(
                        self._webhook(hook.target, hook.token, data)
                    )
                    self.tasks.add(t)
                    t.add_done_callback(self.tasks.discard)

    def _mqtt(self, topic: str, data: bytes) -> None:
        for tr in self.d.transports.values():
            pub = getattr(tr, "publish", None)
            if pub is not None and pub(topic, data):
                self.delivered += 1
                return
        self.failures += 1

    async def _webhook(self, url: str, token: str | None, data: bytes) -> None:
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
            )
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token:
            headers["Authorization"] = "Bearer " + token
        for attempt in range(WEBHOOK_ATTEMPTS):
            try:
                async with self.session.post(url, data=data, headers=headers) as r:
                    if 200 <= r.status < 300:
                        self.delivered += 1
                        return
                    why = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                why = type(e).__name__
            if attempt < len(WEBHOOK_BACKOFF_S):
                await asyncio.sleep(WEBHOOK_BACKOFF_S[attempt])
        self.failures += 1
        log.warning("alert webhook gave up after %d attempts (%s)", WEBHOOK_ATTEMPTS, why)

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.session is not None:
            await self.session.close()


def payload(row: dict[str, Any]) -> dict[str, Any]:
    case = None
    if row.get("case_id") is not None:
        case = {k: row.get(k) for k in ("case_no", "item_code", "item_name", "dept_name", "window_no",
                                          "window_name", "staff_id", "staff_name", "service_ms")}  # fmt: skip
    return {
        "alert_id": row["id"],
        "rating_id": row["rating_id"],
        "terminal": "{:08x}".format(row["terminal_id"]),
        "window_no": (case or {}).get("window_no") or row.get("terminal_window"),
        "staff_id": (case or {}).get("staff_id"),
        "staff_name": (case or {}).get("staff_name"),
        "level": row["level"],
        "reason": row["reason"],
        "time_ms": row["assess_ms"],
        "case": case,
    }
