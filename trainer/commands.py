"""Training commands (`ranklab train ...`, `ranklab reward ...`, `ranklab policies ...`).

Imported by the CLI at start-up: keep torch imports inside the commands."""

import click


def register(cli: click.Group) -> None:
    """No commands yet."""
