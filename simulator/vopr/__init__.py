"""Deterministic whole-system simulation (TigerBeetle's VOPR is the model).

What it is for: run the real code of every hop -- the firmware's Terminal
(buttons, Evaluator, Journal, link Session) on a simulated flash chip, the
serial framing, the daemon's sans-IO Core with the real SQLite Store, the
uplink's Outbox/Uplink (cut, sign, deliver, retry) and the reference
provincial receiver's checks (``simulator.province.Store``) -- in ONE process
on ONE virtual clock, with faults drawn from ONE seed:

* serial bytes dropped, duplicated, reordered, corrupted; cables unplugged
* a power cut at an arbitrary time or in the middle of a flash write (the
  terminal reboots from what the flash chip really holds)
* the daemon crashing before its commit, or between commit and ACK (the core
  is rebuilt from the SQLite file, as a restarted daemon does)
* the uplink crashing; the province down; the province's answer lost after it
  committed a batch
* clock skew: terminal tick counters that start near their wrap and run fast
  or slow, a daemon clock and a case system clock that are off

Invariants, checked while running and at the end (engine.py):

* ``ack_unstored``   no ACK reaches a terminal for a rating not in SQLite
* ``lost``           every rating whose THANKS was shown reaches the receiver
* ``duplicate``      ... exactly once (the receiver refuses a second copy)
* ``binding``        ... with its values and the case (办件) it was armed for
* ``phantom``        the receiver holds nothing a terminal did not write
* ``rejected``       the receiver never rejects a batch (signature, order,
                     chain continuity, province rules)
* ``chain``          the daemon's local hash chain verifies at the end
* ``held``           a rating of a case the province refuses is held in the
                     outbox (not at the receiver), and nothing else is
* ``clock_flags``    with honest terminal clocks, no rating carries a clock
                     suspicion (a step of the daemon's clock flags nothing)
* ``liveness``       after the faults stop, everything drains (journals empty)

A failure raises SimFailure naming the seed; ``run(seed)`` again replays the
same run to the same failure (nothing reads a wall clock or the OS's
randomness in a way that changes what happens).

One file per role:

=============  ============================================================
``plan``       what one seed does: sizes and fault rates (``Plan``)
``world``      the simulated world: virtual clock, flash chip, wires, ports
``terminal``   actor: a virtual terminal (real firmware on ``SimBoard``)
                and the faults it suffers (unplug, power cut, torn write)
``daemon``     actor: the daemon's shell around the real Core and Store,
                and its faults (crash before/after commit, disk full)
``uplink``     actor: the real uplink runner, and its crash
``province``   actor: the in-process receiver sink, and its faults
                (outage, lost answer)
``engine``     ``Sim``: the event loop, the scenario (cases, citizens) and
                the invariants
``result``     ``Result``, ``SimFailure``, ``CheckReport``
``runner``     ``run(seed)``, ``check(seeds)`` (in processes)
=============  ============================================================

What it must never do: change the code under test.  It drives it from
outside: a board (firmware/board_sim.SimBoard) with a simulated serial port
and flash file, the daemon's documented shell calls (receive, commit,
committed), the uplink's Uplink with an in-process sink.  The one patch is
``journal._sync_default`` (os.sync) while a run is on: the simulated flash
makes ``flush`` its durability point, and a real os.sync per simulated write
would only make the run slow.

``bug`` (test-only switch) breaks one rule on purpose, to prove the checker
catches it: ``ack_before_commit`` (the daemon sends ACKs before its commit)
or ``free_before_ack`` (the terminal frees a journal slot once a frame is
sent).
"""

from haochaping.simulator.vopr.engine import HALL, Sim
from haochaping.simulator.vopr.plan import BUGS, Plan
from haochaping.simulator.vopr.result import CheckReport, Result, SimFailure
from haochaping.simulator.vopr.runner import check, run
from haochaping.simulator.vopr.world import TICK_MS, Flash, PowerCut, _no_os_sync

__all__ = [
    "BUGS",
    "HALL",
    "TICK_MS",
    "CheckReport",
    "Flash",
    "Plan",
    "PowerCut",
    "Result",
    "Sim",
    "SimFailure",
    "_no_os_sync",
    "check",
    "run",
]
