"""`ispbill demo`: load the demo ISP into the running server."""

from __future__ import annotations

import json

import typer

from ispbill_app.commands.state import client


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(ctx: typer.Context) -> None:
        """Load the demo ISP into the running server."""
        from ispbill_app.demo import load_demo

        print(json.dumps({"present": load_demo(client(ctx))}))
