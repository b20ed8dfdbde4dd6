"""`ranklab users ...` and `ranklab tokens ...`."""

from __future__ import annotations

import secrets
import sys

import click

from app.auth import service as auth
from app.auth.models import Role
from app.commands import group
from app.config import get_settings
from app.db import cli_sessions

users = group(
    "users",
    "Create and list accounts (the browser's /admin/users does the same, and more).",
    "ranklab users create --username alice --role admin",
    "ranklab users list",
)


@users.command("create")
@click.option("--username", required=True, help="Login name: letters, digits, '.', '_', '-'.")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in Role]),
    help="labeler: labels only; researcher: dashboard, exports, runs; admin: all.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_create(username: str, role: str, password_stdin: bool) -> None:
    """Create an account. Asks for the password unless --password-stdin is given.

    \b
    Examples:
      ranklab users create --username alice --role admin
      echo "$PASSWORD" | ranklab users create --username bob --role labeler --password-stdin
    """
    # Check the name before asking for a password, so a typo costs no typing.
    if not auth.USERNAME_RE.match(username):
        raise click.BadParameter("2-64 letters, digits, '.', '_' or '-'", param_hint="'--username'")
    with cli_sessions()() as s:
        if auth.get_user(session=s, username=username) is not None:
            raise click.ClickException(f"username '{username}' is taken (see `ranklab users list`)")
    password = _read_password(password_stdin, "Password")
    try:
        with cli_sessions().begin() as s:
            user = auth.create_user(session=s, username=username, password=password, role=role)
            click.echo(f"created {user.role} '{user.username}' (id {user.id})")
    except auth.AuthError as exc:
        raise click.ClickException(str(exc)) from exc


def _read_password(from_stdin: bool, prompt: str) -> str:
    """One line of standard input, or asked twice at a hidden prompt."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))


@users.command("set-password")
@click.option("--username", required=True, help="Whose password.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_set_password(username: str, password_stdin: bool) -> None:
    """Set a new password (a lost admin password, say). Ends the user's logged-in sessions.

    \b
    Examples:
      ranklab users set-password --username admin
      echo "$PASSWORD" | ranklab users set-password --username bob --password-stdin
    """
    with cli_sessions()() as s:
        if auth.get_user(session=s, username=username) is None:
            raise click.ClickException(f"no user '{username}' (see `ranklab users list`)")
    password = _read_password(password_stdin, "New password")
    try:
        with cli_sessions().begin() as s:
            user = auth.get_user(session=s, username=username)
            assert user is not None
            auth.set_password(session=s, user=user, password=password)
    except auth.AuthError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"password of '{username}' changed; their sessions are logged out")


@users.command("list")
def users_list() -> None:
    """Show every account with its role and status.

    \b
    Example:
      ranklab users list
    """
    with cli_sessions()() as s:
        rows = auth.list_users(session=s)
        click.echo(f"{'id':>4}  {'username':<24} {'role':<11} status")
        for u in rows:
            click.echo(
                f"{u.id:>4}  {u.username:<24} {u.role:<11} {'active' if u.is_active else 'deactivated'}"
            )


@users.command("ensure-admin")
def users_ensure_admin() -> None:
    """Create the first admin if there is none (what `make run` does).

    Takes RANKLAB_ADMIN_USERNAME and RANKLAB_ADMIN_PASSWORD when set; otherwise makes
    'admin' with a random password and prints it, once. With an admin already there it
    creates nothing.

    \b
    Examples:
      ranklab users ensure-admin
      RANKLAB_ADMIN_USERNAME=root RANKLAB_ADMIN_PASSWORD="$PW" ranklab users ensure-admin
    """
    settings = get_settings()
    with cli_sessions().begin() as s:
        if auth.has_admin(session=s):
            click.echo("an admin account exists; log in with it")
            return
        username = settings.admin_username or "admin"
        password = settings.admin_password or secrets.token_urlsafe(12)
        try:
            auth.create_user(session=s, username=username, password=password, role=Role.admin)
        except auth.AuthError as exc:
            raise click.ClickException(str(exc)) from exc
    if settings.admin_password:
        click.echo(f"created admin '{username}' with the password from RANKLAB_ADMIN_PASSWORD")
    else:
        click.echo(
            f"created admin '{username}' with password: {password}\n"
            f"(shown only this once; change it: ranklab users set-password --username {username})"
        )


tokens = group(
    "tokens",
    "API tokens for scripts: `Authorization: Bearer <token>`.",
    "ranklab tokens create --username bob --name nightly-export",
)


@tokens.command("create")
@click.option("--username", required=True, help="Whose token; it acts with their role.")
@click.option("--name", default="cli", show_default=True, help="A label to recognise it by.")
def tokens_create(username: str, name: str) -> None:
    """Create an API token and print it. It is shown only this once and stored hashed.

    \b
    Example:
      TOKEN=$(ranklab tokens create --username bob)
      curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/api/v1/me
    """
    with cli_sessions().begin() as s:
        user = auth.get_user(session=s, username=username)
        if user is None:
            raise click.ClickException(f"no user '{username}' (see `ranklab users list`)")
        click.echo(auth.create_token(session=s, user=user, name=name).token)


COMMANDS = (
    users,
    tokens,
)  # what app/cli.py adds to `ranklab`
