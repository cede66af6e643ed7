"""What one seed does: the hall's size and which faults are on, at what rate.

Adding a fault: a field here, a line in ``Plan.draw`` (at the end, so the
draws of the faults before it keep their order), and the actor that suffers
it schedules and applies it (terminal.py, daemon.py, uplink.py,
province.py); docs/simulator.md lists the faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BUGS = ("ack_before_commit", "free_before_ack", "no_journal_identity", "no_isolation")


@dataclass
class Plan:
    """What one seed does: sizes and fault rates (swarm testing: each fault
    kind is on or off per seed, so rare combinations get runs of their own)."""

    terminals: int
    cases: int  # per terminal
    capacity: int
    no_case_record: bool
    drop: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    byte_loss: float = 0.0
    reorder: float = 0.0
    unplugs: int = 0
    power_cuts: int = 0
    write_cuts: int = 0
    daemon_crashes: int = 0
    crash_after_commit: float = 0.0
    uplink_crashes: int = 0
    outages: int = 0
    disk_fulls: int = 0  # windows in which every commit fails with StoreFull
    mqtt_terminals: int = 0  # the first ones talk MQTT-style (one frame per message), not serial
    cancel_rate: float = 0.0  # share of cases the business system withdraws (DISARM)
    ack_lost: float = 0.0
    skew: bool = False
    wipes: int = 0  # a terminal's flash erased (factory reset, re-flash)
    replaces: int = 0  # a terminal's board swapped for a new one with the same id and key
    restores: int = 0  # a terminal's journal image put back from an older copy
    clock_steps: int = 0  # the daemon's clock is off, then NTP steps it to the true time
    refused_cases: float = 0.0  # share of cases whose item code the province's list lacks
    batch_size: int = 5
    case_gap_ms: tuple[int, int] = (4000, 40_000)  # between two cases at one window
    faults: list[str] = field(default_factory=list)

    @classmethod
    def day(cls, terminals: int = 20, hours: float = 8.0) -> Plan:
        """A fault-free working day: a case every 1-5 minutes at every window."""
        gap = (60_000, 300_000)
        return cls(
            terminals=terminals,
            cases=max(1, int(hours * 3_600_000 / ((gap[0] + gap[1]) / 2))),
            capacity=2000,
            no_case_record=False,
            batch_size=200,
            case_gap_ms=gap,
        )

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        p = cls(
            terminals=rng.randint(1, 3),
            cases=rng.randint(4, 14),
            capacity=rng.choice((2, 4, 8, 64, 2000)),
            no_case_record=rng.random() < 0.5,
            batch_size=rng.choice((1, 3, 5, 20)),
        )

        def on(name: str) -> bool:
            if rng.random() < 0.5:
                p.faults.append(name)
                return True
            return False

        if on("drop"):
            p.drop = rng.uniform(0.01, 0.15)
        if on("dup"):
            p.dup = rng.uniform(0.01, 0.15)
        if on("corrupt"):
            p.corrupt = rng.uniform(0.01, 0.1)
        if on("byte_loss"):
            p.byte_loss = rng.uniform(0.01, 0.1)
        if on("reorder"):
            p.reorder = rng.uniform(0.02, 0.2)
        if on("unplug"):
            p.unplugs = rng.randint(1, 4)
        if on("power_cut"):
            p.power_cuts = rng.randint(1, 3)
        if on("write_cut"):
            p.write_cuts = rng.randint(1, 4)
        if on("daemon_crash"):
            p.daemon_crashes = rng.randint(1, 4)
            p.crash_after_commit = rng.uniform(0.3, 1.0)
        if on("uplink_crash"):
            p.uplink_crashes = rng.randint(1, 3)
        if on("province_outage"):
            p.outages = rng.randint(1, 3)
        if on("ack_lost"):
            p.ack_lost = rng.uniform(0.05, 0.5)
        p.skew = on("clock_skew")
        if on("disk_full"):
            p.disk_fulls = rng.randint(1, 3)
        if on("mqtt"):
            p.mqtt_terminals = rng.randint(1, p.terminals)
        if on("cancel"):
            p.cancel_rate = rng.uniform(0.05, 0.3)
        if on("journal_wipe"):
            p.wipes = rng.randint(1, 2)
        if on("board_replace"):
            p.replaces = 1
        if on("journal_restore"):
            p.restores = rng.randint(1, 2)
        if on("daemon_clock_step"):
            p.clock_steps = rng.randint(1, 2)
        if on("province_refuses_case"):
            p.refused_cases = rng.uniform(0.05, 0.3)
        return p
