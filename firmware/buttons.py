"""Debounced buttons: raw pin levels in, press edges and the technician chord out.

Sans-IO and allocation-free: the board reads its pins into a bitmask (bit i =
button i is down) and calls ``update(mask, now)``, from the main loop's poll
or from a ``micropython.schedule``d IRQ hand-off (a hard IRQ handler must not
allocate, so it only schedules a preallocated bound method).  ``update``
returns a bitmask of buttons newly pressed; nothing is allocated per call.

Debounce is a lock-out: the first edge of a button is taken at once (the
press is felt immediately) and further changes of that button within
``debounce_ms`` are contact bounce and dropped.  A press that starts while
another button is already held is part of a chord, not a rating.  Holding
both outer buttons (0 and 4) for ``tech_hold_ms`` makes ``take_tech`` true
once per hold.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from haochaping.firmware.ui import ticks_diff

_N = const(5)
_OUTER = const(0x11)  # buttons 0 and 4


class Buttons:
    def __init__(self, debounce_ms=30, tech_hold_ms=3000):
        self.debounce_ms = debounce_ms
        self.tech_hold_ms = tech_hold_ms
        self.stable = 0  # debounced mask
        self._changed = [0] * _N  # ms of each button's last accepted change
        self._ever = 0  # buttons that changed at least once
        self._chord_since = 0
        self._chord = False
        self._tech_fired = False
        self.bounces = 0  # edges dropped as bounce

    def update(self, mask, now):
        """Feed the raw levels; return the mask of new debounced presses."""
        pressed = 0
        diff = mask ^ self.stable
        if diff:
            held_before = self.stable
            for i in range(_N):
                bit = 1 << i
                if not diff & bit:
                    continue
                if self._ever & bit and ticks_diff(now, self._changed[i]) < self.debounce_ms:
                    self.bounces += 1
                    continue
                self._changed[i] = now
                self._ever |= bit
                if mask & bit:
                    self.stable |= bit
                    if not held_before & ~bit:
                        pressed |= bit
                else:
                    self.stable &= ~bit
        if self.stable & _OUTER == _OUTER:
            if not self._chord:
                self._chord = True
                self._chord_since = now
                self._tech_fired = False
        else:
            self._chord = False
        return pressed

    def take_tech(self, now):
        """True (once per hold) if both outer buttons are held long enough."""
        if self._chord and not self._tech_fired:
            if ticks_diff(now, self._chord_since) >= self.tech_hold_ms:
                self._tech_fired = True
                return True
        return False
