"""Keep the garbage collector's full passes off a long-running role's hot path.

CPython's oldest generation is scanned whole whenever enough objects have survived into it. A role
holds hundreds of thousands of long-lived objects (torch, pydantic and aiohttp modules, restored
state), so each such pass walks all of them: in a 1,000-series forecast batch, two full passes took
most of the 3 s that the collector cost (docs/streams.md, "Garbage collection"). Those objects never
become garbage, so once a role has started (and after it restores state) they are moved to the
permanent generation, which the collector skips. Objects made later are collected as usual.
"""

from __future__ import annotations

import gc


def settle_heap() -> int:
    """Collect garbage now, then freeze every surviving object; the number frozen in total."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
