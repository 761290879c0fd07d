"""An asyncio event loop in a thread of its own: the explorer pool's loop.

The explorer is frozen, so its samples for the next step can be generated while this step trains
(explorer prefetch). The trainer's thread is busy training then and runs no event loop, so the
explorer's requests run on this thread's loop; its client and pool (whose locks and semaphores
belong to the loop that first waits on them) are only ever used here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


class LoopThread:
    """Runs submitted coroutines on one event loop in a daemon thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coroutine` on the thread's loop (callable from any thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self, timeout_s: float = 30.0) -> None:
        """Cancel whatever still runs (a prefetch nobody will use), stop the loop, join the thread."""
        if self._loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(cancel_all()).result(timeout_s)
        except TimeoutError:
            logger.warning(
                "%s: requests still running after %.0f s; stopping anyway", self._thread.name, timeout_s
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        self._loop.close()
