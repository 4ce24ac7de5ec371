"""Running an asyncio service until Ctrl-C, SIGTERM or a time limit, the same way for every
long-lived command (ingest, simulate, later the scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[T]], *, duration: float | None = None) -> T:
    """Run ``main(stop)``; SIGINT/SIGTERM (or ``duration`` seconds) set ``stop`` so the service can
    finish the work in hand — the ingester commits and acknowledges its batch — instead of dying
    mid-write. The caller's own signal handlers are put back afterwards."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[tuple[signal.Signals, Any]] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread may own signal handlers; elsewhere `duration` is what stops it.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, stop.set)
                handled.append((sig, previous))
        timer = loop.call_later(duration, stop.set) if duration is not None else None
        try:
            return await main(stop)
        finally:
            if timer is not None:
                timer.cancel()
            for sig, previous in handled:
                loop.remove_signal_handler(sig)
                if previous is not None:
                    signal.signal(sig, previous)

    return asyncio.run(runner())
