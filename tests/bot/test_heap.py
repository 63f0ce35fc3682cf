"""What start-up loaded is frozen out of later garbage collections. A full collection walked the ~400,000
objects torch, open_clip and discord.py leave behind, holding the GIL for ~250 ms: the event loop stood still
in the middle of a /find scan. bench/find_scan.py measures that lag; this test checks the mechanism, untimed.
"""

from __future__ import annotations

import gc


async def test_a_started_bot_keeps_start_up_objects_out_of_collections(w):
    gc.unfreeze()  # a bot started by an earlier test froze this process already
    loaded = len(gc.get_objects())  # torch, open_clip and discord.py are imported by now
    try:
        async with w.bot():
            frozen = gc.get_freeze_count()
            assert frozen > loaded // 2
            # A full collection now walks only what was made after start-up: a small part of the heap.
            assert len(gc.get_objects(generation=2)) < frozen // 4
    finally:
        gc.unfreeze()
