"""labeling indexes: the first open task in id order, and the live leases of a task

EXPLAIN (ANALYZE, BUFFERS) of `next` on 2,000 open tasks, overlap 3, 100 labelers with history:
the pick read every open task through (prompt_set_id, status), counted each one's live leases
with a BitmapAnd of two indexes, then sorted them all to take the first: 5,000 buffers, 4-9 ms
of PostgreSQL CPU per claim. With these two partial indexes it walks the open tasks in id order
and stops at the first with room (about 100 buffers), each count an index-only scan; and the
labeler's own history is read by (user_id, task_id), not by a full scan of (task_id, user_id).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"

OPEN = sa.text("status = 'open'")
ACTIVE = sa.text("state = 'active'")


def upgrade() -> None:
    # (user_id, task_id) serves all that (user_id) did, and the pick's "not had by this labeler"
    # reads only this labeler's rows, in task order, instead of all of (task_id, user_id).
    op.drop_index("ix_assignment_user_id", table_name="assignment")
    op.create_index("ix_assignment_user_id_task_id", "assignment", ["user_id", "task_id"])
    op.create_index("ix_task_open", "task", ["id"], postgresql_where=OPEN, sqlite_where=OPEN)
    op.create_index(
        "ix_assignment_task_id_active",
        "assignment",
        ["task_id", "lease_expires_at"],
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_assignment_task_id_active", table_name="assignment")
    op.drop_index("ix_task_open", table_name="task")
    op.drop_index("ix_assignment_user_id_task_id", table_name="assignment")
    op.create_index("ix_assignment_user_id", "assignment", ["user_id"])
