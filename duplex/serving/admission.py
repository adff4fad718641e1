"""Clients waiting for a slot: each waiter's queue notices go out from its own task, so one that does not read
them holds up no one."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

log = logging.getLogger(__name__)


class Waiter:
    """A client waiting for a slot. Its queue notices go out from its own task, newest only: if the client does
    not read them (a send that does not complete within ``timeout``), its connection is dropped, and nobody
    else waits for it."""

    def __init__(self, connection, timeout: float):
        self.connection, self.timeout = connection, timeout
        self.position: Optional[int] = None
        self._notice: Optional[bytes] = None
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._send_notices())

    def tell(self, notice: bytes) -> None:
        self._notice = notice
        self._ready.set()

    def stop(self) -> None:
        self._task.cancel()

    async def _send_notices(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            notice, self._notice = self._notice, None
            try:
                await asyncio.wait_for(self.connection.send(notice), self.timeout)
            except asyncio.TimeoutError:
                log.info("a waiting client does not read its queue notices; dropped")
                self.connection.transport.abort()
                return
            except Exception:  # the client left (ConnectionClosed): its handler removes it from the queue
                return
