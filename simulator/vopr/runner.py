"""Run seeds: ``run(seed)`` is one deterministic run (raises SimFailure),
``check(seeds)`` runs many, in processes if asked, and reports failures by
seed.  Each seed's run is the same whichever process runs it."""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from haochaping.simulator.vopr.engine import Sim
from haochaping.simulator.vopr.plan import Plan
from haochaping.simulator.vopr.result import CheckReport, Result, SimFailure
from haochaping.simulator.vopr.world import _no_os_sync


def _workdir_base() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def run(
    seed: int, bug: str | None = None, keep: str | None = None, plan: Plan | None = None
) -> Result:
    """One deterministic run; raises SimFailure.  ``keep``: run in this
    directory and leave the files (SQLite, receiver) for inspection."""
    if keep is not None:
        d = Path(keep)
        d.mkdir(parents=True, exist_ok=True)
        return _run_in(seed, bug, d, plan)
    with tempfile.TemporaryDirectory(prefix="hcp-vopr-", dir=_workdir_base()) as tmp:
        return _run_in(seed, bug, Path(tmp), plan)


def _run_in(seed: int, bug: str | None, d: Path, plan: Plan | None = None) -> Result:
    with _no_os_sync(), _quiet():
        sim = Sim(seed, d, bug, plan)
        try:
            return sim.run()
        except SimFailure:
            raise
        except Exception as e:
            # The code under test raised: that is a failure of this seed too.
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise SimFailure(
                seed, sim.now, "exception",
                f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})",
            ) from e  # fmt: skip
        finally:
            sim.close()


@contextmanager
def _quiet() -> Iterator[None]:
    """The uplink logs every retry; thousands of simulated ones are noise."""
    log = logging.getLogger("haochaping")
    saved = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(saved)



def _one(seed: int, bug: str | None) -> Result | SimFailure:
    try:
        return run(seed, bug)
    except SimFailure as e:
        return e


def check(
    seeds: list[int],
    bug: str | None = None,
    progress: Callable[[int, Result | SimFailure], None] | None = None,
    stop_on_failure: bool = False,
    jobs: int = 1,
) -> CheckReport:
    """Run ``seeds`` (in ``jobs`` processes); the report lists failures by seed.
    Each seed's run is the same whichever process runs it."""
    t0 = time.perf_counter()
    failures: list[SimFailure] = []
    passed = 0
    totals: dict[str, int] = {}

    def take(s: int, res: Result | SimFailure) -> None:
        nonlocal passed
        if isinstance(res, SimFailure):
            failures.append(res)
        else:
            passed += 1
            for k, v in res.stats.items():
                totals[k] = totals.get(k, 0) + v
        if progress is not None:
            progress(s, res)

    if jobs <= 1:
        for s in seeds:
            take(s, _one(s, bug))
            if failures and stop_on_failure:
                break
    else:
        import concurrent.futures as cf
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # nothing inherited from this process
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futs = {pool.submit(_one, s, bug): s for s in seeds}
            for fut in cf.as_completed(futs):
                take(futs[fut], fut.result())
                if failures and stop_on_failure:
                    for f in futs:
                        f.cancel()
                    break
    failures.sort(key=lambda f: f.seed)
    return CheckReport(seeds, passed, failures, time.perf_counter() - t0, totals)
