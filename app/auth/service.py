"""Accounts, logins, sessions and API tokens. No HTTP here: views and the CLI call these."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, inspect, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.auth import security
from app.auth.models import ApiToken, LoginFailure, Role, User, UserSession
from app.db import attach, utcnow
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
    forget_cached_logins()
    return user


def set_password(*, session: Session, user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password: at least {MIN_PASSWORD} characters")
    user.password_hash = security.hash_password(password)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.flush()
    forget_cached_logins()


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


# --- the short login cache -----------------------------------------------------------------
# Every request of a labeler names its session or token; looking it up is a statement that a few
# seconds of memory answer as well (the labeling path is counted in statements). Entries hold
# column values, never live objects, and each hit builds fresh instances in the caller's session,
# so no two requests share one. Logout, revocation and user changes clear this process's cache
# at once; another worker process notices within `cache_seconds` (RANKLAB_AUTH_CACHE_SECONDS).

_cache: dict[str, tuple[float, dict[str, Any], dict[str, Any] | None]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 50_000


def forget_cached_logins() -> None:
    with _cache_lock:
        _cache.clear()


def _columns(obj: object) -> dict[str, Any]:
    return {a.key: getattr(obj, a.key) for a in inspect(type(obj)).column_attrs}


def _remember(key: str, seconds: float, user: User, row: UserSession | None) -> None:
    if seconds <= 0:
        return
    entry = (time.monotonic() + seconds, _columns(user), _columns(row) if row is not None else None)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = entry


def _recall(key: str) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    with _cache_lock:
        entry = _cache.get(key)
    if entry is None or entry[0] < time.monotonic():
        return None
    return entry[1], entry[2]


def cached_session(*, session: Session, token: str) -> UserSession | None:
    """The login of a session cookie from this process's short cache, without a query (so a
    caller on the event loop may ask); None when it is not cached."""
    hit = _recall("s" + security.sha256(token))
    if hit is None:
        return None
    user_cols, row_cols = hit
    if row_cols is None or row_cols["expires_at"] <= utcnow() or not user_cols["is_active"]:
        return None
    revived = attach(session, UserSession, row_cols)
    # The user at hand, not a lazy load (a statement) when the request reads row.user.
    set_committed_value(revived, "user", attach(session, User, user_cols))
    return revived


def session_for_token(
    *, session: Session, token: str, hours: float, cache_seconds: float = 0.0
) -> UserSession | None:
    if (cached := cached_session(session=session, token=token)) is not None:
        return cached
    key = security.sha256(token)
    now = utcnow()
    row = session.scalar(select(UserSession).where(UserSession.token_hash == key))
    if row is None:
        return None
    if row.expires_at <= now or not row.user.is_active:
        session.delete(row)
        return None
    # Sliding expiry, written at most once a minute.
    new_expiry = now + timedelta(hours=hours)
    if (new_expiry - row.expires_at).total_seconds() > 60:
        row.expires_at = new_expiry
    _remember("s" + key, cache_seconds, row.user, row)
    return row


def end_session(*, session: Session, user_session: UserSession) -> None:
    session.delete(user_session)
    session.flush()
    forget_cached_logins()


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


def cached_api_user(*, session: Session, token: str) -> User | None:
    """An API token's user from this process's short cache, without a query; None when it is
    not cached."""
    if (hit := _recall("t" + security.sha256(token))) is not None and hit[0]["is_active"]:
        return attach(session, User, hit[0])
    return None


def user_for_api_token(*, session: Session, token: str, cache_seconds: float = 0.0) -> User | None:
    if (cached := cached_api_user(session=session, token=token)) is not None:
        return cached
    key = security.sha256(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == key))
    if row is None or row.revoked_at is not None or not row.user.is_active:
        return None
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        row.last_used_at = now
    _remember("t" + key, cache_seconds, row.user, None)
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
    forget_cached_logins()
