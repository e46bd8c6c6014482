"""Mailer that writes each message as an .eml file: the all-in-one's default when no SMTP is set."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path


class OutboxMailer:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)

    async def send(self, message: EmailMessage) -> None:
        name = str(message["Message-ID"]).strip("<>").replace("/", "_") + ".eml"
        path = self._dir / name
        tmp = path.with_suffix(".tmp")
        data = bytes(message)

        def write() -> None:
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)
