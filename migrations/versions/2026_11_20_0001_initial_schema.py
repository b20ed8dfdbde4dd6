"""initial schema"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.shorthand import drop_indexes, indexes, table

revision: str = "0001"
down_revision: str | Sequence[str] | None = None


def upgrade() -> None:
    table("login_failure", "username str64, ip str64?, at time")
    indexes("login_failure", "at", "username")
    table(
        "user",
        "username str64 unique, password_hash str255, role str16, is_active bool, is_system bool, "
        "created_at time, last_login_at time?",
    )
    table(
        "api_token",
        "user_id int -> user, name str100, token_hash str64 unique, prefix str16, created_at time, "
        "last_used_at time?, revoked_at time?",
    )
    indexes("api_token", "user_id")
    table("guideline", "version int unique, body text, created_by_id int? -> user null, created_at time")
    table(
        "job",
        "kind str32, params json, status str16, progress float, message str500, after_id int? -> job null, "
        "attempts int, max_attempts int, cancel_requested bool, worker_id str128?, heartbeat_at time?, "
        "result json?, error text?, log text, created_by_id int? -> user null, created_at time, "
        "started_at time?, finished_at time?",
    )
    indexes("job", ("ix_job_status_created_at", ["status", "created_at"]))
    table(
        "user_session",
        "token_hash str64 unique, user_id int -> user, csrf_token str64, created_at time, expires_at time",
    )
    indexes("user_session", "user_id")
    table("job_metric", "job_id int -> job, step int, name str64, value float, created_at time")
    indexes("job_metric", ("ix_job_metric_job_id_name_step", ["job_id", "name", "step"]))
    table(
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
    table(
        "prompt_set",
        "name str200 unique, k int, overlap int, sampling json, "
        "policy_version_id int? -> model_version null, compare_version_id int? -> model_version null, "
        "flags json, status str16, source_filename str500?, report json, created_by_id int? -> user null, "
        "created_at time",
    )
    table(
        "prompt",
        "prompt_set_id int -> prompt_set, text text, text_hash str64, meta json, source_line int?, "
        "created_at time",
        unique=("prompt_set_id text_hash",),
    )
    table(
        "task",
        "prompt_id int -> prompt, prompt_set_id int -> prompt_set, sampling_job_id int? -> job null, "
        "status str16, label_count int, created_at time",
        unique=("prompt_id sampling_job_id",),
    )
    indexes("task", "prompt_id", ("ix_task_prompt_set_id_status", ["prompt_set_id", "status"]))
    table(
        "assignment",
        "task_id int -> task, user_id int -> user, state str16, display_order json, lease_expires_at time, "
        "created_at time, finished_at time?",
        unique=("task_id user_id",),
    )
    indexes("assignment", "user_id")
    table(
        "completion",
        "task_id int -> task, model_version_id int? -> model_version null, text text, params json, "
        "seed int?, finish_reason str16?, token_count int?, is_duplicate bool, created_at time",
    )
    indexes("completion", "task_id")
    table(
        "annotation",
        "assignment_id int -> assignment unique, task_id int -> task, user_id int -> user, "
        "guideline_version int?, skip_reason str32?, notes text, time_spent_ms int?, "
        "inconsistency_confirmed bool, created_at time",
    )
    indexes("annotation", "created_at", "task_id", "user_id")
    table(
        "annotation_item",
        "annotation_id int -> annotation, completion_id int -> completion, rank int, rating int?, "
        "flags json, position int?",
        unique=("annotation_id completion_id",),
    )


def downgrade() -> None:
    op.drop_table("annotation_item")
    drop_indexes("annotation", "ix_annotation_user_id", "ix_annotation_task_id", "ix_annotation_created_at")
    op.drop_table("annotation")
    drop_indexes("completion", "ix_completion_task_id")
    op.drop_table("completion")
    drop_indexes("assignment", "ix_assignment_user_id")
    op.drop_table("assignment")
    drop_indexes("task", "ix_task_prompt_set_id_status", "ix_task_prompt_id")
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
    drop_indexes("job_metric", "ix_job_metric_job_id_name_step")
    op.drop_table("job_metric")
    drop_indexes("user_session", "ix_user_session_user_id")
    op.drop_table("user_session")
    drop_indexes("job", "ix_job_status_created_at")
    op.drop_table("job")
    op.drop_table("guideline")
    drop_indexes("api_token", "ix_api_token_user_id")
    op.drop_table("api_token")
    op.drop_table("user")
    drop_indexes("login_failure", "ix_login_failure_username", "ix_login_failure_at")
    op.drop_table("login_failure")
