"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-20 22:20:00.946907
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Local shorthands, so each table reads as one line of columns; what they make is what
# autogenerate wrote (the naming convention's pk_/fk_/uq_/ix_ names, JSONB on PostgreSQL).
_TYPES = {
    "int": sa.Integer,
    "float": sa.Double,
    "bool": sa.Boolean,
    "text": sa.Text,
    "time": lambda: sa.DateTime(timezone=True),
    "json": lambda: sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
}


def _column(spec: str) -> sa.Column:
    """ "name type", type one of int, float, bool, text, time, json, strN; "?" after the type:
    nullable."""
    name, kind = spec.split()[:2]
    made = sa.String(length=int(kind.strip("str?"))) if kind.startswith("str") else _TYPES[kind.rstrip("?")]()
    return sa.Column(name, made, nullable=kind.endswith("?"))


def _table(name: str, columns: str, *, unique: tuple[str, ...] = ()) -> None:
    """An integer `id` primary key, then `columns`: comma-separated _column specs, each maybe
    followed by "unique" (its own constraint) or "-> table" (a foreign key to table.id, on
    delete CASCADE, or SET NULL when "null" follows). The constraints stand as autogenerate
    wrote them: foreign keys by column name, the primary key, the unique ones (then `unique`'s
    "col col" ones), each named by the naming convention."""
    specs = [spec.split() for spec in columns.split(", ")]
    fks = sorted(
        (s[0], s[s.index("->") + 1], "SET NULL" if s[-1] == "null" else "CASCADE") for s in specs if "->" in s
    )
    uniques = [[s[0]] for s in specs if "unique" in s] + [cols.split() for cols in unique]
    op.create_table(
        name,
        _column("id int"),
        *(_column(" ".join(s[:2])) for s in specs),
        *(
            sa.ForeignKeyConstraint(
                [column], [f"{target}.id"], name=op.f(f"fk_{name}_{column}_{target}"), ondelete=ondelete
            )
            for column, target, ondelete in fks
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        *(sa.UniqueConstraint(*cols, name=op.f(f"uq_{name}_{'_'.join(cols)}")) for cols in uniques),
    )


def _indexes(table: str, *indexes: str | tuple[str, list[str]]) -> None:
    """Non-unique indexes: a column name (named ix_TABLE_COLUMN), or (name, columns)."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        for index in indexes:
            if isinstance(index, str):
                batch_op.create_index(batch_op.f(f"ix_{table}_{index}"), [index], unique=False)
            else:
                batch_op.create_index(index[0], index[1], unique=False)


def _drop_indexes(table: str, *names: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        for name in names:
            batch_op.drop_index(batch_op.f(name))


def upgrade() -> None:
    _table("login_failure", "username str64, ip str64?, at time")
    _indexes("login_failure", "at", "username")
    _table(
        "user",
        "username str64 unique, password_hash str255, role str16, is_active bool, is_system bool, "
        "created_at time, last_login_at time?",
    )
    _table(
        "api_token",
        "user_id int -> user, name str100, token_hash str64 unique, prefix str16, created_at time, "
        "last_used_at time?, revoked_at time?",
    )
    _indexes("api_token", "user_id")
    _table("guideline", "version int unique, body text, created_by_id int? -> user null, created_at time")
    _table(
        "job",
        "kind str32, params json, status str16, progress float, message str500, after_id int? -> job null, "
        "attempts int, max_attempts int, cancel_requested bool, worker_id str128?, heartbeat_at time?, "
        "result json?, error text?, log text, created_by_id int? -> user null, created_at time, "
        "started_at time?, finished_at time?",
    )
    _indexes("job", ("ix_job_status_created_at", ["status", "created_at"]))
    _table(
        "user_session",
        "token_hash str64 unique, user_id int -> user, csrf_token str64, created_at time, expires_at time",
    )
    _indexes("user_session", "user_id")
    _table("job_metric", "job_id int -> job, step int, name str64, value float, created_at time")
    _indexes("job_metric", ("ix_job_metric_job_id_name_step", ["job_id", "name", "step"]))
    _table(
        "model_version",
        "kind str16, name str200, source str500, path str1000?, parent_id int? -> model_version null, "
        "job_id int? -> job null, config json, metrics json, is_active bool, is_demo bool, "
        "created_at time",
    )
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.create_index(
            "uq_model_version_active_kind",
            ["kind"],
            unique=True,
            postgresql_where=sa.text("is_active"),
            sqlite_where=sa.text("is_active"),
        )
    _table(
        "prompt_set",
        "name str200 unique, k int, overlap int, sampling json, "
        "policy_version_id int? -> model_version null, compare_version_id int? -> model_version null, "
        "flags json, status str16, source_filename str500?, report json, created_by_id int? -> user null, "
        "created_at time",
    )
    _table(
        "prompt",
        "prompt_set_id int -> prompt_set, text text, text_hash str64, meta json, source_line int?, "
        "created_at time",
        unique=("prompt_set_id text_hash",),
    )
    _table(
        "task",
        "prompt_id int -> prompt, prompt_set_id int -> prompt_set, sampling_job_id int? -> job null, "
        "status str16, label_count int, created_at time",
        unique=("prompt_id sampling_job_id",),
    )
    _indexes("task", "prompt_id", ("ix_task_prompt_set_id_status", ["prompt_set_id", "status"]))
    _table(
        "assignment",
        "task_id int -> task, user_id int -> user, state str16, display_order json, lease_expires_at time, "
        "created_at time, finished_at time?",
        unique=("task_id user_id",),
    )
    _indexes("assignment", "user_id")
    _table(
        "completion",
        "task_id int -> task, model_version_id int? -> model_version null, text text, params json, "
        "seed int?, finish_reason str16?, token_count int?, is_duplicate bool, created_at time",
    )
    _indexes("completion", "task_id")
    _table(
        "annotation",
        "assignment_id int -> assignment unique, task_id int -> task, user_id int -> user, "
        "guideline_version int?, skip_reason str32?, notes text, time_spent_ms int?, "
        "inconsistency_confirmed bool, created_at time",
    )
    _indexes("annotation", "created_at", "task_id", "user_id")
    _table(
        "annotation_item",
        "annotation_id int -> annotation, completion_id int -> completion, rank int, rating int?, "
        "flags json, position int?",
        unique=("annotation_id completion_id",),
    )


def downgrade() -> None:
    op.drop_table("annotation_item")
    _drop_indexes("annotation", "ix_annotation_user_id", "ix_annotation_task_id", "ix_annotation_created_at")
    op.drop_table("annotation")
    _drop_indexes("completion", "ix_completion_task_id")
    op.drop_table("completion")
    _drop_indexes("assignment", "ix_assignment_user_id")
    op.drop_table("assignment")
    _drop_indexes("task", "ix_task_prompt_set_id_status", "ix_task_prompt_id")
    op.drop_table("task")
    op.drop_table("prompt")
    op.drop_table("prompt_set")
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_model_version_active_kind",
            postgresql_where=sa.text("is_active"),
            sqlite_where=sa.text("is_active"),
        )

    op.drop_table("model_version")
    _drop_indexes("job_metric", "ix_job_metric_job_id_name_step")
    op.drop_table("job_metric")
    _drop_indexes("user_session", "ix_user_session_user_id")
    op.drop_table("user_session")
    _drop_indexes("job", "ix_job_status_created_at")
    op.drop_table("job")
    op.drop_table("guideline")
    _drop_indexes("api_token", "ix_api_token_user_id")
    op.drop_table("api_token")
    op.drop_table("user")
    _drop_indexes("login_failure", "ix_login_failure_username", "ix_login_failure_at")
    op.drop_table("login_failure")
