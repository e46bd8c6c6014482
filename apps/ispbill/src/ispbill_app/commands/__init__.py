"""The `ispbill` command groups, one module each; ispbill_app.cli puts them together."""
