"""Actor: the real uplink (``daemon.uplink.runner.Uplink``: cut, sign, store,
deliver, retry) on the virtual clock, delivering to the in-process province
(province.Sink), and its fault: the uplink process crashes (it is rebuilt from
the SQLite file on its next turn, as a restarted ``hcp uplink run`` is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from haochaping.daemon.uplink import runner as uplink_runner
from haochaping.simulator.vopr.province import Sink

if TYPE_CHECKING:
    from haochaping.simulator.vopr.engine import Sim

HALL = "sim-hall"
UPLINK_EVERY_MS = 500  # the uplink loop's turn


class UplinkActor:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.runner: uplink_runner.Uplink | None = None

    def step(self) -> None:
        sim = self.sim
        if not sim.daemon.up:
            self.close()
            return
        if self.runner is None:
            cfg = uplink_runner.UplinkConfig(
                db=sim.db_path,
                hall_id=HALL,
                keys_dir=sim.keys_dir,
                url="http://province.invalid/batches",
                batch_size=sim.plan.batch_size,
                max_age_s=1.0,
                backoff_base_s=0.5,
                backoff_cap_s=8.0,
                min_free_bytes=0,
                seed=sim.rng.randint(0, 1 << 30),
            )
            self.runner = uplink_runner.Uplink(
                cfg, clock=lambda: sim.daemon.now() / 1000.0, mono=lambda: sim.now / 1000.0,
                sink=Sink(sim),
            )  # fmt: skip
            self.runner.next_alarm_check = float("inf")  # no disk probes: not simulated
            if sim.bug == "no_isolation":
                # Test-only: the uplink as it was before issue #11, a batch the
                # province refuses for one record is refused whole, retried forever.
                self.runner.outbox.isolate = lambda *a, **k: None  # type: ignore[method-assign]
        self.runner.step()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None

    # ------------------------------------------------------------ faults

    def schedule_faults(self, end: int) -> None:
        for _ in range(self.sim.plan.uplink_crashes):
            self.sim.at(self.sim.rng.randint(0, end), self._crash)

    def _crash(self) -> None:
        if self.sim.faulty and self.runner is not None:
            self.sim.count("uplink_crash")
            self.close()
