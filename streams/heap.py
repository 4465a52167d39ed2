"""Keep the garbage collector's full passes off a long-running role's hot path.

CPython's oldest generation is scanned whole whenever enough objects have survived into it. A role
holds hundreds of thousands of long-lived objects (torch, pydantic and aiohttp modules, built
services), so each such pass walks all of them: 0.3-1.3 s every ~6 s on a ctr worker under load,
and in process, 8,000 observations of 1,000 forecast series spent 3.0 s in the collector (wall,
load 14, ``gc.callbacks``) against 0.4 s with the heap frozen first. Those objects never become
garbage, so when a role starts they are moved to the permanent generation, which the collector
skips. Objects made later are collected as usual.

A worker also widens the young generation: each batch's records and events (several objects each)
live until the batch is applied, and with Python's 700 allocations between young collections each
is scanned on its way to the old generation; with 50,000 most die first (the ctr runner path, 50k
impressions, 3 pairs: 6-13% less CPU). A serving replica keeps the default: its objects live for
one request, and a young collection over 50,000 objects would land on some request's latency.
"""

from __future__ import annotations

import gc

#: Allocations between young collections in a worker (Python's default: 700).
WORKER_YOUNG_ALLOCATIONS = 50_000


def settle_heap(young_allocations: int | None = None) -> int:
    """Collect garbage now, then freeze every surviving object (and, given ``young_allocations``,
    collect the young generation that rarely); the number of objects frozen in total."""
    gc.collect()
    gc.freeze()
    if young_allocations is not None:
        gc.set_threshold(young_allocations, *gc.get_threshold()[1:])
    return gc.get_freeze_count()
