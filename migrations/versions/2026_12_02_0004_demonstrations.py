"""demonstrations: prompt sets get a kind, labelers write replies and propose prompts

prompt_set.kind ("ranking" for every existing set), allow_proposals and train_on (which
demonstrations count for SFT); demonstration (a written reply, one per annotation of a
demonstration task) and prompt_proposal (prompts labelers wrote, in the review queue).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.shorthand import drop_indexes, indexes, table

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"


def upgrade() -> None:
    table(
        "prompt_proposal",
        "user_id int -> user, prompt_set_id int? -> prompt_set null, messages json, category str32, "
        "status str16, reason text?, prompt_id int? -> prompt null, reviewed_by_id int? -> user null, "
        "reviewed_at time?, created_at time",
    )
    indexes("prompt_proposal", "status", "user_id")
    table(
        "demonstration",
        "annotation_id int -> annotation unique, reply text, draft_used bool, "
        "draft_completion_id int? -> completion null, edit_distance int?, token_count int?, "
        "review_status str16, review_reason text?, edited_reply text?, reviewed_by_id int? -> user null, "
        "reviewed_at time?",
    )
    indexes("demonstration", "review_status")

    with op.batch_alter_table("prompt_set", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="ranking", nullable=False))
        batch_op.add_column(
            sa.Column("allow_proposals", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("train_on", sa.String(length=16), server_default="not_rejected", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("prompt_set", schema=None) as batch_op:
        batch_op.drop_column("train_on")
        batch_op.drop_column("allow_proposals")
        batch_op.drop_column("kind")

    drop_indexes("demonstration", "ix_demonstration_review_status")
    op.drop_table("demonstration")
    drop_indexes("prompt_proposal", "ix_prompt_proposal_user_id", "ix_prompt_proposal_status")
    op.drop_table("prompt_proposal")
