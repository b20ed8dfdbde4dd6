"""Accounts, logins, sessions and API tokens. No HTTP here: views and the CLI call these."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.auth import security
from app.auth.models import ApiToken, LoginFailure, Role, User, UserSession
from app.db import utcnow
from app.errors import MAX_NAME, check_text, has_nul

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")
MIN_PASSWORD = 8
# Failed logins for one username within the window before each further try must wait.
FREE_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
MAX_LOCK_SECONDS = 15 * 60


class AuthError(ValueError):
    """A refusal with a message that can be shown to the user as it is."""


class Throttled(AuthError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed logins. Try again in {retry_after} seconds.")
        self.retry_after = retry_after


def validate_new_user(username: str, password: str, role: str) -> None:
    if not USERNAME_RE.match(username):
        raise AuthError("username: 2-64 letters, digits, '.', '_' or '-'")
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password: at least {MIN_PASSWORD} characters")
    if role not in Role.__members__:
        raise AuthError(f"role: one of {', '.join(Role)}")


def create_user(*, session: Session, username: str, password: str, role: str) -> User:
    validate_new_user(username, password, role)
    if get_user(session=session, username=username) is not None:
        raise AuthError(f"username: '{username}' is taken")
    user = User(username=username, password_hash=security.hash_password(password), role=role)
    session.add(user)
    session.flush()
    return user


def get_user(*, session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).where(User.is_system.is_(False)).order_by(User.id)))


def update_user(
    *, session: Session, user: User, role: str | None = None, is_active: bool | None = None
) -> User:
    if role is not None:
        if role not in Role.__members__:
            raise AuthError(f"role: one of {', '.join(Role)}")
        user.role = role
    if is_active is not None:
        user.is_active = is_active
        if not is_active:  # a deactivated user is logged out everywhere and their tokens stop
            session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.flush()
    return user


def set_password(*, session: Session, user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password: at least {MIN_PASSWORD} characters")
    user.password_hash = security.hash_password(password)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.flush()


def has_admin(*, session: Session) -> bool:
    count = session.scalar(select(func.count()).select_from(User).where(User.role == Role.admin))
    return bool(count)


# --- logins -------------------------------------------------------------------------------


def _retry_after(session: Session, username: str, now: datetime) -> int:
    recent = list(
        session.scalars(
            select(LoginFailure.at)
            .where(LoginFailure.username == username, LoginFailure.at > now - FAILURE_WINDOW)
            .order_by(LoginFailure.at)
        )
    )
    if len(recent) < FREE_FAILURES:
        return 0
    # Doubling wait after each failure past the free ones: 2 s, 4 s, 8 s ... up to 15 minutes.
    wait = min(2 ** (len(recent) - FREE_FAILURES + 1), MAX_LOCK_SECONDS)
    remaining = (recent[-1] + timedelta(seconds=wait) - now).total_seconds()
    return max(0, int(remaining + 0.999))


def authenticate(*, session: Session, username: str, password: str, ip: str | None) -> User:
    """The user, or AuthError (wrong password, unknown, deactivated) or Throttled. Failures are
    recorded; the caller must commit even when this raises, so that throttling holds."""
    if has_nul(username):  # no account has one, and PostgreSQL refuses NUL in any query
        raise AuthError("Wrong username or password.")
    now = utcnow()
    wait = _retry_after(session, username, now)
    if wait:
        raise Throttled(wait)
    user = get_user(session=session, username=username)
    ok = security.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.is_system:
        session.add(LoginFailure(username=username, ip=ip, at=now))
        session.flush()
        raise AuthError("Wrong username or password.")
    if not user.is_active:
        raise AuthError("This account is deactivated. Ask an admin to reactivate it.")
    session.execute(delete(LoginFailure).where(LoginFailure.username == username))
    user.last_login_at = now
    return user


def start_session(*, session: Session, user: User, hours: float) -> tuple[str, UserSession]:
    """A new login: the raw cookie token (returned once) and its row."""
    token = security.new_token()
    row = UserSession(
        token_hash=security.sha256(token),
        user_id=user.id,
        csrf_token=security.new_token(),
        expires_at=utcnow() + timedelta(hours=hours),
    )
    session.add(row)
    session.flush()
    return token, row


def session_for_token(*, session: Session, token: str, hours: float) -> UserSession | None:
    row = session.scalar(select(UserSession).where(UserSession.token_hash == security.sha256(token)))
    now = utcnow()
    if row is None:
        return None
    if row.expires_at <= now or not row.user.is_active:
        session.delete(row)
        return None
    # Sliding expiry, written at most once a minute.
    new_expiry = now + timedelta(hours=hours)
    if (new_expiry - row.expires_at).total_seconds() > 60:
        row.expires_at = new_expiry
    return row


def end_session(*, session: Session, user_session: UserSession) -> None:
    session.delete(user_session)
    session.flush()


# --- API tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewToken:
    token: str  # shown once, never stored
    row: ApiToken


def create_token(*, session: Session, user: User, name: str = "api") -> NewToken:
    raw = security.new_token(security.TOKEN_PREFIX)
    row = ApiToken(
        user_id=user.id,
        name=check_text(name.strip(), field="name", max_length=MAX_NAME) or "api",
        token_hash=security.sha256(raw),
        prefix=raw[:10],
    )
    session.add(row)
    session.flush()
    return NewToken(token=raw, row=row)


def user_for_api_token(*, session: Session, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == security.sha256(token)))
    if row is None or row.revoked_at is not None or not row.user.is_active:
        return None
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    return row.user


def list_tokens(*, session: Session, user: User | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id.desc())
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    return list(session.scalars(query))


def revoke_token(*, session: Session, token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    session.flush()
