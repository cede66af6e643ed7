"""MQTT transport: paho-mqtt 2.x (CallbackAPIVersion.VERSION2), MQTT v5.

``mqtt://host:1883?prefix=hcp`` or ``mqtts://host:8883`` (TLS).  Options:
client_id, username, password (read from password_file by the config
loader), ca_file, cert_file, key_file, session_expiry_s, keepalive_s.

QoS 1 both ways and a persistent session (clean_start False plus a session
expiry interval), so frames terminals publish while the daemon restarts wait
in the broker.  Callbacks only enqueue.  paho is driven from the daemon's
asyncio loop (its socket registered with add_reader/add_writer, loop_misc
from a supervisor task), as paho's examples/loop_asyncio.py does: a network
thread of its own would hand the GIL back and forth with the ingest loop
for every packet (measured: the drain of a backlog took 1.6x as long).  The
supervisor task connects and reconnects with a backoff from RECONNECT_MIN_S
to BACKOFF_MAX_S, and ``supervise`` restarts it should it ever end.  A PUBACK is no acknowledgement of a rating:
only the protocol ACK after the commit is.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import paho.mqtt.client as mqtt
from haochaping.daemon.transport import BACKOFF_MAX_S, Bad, Inbox, Received
from haochaping.protocol import mqtt as topics
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("hcp.mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue this long while we are away
KEEPALIVE_S = 30
RECONNECT_MIN_S = 1
MAX_INFLIGHT = 200
TOPIC_CACHE_MAX = 100_000  # up topics remembered (one per terminal)
MISC_INTERVAL_S = 0.5  # keep-alive and time-out work (paho loop_misc)


class MqttTransport:
    def __init__(self, url: str, inbox: Inbox, options: dict[str, Any]) -> None:
        u = urlsplit(url)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        self.url = url
        self.host = u.hostname or "127.0.0.1"
        self.tls = u.scheme == "mqtts"
        self.port = u.port or (8883 if self.tls else 1883)
        self.prefix = q.get("prefix", options.get("prefix", topics.DEFAULT_PREFIX))
        self.client_id = q.get("client_id", options.get("client_id", "hcp-daemon"))
        self.options = options
        self.inbox = inbox
        self.filter = topics.up_filter(self.prefix)
        self.connected = False
        self.connects = 0
        self.loop_restarts = 0
        self._sources: dict[str, str] = {}  # up topic -> source name
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        c.max_inflight_messages_set(MAX_INFLIGHT)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(RECONNECT_MIN_S, int(BACKOFF_MAX_S))
        o = self.options
        if o.get("username"):
            c.username_pw_set(o["username"], o.get("password"))
        if self.tls:
            c.tls_set(
                ca_certs=o.get("ca_file"),
                certfile=o.get("cert_file"),
                keyfile=o.get("key_file"),
                cert_reqs=ssl.CERT_REQUIRED,
            )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._hook_sockets(c)
        return c

    # callbacks: enqueue or note state, nothing else

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.warning("broker refused the connection: %s", rc)
            return
        self.connected = True
        self.connects += 1
        client.subscribe(self.filter, qos=1)
        log.info(
            "connected to broker %s:%d (session present: %s)",
            self.host,
            self.port,
            flags.session_present,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.connected = False
        if not self._stop.is_set():
            log.warning("broker connection lost: %s", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        topic = m.topic
        source = self._sources.get(topic)
        if source is None:
            parsed = topics.parse_topic(topic, self.prefix)
            if parsed is None or parsed[1] != "up":
                self.inbox.put(Bad("mqtt", "wrong_source"))
                return
            source = f"mqtt:{parsed[0]:08x}"
            if len(self._sources) < TOPIC_CACHE_MAX:
                self._sources[topic] = source
        self.inbox.put(Received(source, bytes(m.payload), True, self))

    # the network loop: driven by the daemon's asyncio loop, supervised

    def _register(self, fn: Any, *args: Any) -> None:
        # paho calls the socket hooks from connect() on a worker thread too
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _hook_sockets(self, c: mqtt.Client) -> None:
        c.on_socket_open = lambda cl, u, sock: self._register(self._add_reader, sock)
        c.on_socket_close = lambda cl, u, sock: self._register(self._remove, sock)
        c.on_socket_register_write = lambda cl, u, sock: self._register(self._add_writer, sock)
        c.on_socket_unregister_write = lambda cl, u, sock: self._register(self._remove_writer, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self._read)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self.client.loop_write)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _remove(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _read(self) -> None:
        try:
            self.client.loop_read()
        except Exception as e:  # noqa: BLE001 - a failing read drops the connection; the supervisor reconnects
            log.warning("MQTT read failed (%s); reconnecting", type(e).__name__)
            self.connected = False
            sock = self.client.socket()
            if sock is not None:
                self._remove(sock)
                try:
                    sock.close()
                except OSError:
                    pass

    def _connect_blocking(self, first: bool) -> None:
        if first:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.options.get("session_expiry_s", SESSION_EXPIRY_S))
            self.client.connect(
                self.host, self.port, int(self.options.get("keepalive_s", KEEPALIVE_S)),
                clean_start=False, properties=props,
            )  # fmt: skip
        else:
            self.client.reconnect()

    async def _run(self) -> None:
        """Connect, keep alive (loop_misc), reconnect with a capped backoff."""
        assert self._loop is not None
        delay = float(RECONNECT_MIN_S)
        first = True
        while not self._stop.is_set():
            if self.client.socket() is None:
                try:
                    await self._loop.run_in_executor(None, self._connect_blocking, first)
                    first = False
                    delay = float(RECONNECT_MIN_S)
                except Exception as e:  # noqa: BLE001 - broker away: back off and go again
                    self.connected = False
                    log.warning("MQTT connect failed (%s); retrying in %.0f s", type(e).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(BACKOFF_MAX_S, delay * 2)
                    continue
            self.client.loop_misc()
            await asyncio.sleep(MISC_INTERVAL_S)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._task = self._loop.create_task(self._run())

    def supervise(self) -> None:
        if self._task is not None and self._task.done() and not self._stop.is_set():
            self.loop_restarts += 1
            exc = self._task.exception() if not self._task.cancelled() else None
            log.warning("MQTT supervisor stopped (%s); restarting it", type(exc).__name__ if exc else "cancelled")
            self.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client.disconnect()
            self.client.loop_write()
        except Exception:  # noqa: BLE001
            pass
        sock = self.client.socket()
        if sock is not None and self._loop is not None:
            self._remove(sock)
        if self._task is not None:
            self._task.cancel()

    def send(self, source: str, terminal_id: int, frame: bytes) -> bool:
        info = self.client.publish(topics.down_topic(terminal_id, self.prefix), frame, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes) -> bool:
        return self.client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    def health(self) -> dict[str, Any]:
        return {"url": self.url, "connected": self.connected, "connects": self.connects,
                "loop_restarts": self.loop_restarts}  # fmt: skip
