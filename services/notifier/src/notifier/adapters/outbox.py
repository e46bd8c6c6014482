"""Mailer that writes each message as an .eml file: the all-in-one's default when no SMTP is set."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

from ispbill_core.files import open_private, private_directory


class OutboxMailer:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        private_directory(self._dir)

    async def send(self, message: EmailMessage) -> None:
        name = str(message["Message-ID"]).strip("<>").replace("/", "_") + ".eml"
        path = self._dir / name
        tmp = path.with_suffix(".tmp")
        data = bytes(message)

        def write() -> None:
            with open_private(tmp, "wb") as out:  # messages hold addresses and invoices: 0600
                out.write(data)
            tmp.replace(path)

        await asyncio.to_thread(write)
