"""Actor: the province, in process -- the reference receiver's checks
(``simulator.province.Store``) behind the uplink's sink interface -- and its
faults: an outage (every delivery is refused), an answer lost after the
receiver committed the batch, and a case it refuses for good (its item list
lacks the case's item code: the uplink must hold that rating and deliver
everything behind it, docs/uplink.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from haochaping.daemon.uplink import delivery
from haochaping.simulator import province

REFUSED_ITEM = "11440000MB2C-NOT-IN-LIST"  # an item code the province's list lacks
REFUSED_CODES = ("task_refused",)  # the refusals a seed with that fault may see

if TYPE_CHECKING:
    from haochaping.simulator.vopr.engine import Sim


class Sink:
    """The uplink's sink: the reference receiver's checks, in process."""

    state = "acked"

    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def deliver(self, batch_id: str, body: bytes) -> str:
        sim = self.sim
        if sim.province_down:
            sim.count("province_refused")
            raise delivery.Retryable("province down (simulated outage)")
        try:
            ack = sim.receiver.accept(body, sim.now)
        except province.Reject as e:
            if e.code not in REFUSED_CODES or not sim.plan.refused_cases:
                sim.fail("rejected", f"the receiver rejected batch: {e.code} {e}")
            sim.count("province_refused_record")
            raise delivery.Rejected(e.status, json.dumps({"code": e.code, "error": str(e)})) from e
        sim.stats["batches_" + ack["status"]] += 1
        if sim.faulty and sim.rng.random() < sim.plan.ack_lost:
            sim.count("province_ack_lost")
            raise delivery.Retryable("answer lost (simulated)")
        return json.dumps(ack)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- faults


def schedule_faults(sim: Sim, end: int) -> None:
    """Outages of the province before ``end``."""
    r = sim.rng
    for _ in range(sim.plan.outages):
        t0 = r.randint(0, end)
        sim.at(t0, _province(sim, False))
        sim.at(t0 + r.randint(5_000, 120_000), _province(sim, True))


def _province(sim: Sim, up: bool) -> Callable[[], None]:
    def fire() -> None:
        if sim.faulty or up:
            sim.province_down = not up
            if not up:
                sim.count("province_outage")

    return fire
