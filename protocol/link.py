"""One end of one terminal's link: counters, replay guard, direction.

Rules (SPEC.md "Link rules"):

- Each direction has its own counter, a 32-bit number ``epoch << 16 | n``.
  The sender starts an epoch at n = 1 and adds one per frame.  The terminal's
  epoch is its boot count, so counters keep rising across reboots; when n
  would pass 0xFFFF the sender must start a new epoch (CounterExhausted), and
  a terminal does that by incrementing its persisted boot count.  The daemon
  persists its own down epoch and starts a new one every time it starts.
- A receiver accepts a frame only if it is authentic, travels in this link's
  receive direction, names this link's terminal, and has a counter above the
  last one accepted; anything else raises and changes no state.
- ``accept`` is separate from the checks in ``open``: a receiver that must
  store a message before it counts as received (durable before acknowledged)
  calls ``open`` then, after the commit, ``accept``.  ``receive`` does both.

This module keeps no clock and does no I/O.
"""

from haochaping.protocol import frame as _frame
from haochaping.protocol.errors import CounterExhausted, DirectionError, FrameError, ReplayError
from haochaping.protocol.messages import DOWN

TERMINAL = "terminal"
DAEMON = "daemon"
EPOCH_MAX = 0xFFFF
N_MAX = 0xFFFF


def counter(epoch, n):
    return (epoch << 16) | n


class Link:
    def __init__(self, role, terminal_id, key, epoch, rx_last=0):
        if role not in (TERMINAL, DAEMON):
            raise ValueError("role is 'terminal' or 'daemon'")
        if not 0 <= epoch <= EPOCH_MAX:
            raise ValueError("epoch is 0..65535")
        self.role = role
        self.terminal_id = terminal_id
        self.key = key
        self.epoch = epoch
        self._n = 0
        self.rx_last = rx_last  # last counter accepted from the peer

    @property
    def tx_last(self):
        return counter(self.epoch, self._n)

    def new_epoch(self, epoch):
        """Continue in a later epoch (after CounterExhausted, or on restart)."""
        if not self.epoch < epoch <= EPOCH_MAX:
            raise ValueError("a new epoch must be above the current one")
        self.epoch = epoch
        self._n = 0

    def send(self, msg):
        """The frame for ``msg`` with the next counter (not serial-wrapped)."""
        down = bool(msg.TYPE & DOWN)
        if down != (self.role == DAEMON):
            raise DirectionError("%s may not send %s" % (self.role, msg.NAME))
        if self._n >= N_MAX:
            raise CounterExhausted("epoch %d has no counters left" % self.epoch)
        self._n += 1
        return _frame.seal(self.key, msg, self.terminal_id, counter(self.epoch, self._n))

    def open(self, data):
        """Check a received frame without recording its counter; return a Frame."""
        f = _frame.unseal(self.key, data)
        if f.terminal_id != self.terminal_id:
            raise FrameError("frame names terminal %08x, link is %08x" % (f.terminal_id, self.terminal_id))
        down = bool(f.type & DOWN)
        if down != (self.role == TERMINAL):
            raise DirectionError("%s received a frame going the wrong way" % self.role)
        if f.counter <= self.rx_last:
            raise ReplayError("counter %d is not above %d" % (f.counter, self.rx_last))
        return f

    def accept(self, f):
        """Record ``f``'s counter as the last accepted one."""
        if f.counter <= self.rx_last:
            raise ReplayError("counter %d is not above %d" % (f.counter, self.rx_last))
        self.rx_last = f.counter

    def receive(self, data):
        f = self.open(data)
        self.accept(f)
        return f
