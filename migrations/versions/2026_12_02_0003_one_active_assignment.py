"""one active assignment per labeler

The labeling hot path claims a task without locking the labeler's row: this partial unique
index is what keeps two tabs asking at once from getting two tasks (the second INSERT ... ON
CONFLICT DO NOTHING finds the first and gets that one back).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"

ACTIVE = sa.text("state = 'active'")


def upgrade() -> None:
    # Older versions could leave a labeler several active assignments (a stale lease beside a
    # live one); all but the newest become expired, which next() would have done on the next ask.
    op.execute(
        "UPDATE assignment SET state = 'expired', finished_at = CURRENT_TIMESTAMP "
        "WHERE state = 'active' AND id NOT IN "
        "(SELECT max(id) FROM assignment WHERE state = 'active' GROUP BY user_id)"
    )
    op.create_index(
        "uq_assignment_user_id_active",
        "assignment",
        ["user_id"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_assignment_user_id_active", table_name="assignment")
