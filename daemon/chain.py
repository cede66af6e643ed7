"""The local hash chain over the append-only ratings log.

Every stored rating carries ``chain = SHA-256(prev_chain || canonical(rating))``
where ``prev_chain`` is the chain value of the rating stored just before it
(32 zero bytes for the first).  Changing, deleting or inserting one rating
breaks every chain value after it, which ``hcp audit verify`` names.

The canonical form is fixed here and nowhere else: the fields below, in this
order, each as a decimal integer (empty for NULL), joined by ``|``, UTF-8.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

GENESIS = bytes(32)

# Columns of the ratings table that the chain covers, in canonical order.
FIELDS = (
    "id",
    "terminal_id",
    "seq",
    "level",
    "reason",
    "flags",
    "session",
    "device_time",
    "uptime_ms",
    "boot",
    "received_ms",
)


def canonical(rating: Mapping[str, Any]) -> bytes:
    parts = []
    for f in FIELDS:
        v = rating[f]
        parts.append("" if v is None else str(int(v)))
    return "|".join(parts).encode()


def next_hash(prev: bytes, rating: Mapping[str, Any]) -> bytes:
    if len(prev) != 32:
        raise ValueError("a chain value is 32 bytes")
    return hashlib.sha256(prev + canonical(rating)).digest()
