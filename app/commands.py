"""What the domains' `commands.py` share (app/cli.py imports them): a command group whose help
is one line of what it is for and the examples shown as written."""

from __future__ import annotations

import click


def group(name: str, about: str, *examples: str) -> click.Group:
    """A click group `ranklab NAME`; `--help` prints `about`, then "Example(s):" and each example."""
    heading = "Example:" if len(examples) == 1 else "Examples:"
    shown = "\n".join(f"  {e}" for e in examples)
    return click.Group(name=name, help=f"{about}\n\n\b\n{heading}\n{shown}")
