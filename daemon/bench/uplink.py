"""Fill a hall database with ratings (tests, benchmark) and measure an outage drain.

``fill`` goes through the daemon's real store (daemon/store.py ``commit``),
so the rows, chain values and annotations are exactly what the daemon
writes.  ``drain`` is ``hcp bench uplink``: N ratings buffered while the
province is unreachable, then the reference receiver (a separate process)
comes up and the uplink delivers everything; the figure is ratings per
second from the first delivery attempt until the last acknowledgement.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from haochaping.daemon import keys, store
from haochaping.daemon.uplink import runner

BASE_MS = 1_764_000_000_000  # 2025-11-24 UTC: a fixed epoch keeps runs reproducible


def case_fields(i: int) -> dict[str, Any]:
    return {
        "case_no": f"QD{20260000000 + i}",
        "item_code": f"11370200MB0000000X-00{i % 7}",
        "item_name": "企业设立登记",
        "handle_item": None,
        "dept_code": "11370200MB0000000X",
        "dept_name": "青岛市行政审批服务局",
        "area_code": "370200",
        "window_no": f"W{i % 40:02d}",
        "window_name": f"综合受理{i % 40}号窗口",
        "staff_id": f"S{i % 40:03d}",
        "staff_name": f"窗口人员{i % 40}",
        "service_ms": BASE_MS + i * 1000,
        "service_number": f"A{i % 1000:03d}",
    }


def fill(
    st: store.Store,
    n: int,
    rng: random.Random,
    *,
    start_seq: int = 1,
    terminals: int = 8,
    group: int = 500,
    with_cases: bool = True,
) -> list[int]:
    """Commit ``n`` varied ratings (some 差评, some without case, some flagged); return ids."""
    ids: list[int] = []
    done = 0
    while done < n:
        k = min(group, n - done)
        batch = []
        for j in range(k):
            i = start_seq + done + j
            tid = 0x1000 + (i % terminals)
            level = rng.choice((1, 2, 3, 4, 5, 5, 5, 4))
            reason = rng.choice((0, 0, 3, 7)) if level <= 2 else 0
            case_id = None
            if with_cases and rng.random() < 0.9:
                case_id = st.add_case(case_fields(i), None, BASE_MS + i * 1000)
            batch.append(
                store.NewRating(
                    terminal_id=tid,
                    seq=i,
                    level=level,
                    reason=reason,
                    flags=1 | (0x08 if rng.random() < 0.02 else 0),
                    session=i if case_id else None,
                    case_id=case_id,
                    device_time=(BASE_MS // 1000) + i,
                    uptime_ms=i * 1000 % 2**32,
                    boot=1,
                    assess_ms=BASE_MS + i * 1000 + rng.choice((500, 2000, -3000)),
                    time_quality="synced",
                    flags_found=["too_fast"] if rng.random() < 0.01 else [],
                )
            )
        out = st.commit(batch, BASE_MS + (start_seq + done) * 1000)
        ids.extend(s.id for s in out if s.id is not None)
        done += k
    return ids


def drain(n: int, batch_size: int = 1000, keep: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=keep) as tmp:
        t = Path(tmp)
        keys.init(t / "keys")
        db = str(t / "hall.sqlite")
        st = store.Store(db)
        t0 = time.perf_counter()
        fill(st, n, random.Random(1), with_cases=True, group=1000)
        st.close()
        fill_s = time.perf_counter() - t0
        recv = subprocess.Popen(
            [sys.executable, "-m", "haochaping", "province", "serve",
             "--listen", "127.0.0.1:0", "--data", str(t / "province"),
             "--pubkey", str(t / "keys" / "keyring")],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            line = recv.stdout.readline() if recv.stdout else ""
            url = line.split()[-1]
            cfg = runner.UplinkConfig(
                db=db, hall_id="bench-hall", keys_dir=str(t / "keys"), url=url,
                batch_size=batch_size, seed=1,
            )  # fmt: skip
            up = runner.Uplink(cfg)
            t1 = time.perf_counter()
            up.run(until_idle=True)
            drain_s = time.perf_counter() - t1
            st2 = up.outbox.status()
            up.close()
            with urllib.request.urlopen(url.replace("/batches", "/admin/stats"), timeout=10) as r:
                received = json.loads(r.read())["records"]
        finally:
            recv.terminate()
            recv.wait(10)
        size = os.path.getsize(db)
    return {
        "ratings": n,
        "batch_size": batch_size,
        "batches": st2["batches"]["acked"],
        "fill_s": round(fill_s, 2),
        "drain_s": round(drain_s, 2),
        "ratings_per_s": round(n / drain_s),
        "db_mib": round(size / 2**20, 1),
        "delivered": n - st2["unbatchedRatings"] - st2["pendingRatings"],
        "received": received,
    }
