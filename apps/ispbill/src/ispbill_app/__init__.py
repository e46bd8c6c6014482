"""The `ispbill` command: the all-in-one runner, the distributed components, and the ops CLI."""
