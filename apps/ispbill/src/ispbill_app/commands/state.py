"""What every command shares: the server given with `--server`, and one API client for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from ispbill_app.client import ApiClient


@dataclass
class CliState:
    server: str | None = None
    verbose: bool = False
    _client: ApiClient | None = field(default=None, repr=False)

    def client(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(self.server)
        return self._client

    @property
    def server_url(self) -> str:
        return self._client.server if self._client is not None else ApiClient.resolve(self.server)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def state(ctx: typer.Context) -> CliState:
    found = ctx.find_object(CliState)
    assert found is not None, "ispbill_app.cli.main passes a CliState"
    return found


def client(ctx: typer.Context) -> ApiClient:
    return state(ctx).client()
