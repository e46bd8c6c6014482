"""SMTP adapter of the Mailer port (aiosmtplib)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    use_tls: bool = False
    timeout: float = 30.0


class NotifierDeliveryError(Exception):
    """The SMTP server refused or could not be reached; the reactor retries."""


class SmtpMailer:
    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        try:
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                start_tls=s.starttls,
                use_tls=s.use_tls,
                timeout=s.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotifierDeliveryError(f"SMTP {s.host}:{s.port}: {exc}") from exc
