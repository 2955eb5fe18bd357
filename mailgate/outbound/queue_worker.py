"""What the workers that drain a durable outbox share: a database connection used from one
thread of its own, a wake-up that any thread may ring, and an orderly stop.

Input: the store's location and a name for the database thread. Output: `QueueWorker`, the base
of the relay worker (outgoing mail) and the webhook worker (events): `wake()` and `stop()`
callable from any thread, `close()` after `run()` returned, and for the subclass `_in_db`
(a store function run on the database thread with the connection first), `_sleep` (until
woken or the time is up) and `_started` (bind the wake-up to the running loop). Trusts its
caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mailgate.store.connect import open_store

T = TypeVar("T")


class QueueWorker:
    def __init__(self, database: Path | str, thread_name: str) -> None:
        self.db = open_store(database)
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # --- control (callable from any thread) ---------------------------------------------------

    def wake(self) -> None:
        """New work is in the outbox: look now instead of at the next poll."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Let the work in flight finish, then return from `run()`."""
        self._stopping = True
        self.wake()

    def close(self) -> None:
        """Release the database connection and its thread (after `run()` has returned)."""
        self._db_thread.shutdown(wait=True)
        self.db.close()

    # --- for the loop ---------------------------------------------------------------------------

    def _started(self) -> None:
        """At the start of `run()`: the wake-up belongs to the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()

    async def _in_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread,
                                          functools.partial(fn, self.db, *args, **kwargs))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
