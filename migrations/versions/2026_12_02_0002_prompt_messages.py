"""prompts are conversations: prompt.messages, and text_hash over the normalised conversation

Every existing prompt becomes the one-user-message conversation of its text, with nothing lost:
`text` stays as it was. Downgrade drops `messages` and hashes `text` again as before; `text`
of a multi-turn prompt is its readable form (app.chat.as_text), so no turn is lost either.
"""

import hashlib
import json
import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
prompt = sa.table(
    "prompt",
    sa.column("id", sa.Integer),
    sa.column("prompt_set_id", sa.Integer),
    sa.column("text", sa.Text),
    sa.column("text_hash", sa.String),
    sa.column("messages", JSONType),
)


def _one_turn(text: str) -> list[dict[str, str]]:
    # A frozen copy of app.chat's normalisation and hash as of this revision: a migration must
    # not change meaning when the app's code does.
    content = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    return [{"role": "user", "content": content}]


def _hash(messages: list[dict[str, str]]) -> str:
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("prompt") as batch_op:
        batch_op.add_column(sa.Column("messages", JSONType, nullable=True))
    conn = op.get_bind()
    taken: set[tuple[int, str]] = set()
    for row in conn.execute(
        sa.select(prompt.c.id, prompt.c.prompt_set_id, prompt.c.text).order_by(prompt.c.id)
    ):
        messages = _one_turn(row.text)
        digest = _hash(messages)
        # Two old prompts that differ only in what normalisation removes keep apart (the later
        # one keeps a hash of its raw text), so the unique (set, hash) constraint holds.
        if (row.prompt_set_id, digest) in taken:
            digest = hashlib.sha256(row.text.encode("utf-8")).hexdigest()
        taken.add((row.prompt_set_id, digest))
        conn.execute(
            sa.update(prompt).where(prompt.c.id == row.id).values(messages=messages, text_hash=digest)
        )
    with op.batch_alter_table("prompt") as batch_op:
        batch_op.alter_column("messages", existing_type=JSONType, nullable=False)


def downgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(prompt.c.id, prompt.c.text)):
        digest = hashlib.sha256(row.text.encode("utf-8")).hexdigest()
        conn.execute(sa.update(prompt).where(prompt.c.id == row.id).values(text_hash=digest))
    with op.batch_alter_table("prompt") as batch_op:
        batch_op.drop_column("messages")
