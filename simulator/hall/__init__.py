"""A whole hall on this machine, with real processes: what ``hcp demo`` and
``hcp sim --terminals N`` run.

What it is for: show (and check) the path a press takes in production.  It
starts, each as its own process, the reference provincial receiver (``hcp
province serve``), a Mosquitto broker when one is installed and asked for,
the hall daemon (``hcp daemon --config``) and the uplink (``hcp uplink
run``); then N virtual terminals running ``firmware/`` (Terminal with the
simulator board, a real journal file, the firmware's own serial and MQTT
transports) whose serial end is a real pseudo-terminal the daemon's pyserial
transport opens, or that talks to a real Mosquitto broker.  A window business system posts finished cases (办件) to the
daemon's HTTP API, which arms the window's terminal; simulated citizens
press its buttons.  At the end it reads what each hop holds and checks that
every rating whose THANKS was shown reached the receiver exactly once, and
that every batch's signature verifies.

What it must never do: reach into a running process; everything is observed
through the files and HTTP endpoints the parts offer (SQLite read-only).

The package: ``common`` (limits, helpers), ``terminals`` (virtual terminals
and their links), ``hall`` (the processes and the scenario), ``summary``
(what each hop holds, the exactly-once check).
"""

from haochaping.simulator.hall.common import HALL_ID, HallError, free_port
from haochaping.simulator.hall.hall import Hall, HallOptions, run
from haochaping.simulator.hall.summary import Snapshot
from haochaping.simulator.hall.terminals import (
    Confirmed,
    MpyTerminal,
    MqttLink,
    PtyPort,
    VirtualTerminal,
)

__all__ = [
    "HALL_ID",
    "Confirmed",
    "Hall",
    "HallError",
    "HallOptions",
    "MpyTerminal",
    "MqttLink",
    "PtyPort",
    "Snapshot",
    "VirtualTerminal",
    "free_port",
    "run",
]
