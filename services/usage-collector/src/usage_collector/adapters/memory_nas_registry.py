"""A NAS registry held in memory: for tests, and the index the ledger-backed registry keeps."""

from __future__ import annotations

from usage_collector.application.nas_registry import NasRegistry, RegisteredNas


class InMemoryNasRegistry(NasRegistry):
    def __init__(self, nases: list[RegisteredNas] | None = None) -> None:
        self._by_ip: dict[str, RegisteredNas] = {}
        self._by_id: dict[str, RegisteredNas] = {}
        for nas in nases or []:
            self.register(nas)

    def register(self, nas: RegisteredNas) -> None:
        """Add a NAS, or replace it (new address, secret or flag) when its id is known."""
        previous = self._by_id.get(nas.nas_id)
        if previous is not None and self._by_ip.get(previous.ip_address) is previous:
            del self._by_ip[previous.ip_address]
        self._by_id[nas.nas_id] = nas
        self._by_ip[nas.ip_address] = nas

    def remove(self, nas_id: str) -> None:
        """Forget a NAS: its packets are dropped as from an unknown NAS from now on."""
        previous = self._by_id.pop(nas_id, None)
        if previous is not None and self._by_ip.get(previous.ip_address) is previous:
            del self._by_ip[previous.ip_address]

    def lookup(self, source_ip: str) -> RegisteredNas | None:
        return self._by_ip.get(source_ip)

    def lookup_id(self, nas_id: str) -> RegisteredNas | None:
        return self._by_id.get(nas_id)

    def __len__(self) -> int:
        return len(self._by_id)
