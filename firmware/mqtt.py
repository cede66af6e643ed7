"""A tiny MQTT 3.1.1 client on a non-blocking socket: the terminal's Wi-Fi link.

Why not ``umqtt.simple``: it blocks in connect, read and write, so a bad
link can stall the main loop past the watchdog.  Here every socket call is
non-blocking and every wait has a deadline in the caller's ``now`` (ms):

    connect     CONNECT_MS for TCP + CONNACK, then close and back off
    keep-alive  PINGREQ after KEEPALIVE_S/2 of silence; nothing heard for
                1.5 x KEEPALIVE_S: close and back off
    backoff     BACKOFF_MIN_MS doubling to BACKOFF_MAX_MS
    buffers     OUT_MAX bytes queued to send (a frame that does not fit is
                refused: the session resends it after its ACK time-out),
                IN_MAX bytes of a partial packet

Only name resolution (``getaddrinfo``, done once per address change) can
block, bounded by the network stack's DNS time-out; use an IP address to
avoid it.  The transport interface is the one every board uses:
``poll(now)``, ``connected``, ``recv()``, ``send(frame)``.  One frame per
MQTT message: up on ``{prefix}/t/{id}/up``, down on ``.../down`` (QoS 1),
retained ``online``/``offline`` (the will) on ``.../state``.
MQTT PUBACKs free nothing: only the daemon's protocol ACK frees the journal.
"""

import select

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from haochaping.firmware.ui import ticks_diff
from haochaping.protocol import mqtt as _topics

CONNECT_MS = const(5000)
KEEPALIVE_S = const(30)
BACKOFF_MIN_MS = const(500)
BACKOFF_MAX_MS = const(30000)
OUT_MAX = const(2048)
IN_MAX = const(1024)
RX_FRAMES_MAX = const(16)
READ_CHUNK = const(256)

M_OFF = const(0)
M_CONNECTING = const(1)  # TCP connect in progress
M_CONNACK = const(2)  # CONNECT sent, waiting for CONNACK
M_UP = const(3)
MQTT_STATE_NAMES = ("OFF", "CONNECTING", "CONNACK", "UP")

_EAGAIN = (11, 115, 119, 36)  # EAGAIN, EINPROGRESS (Linux, lwIP), EINPROGRESS (BSD)


class MQTTError(Exception):
    """The broker refused us or sent something MQTT does not allow."""


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return bytes((len(b) >> 8, len(b) & 0xFF)) + b


def _packet(first, body):
    n = len(body)
    hdr = bytearray((first,))
    while True:
        d = n & 0x7F
        n >>= 7
        hdr.append(d | 0x80 if n else d)
        if not n:
            break
    return bytes(hdr) + body


def connect_packet(client_id, keepalive, will_topic, will_msg, user=None, password=None):
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will QoS 1 retained
    if user is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = _str("MQTT") + bytes((4, flags, keepalive >> 8, keepalive & 0xFF))
    body += _str(client_id) + _str(will_topic) + _str(will_msg)
    if user is not None:
        body += _str(user)
    if password is not None:
        body += _str(password)
    return _packet(0x10, body)


def publish_packet(topic, payload, pid, retain=False):
    return _packet(
        0x32 | (1 if retain else 0), _str(topic) + bytes((pid >> 8, pid & 0xFF)) + payload
    )


def subscribe_packet(topic, pid):
    return _packet(0x82, bytes((pid >> 8, pid & 0xFF)) + _str(topic) + b"\x01")


def _would_block(e):
    return isinstance(e, OSError) and e.args and e.args[0] in _EAGAIN


class MQTTTransport:
    def __init__(
        self,
        host,
        port,
        terminal_id,
        prefix=_topics.DEFAULT_PREFIX,
        keepalive_s=KEEPALIVE_S,
        user=None,
        password=None,
        net_up=None,
    ):
        self.host = host
        self.port = port
        self.client_id = "hcp-" + _topics.terminal_name(terminal_id)
        self.up = _topics.up_topic(terminal_id, prefix)
        self.down = _topics.down_topic(terminal_id, prefix)
        self.state_topic = _topics.state_topic(terminal_id, prefix)
        self.keepalive_s = keepalive_s
        self.user = user
        self.password = password
        self.net_up = net_up  # callable: is Wi-Fi up?  None = always
        self.state = M_OFF
        self.sock = None
        self._poller = None
        self._addr = None
        self._out = bytearray()
        self._in = bytearray()
        self._frames = []
        self._pid = 0
        self._deadline = 0
        self._retry_at = 0
        self._backoff = BACKOFF_MIN_MS
        self._heard = 0
        self._said = 0
        self.connects = 0
        self.failures = 0
        self.refused = 0  # frames refused because OUT_MAX was reached
        self.last_error = ""

    @property
    def connected(self):
        return self.state == M_UP

    # ----------------------------------------------------------- helpers

    def _next_pid(self):
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    def _close(self, now, why):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._poller = None
        self._out = bytearray()
        self._in = bytearray()
        if self.state != M_OFF or why:
            self.failures += 1
            self.last_error = why
        self.state = M_OFF
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_MS)

    def _start(self, now):
        import socket  # here, so the packet code also loads where there is none

        if self._addr is None:
            self._addr = socket.getaddrinfo(self.host, self.port)[0][-1]
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(self._addr)
        except OSError as e:
            if not _would_block(e):
                s.close()
                raise
        self.sock = s
        p = select.poll()
        p.register(s, select.POLLIN | select.POLLOUT)
        self._poller = p
        self.state = M_CONNECTING
        self._deadline = now + CONNECT_MS

    def _flush(self):
        while self._out:
            try:
                n = self.sock.send(self._out)
            except OSError as e:
                if _would_block(e):
                    return
                raise
            if not n:
                return
            self._out = self._out[n:]

    def _read(self):
        while True:
            try:
                d = self.sock.recv(READ_CHUNK)
            except OSError as e:
                if _would_block(e):
                    return
                raise
            if d is None:
                return
            if not d:
                raise OSError(104, "broker closed the connection")
            self._in.extend(d)
            if len(self._in) > IN_MAX:
                raise MQTTError("packet over %d bytes" % IN_MAX)
            if len(d) < READ_CHUNK:
                return

    def _queue(self, pkt):
        if len(self._out) + len(pkt) > OUT_MAX:
            return False
        self._out.extend(pkt)
        return True

    def _packets(self, now):
        buf = self._in
        while len(buf) >= 2:
            n = 0
            shift = 0
            i = 1
            while True:
                if i >= len(buf):
                    return
                d = buf[i]
                n |= (d & 0x7F) << shift
                i += 1
                if not d & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MQTTError("bad remaining length")
            if len(buf) < i + n:
                return
            first = buf[0]
            body = bytes(buf[i : i + n])
            self._in = buf = buf[i + n :]
            self._heard = now
            self._handle(first, body, now)

    def _handle(self, first, body, now):
        kind = first >> 4
        if kind == 2:  # CONNACK
            if len(body) != 2 or body[1] != 0:
                raise MQTTError(
                    "broker refused the connection (code %d)" % (body[1] if len(body) > 1 else -1)
                )
            self._queue(subscribe_packet(self.down, self._next_pid()))
            self._queue(publish_packet(self.state_topic, b"online", self._next_pid(), True))
            self.state = M_UP
            self.connects += 1
            self._backoff = BACKOFF_MIN_MS
        elif kind == 3:  # PUBLISH
            qos = (first >> 1) & 3
            tl = body[0] << 8 | body[1]
            topic = body[2 : 2 + tl]
            off = 2 + tl
            if qos:
                pid = body[off : off + 2]
                off += 2
                self._queue(b"\x40\x02" + pid)
            if topic == self.down.encode() and len(self._frames) < RX_FRAMES_MAX:
                self._frames.append(body[off:])
        elif kind == 9:  # SUBACK
            if body[-1] == 0x80:
                raise MQTTError("subscription to the down topic refused")
        # PUBACK (4) and PINGRESP (13) need nothing

    # --------------------------------------------------------- interface

    def poll(self, now):
        """Do whatever socket work is possible now, without blocking."""
        try:
            self._poll(now)
        except (OSError, MQTTError) as e:
            self._close(now, str(e)[:60])

    def _poll(self, now):
        if self.state == M_OFF:
            if self.net_up is not None and not self.net_up():
                return
            if ticks_diff(now, self._retry_at) < 0 and self.failures:
                return
            self._start(now)
        if self.state == M_CONNECTING:
            ev = self._poller.poll(0)
            if ev:
                flags = ev[0][1]
                if flags & (select.POLLERR | select.POLLHUP):
                    raise OSError(111, "TCP connect failed")
                if flags & select.POLLOUT:
                    self._queue(
                        connect_packet(
                            self.client_id,
                            self.keepalive_s,
                            self.state_topic,
                            b"offline",
                            self.user,
                            self.password,
                        )
                    )
                    self.state = M_CONNACK
                    self._heard = now
                    self._said = now
        if self.state in (M_CONNACK, M_CONNECTING) and ticks_diff(now, self._deadline) >= 0:
            raise OSError(110, "no CONNACK within %d ms" % CONNECT_MS)
        if self.state >= M_CONNACK:
            self._flush()
            self._read()
            self._packets(now)
            self._flush()
        if self.state == M_UP:
            ka = self.keepalive_s * 1000
            if ticks_diff(now, self._heard) >= ka + ka // 2:
                raise OSError(110, "broker silent for %d ms" % ticks_diff(now, self._heard))
            if ticks_diff(now, self._said) >= ka // 2 and self._queue(b"\xc0\x00"):
                self._said = now
                self._flush()

    def recv(self):
        if not self._frames:
            return None
        return self._frames.pop(0)

    def send(self, frame):
        """Queue one frame for the up topic; False if not connected or full."""
        if self.state != M_UP:
            return False
        if not self._queue(publish_packet(self.up, bytes(frame), self._next_pid())):
            self.refused += 1
            return False
        return True

    def close(self, now=0):
        if self.sock is not None and self.state == M_UP:
            try:
                self.sock.send(b"\xe0\x00")
            except OSError:
                pass
        self._close(now, "")
        self.failures = 0
