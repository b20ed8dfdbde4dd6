"""demonstrations: prompt sets get a kind, labelers write replies and propose prompts

prompt_set.kind ("ranking" for every existing set), allow_proposals and train_on (which
demonstrations count for SFT); demonstration (a written reply, one per annotation of a
demonstration task) and prompt_proposal (prompts labelers wrote, in the review queue).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prompt_proposal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("prompt_set_id", sa.Integer(), nullable=True),
        sa.Column(
            "messages",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("prompt_id", sa.Integer(), nullable=True),
        sa.Column("reviewed_by_id", sa.Integer(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            ["prompt.id"],
            name=op.f("fk_prompt_proposal_prompt_id_prompt"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_set_id"],
            ["prompt_set.id"],
            name=op.f("fk_prompt_proposal_prompt_set_id_prompt_set"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["reviewed_by_id"],
            ["user.id"],
            name=op.f("fk_prompt_proposal_reviewed_by_id_user"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name=op.f("fk_prompt_proposal_user_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_proposal")),
    )
    with op.batch_alter_table("prompt_proposal", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prompt_proposal_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_prompt_proposal_user_id"), ["user_id"], unique=False)

    op.create_table(
        "demonstration",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("draft_used", sa.Boolean(), nullable=False),
        sa.Column("draft_completion_id", sa.Integer(), nullable=True),
        sa.Column("edit_distance", sa.Integer(), nullable=True),
        sa.Column("token_count", sa.Integer(), nullable=True),
        sa.Column("review_status", sa.String(length=16), nullable=False),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("edited_reply", sa.Text(), nullable=True),
        sa.Column("reviewed_by_id", sa.Integer(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["annotation_id"],
            ["annotation.id"],
            name=op.f("fk_demonstration_annotation_id_annotation"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["draft_completion_id"],
            ["completion.id"],
            name=op.f("fk_demonstration_draft_completion_id_completion"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["reviewed_by_id"],
            ["user.id"],
            name=op.f("fk_demonstration_reviewed_by_id_user"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_demonstration")),
        sa.UniqueConstraint("annotation_id", name=op.f("uq_demonstration_annotation_id")),
    )
    with op.batch_alter_table("demonstration", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_demonstration_review_status"), ["review_status"], unique=False)

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

    with op.batch_alter_table("demonstration", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_demonstration_review_status"))

    op.drop_table("demonstration")
    with op.batch_alter_table("prompt_proposal", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prompt_proposal_user_id"))
        batch_op.drop_index(batch_op.f("ix_prompt_proposal_status"))

    op.drop_table("prompt_proposal")
