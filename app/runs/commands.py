import click


def register(cli: click.Group) -> None:
    """No commands yet."""
