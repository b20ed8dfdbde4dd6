"""`--help` that teaches: every command and group of `ranklab` shows at least one example."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner

from app.cli import cli


def _walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


def test_every_command_help_shows_an_example() -> None:
    runner = CliRunner()
    missing = []
    for path in _walk(cli):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        if "ranklab " + " ".join(path) not in result.output:
            missing.append(" ".join(path))
    assert not missing, f"--help without an example of the command itself: {missing}"
