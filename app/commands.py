"""What the domains' `commands.py` share (app/cli.py imports them): a command group whose help
is one line of what it is for and the examples shown as written."""

from __future__ import annotations

from pathlib import Path

import click


def group(name: str, about: str, *examples: str) -> click.Group:
    """A click group `ranklab NAME`; `--help` prints `about`, then "Example(s):" and each example."""
    heading = "Example:" if len(examples) == 1 else "Examples:"
    shown = "\n".join(f"  {e}" for e in examples)
    return click.Group(name=name, help=f"{about}\n\n\b\n{heading}\n{shown}")


# The file an import command reads, as a Path: it must exist and be a file, or click says so.
input_file = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
