"""What a run gives back: ``Result`` (one seed's counts), ``SimFailure`` (an
invariant broke: the seed, the virtual time, the invariant, what was seen) and
``CheckReport`` (many seeds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haochaping.simulator.vopr.plan import Plan


class SimFailure(Exception):
    """An invariant broke.  ``str()`` is the same on every replay of the seed."""

    def __init__(self, seed: int, at_ms: int, invariant: str, detail: str) -> None:
        super().__init__(seed, at_ms, invariant, detail)
        self.seed, self.at_ms, self.invariant, self.detail = seed, at_ms, invariant, detail

    def __str__(self) -> str:
        return f"seed {self.seed}: invariant {self.invariant!r} broken at t={self.at_ms} ms: {self.detail}"



@dataclass
class Result:
    seed: int
    plan: Plan
    virtual_ms: int
    stats: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "virtual_ms": self.virtual_ms,
            "terminals": self.plan.terminals,
            "faults": self.plan.faults,
            **self.stats,
        }



@dataclass
class CheckReport:
    seeds: list[int]
    passed: int
    failures: list[SimFailure]
    seconds: float
    totals: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seeds": len(self.seeds),
            "first_seed": self.seeds[0] if self.seeds else None,
            "passed": self.passed,
            "failed": len(self.failures),
            "failures": [str(f) for f in self.failures],
            "seconds": round(self.seconds, 2),
            "totals": self.totals,
        }

