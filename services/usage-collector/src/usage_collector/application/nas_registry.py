"""The NAS registry port: which network access servers may send accounting, and their secrets."""

from __future__ import annotations

import abc
import ipaddress
from dataclasses import dataclass

from ispbill_core.contracts.accounts import AnyNasRegistered, NasRegisteredV1, nas_secret_context
from ispbill_core.sealing import Keyring


@dataclass(frozen=True, slots=True)
class RegisteredNas:
    nas_id: str
    ip_address: str
    secret: bytes
    require_message_authenticator: bool = False

    @classmethod
    def from_event(cls, event: AnyNasRegistered, keyring: Keyring) -> RegisteredNas:
        """The NAS with its secret opened; SealingError when the keyring cannot open it."""
        if isinstance(event, NasRegisteredV1):  # registered before sealing: in plain text
            secret = event.secret.encode("utf-8")
        else:
            secret = keyring.open(event.secret_sealed, nas_secret_context(event.nas_id))
        return cls(
            nas_id=event.nas_id,
            ip_address=normalise_ip(event.ip_address),
            secret=secret,
            require_message_authenticator=event.require_message_authenticator,
        )


def normalise_ip(address: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 (a dual-stack socket) becomes plain IPv4."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class NasRegistry(abc.ABC):
    """Looked up once per datagram, on the receive path, so lookups are synchronous and local."""

    @abc.abstractmethod
    def lookup(self, source_ip: str) -> RegisteredNas | None:
        """The NAS sending from `source_ip` (already normalised), or None when unknown."""

    @abc.abstractmethod
    def lookup_id(self, nas_id: str) -> RegisteredNas | None:
        """The NAS registered under `nas_id` (its latest details), or None when unknown."""
