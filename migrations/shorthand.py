"""Shorthands the migrations share, so each table reads as one line of columns.

What they make is what autogenerate wrote (the naming convention's pk_/fk_/uq_/ix_ names, JSONB
on PostgreSQL). Applied migrations depend on it: change what a call makes and an old revision
makes another schema, so extend it, never alter it.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

_TYPES = {
    "int": sa.Integer,
    "float": sa.Double,
    "bool": sa.Boolean,
    "text": sa.Text,
    "time": lambda: sa.DateTime(timezone=True),
    "json": lambda: sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
}


def column(spec: str) -> sa.Column:
    """ "name type", type one of int, float, bool, text, time, json, strN; "?" after the type:
    nullable."""
    name, kind = spec.split()[:2]
    made = sa.String(length=int(kind.strip("str?"))) if kind.startswith("str") else _TYPES[kind.rstrip("?")]()
    return sa.Column(name, made, nullable=kind.endswith("?"))


def table(name: str, columns: str, *, unique: tuple[str, ...] = ()) -> None:
    """An integer `id` primary key, then `columns`: comma-separated column specs, each maybe
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
        column("id int"),
        *(column(" ".join(s[:2])) for s in specs),
        *(
            sa.ForeignKeyConstraint(
                [column], [f"{target}.id"], name=op.f(f"fk_{name}_{column}_{target}"), ondelete=ondelete
            )
            for column, target, ondelete in fks
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        *(sa.UniqueConstraint(*cols, name=op.f(f"uq_{name}_{'_'.join(cols)}")) for cols in uniques),
    )


def indexes(table: str, *indexes: str | tuple[str, list[str]]) -> None:
    """Non-unique indexes: a column name (named ix_TABLE_COLUMN), or (name, columns)."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        for index in indexes:
            if isinstance(index, str):
                batch_op.create_index(batch_op.f(f"ix_{table}_{index}"), [index], unique=False)
            else:
                batch_op.create_index(index[0], index[1], unique=False)


def drop_indexes(table: str, *names: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        for name in names:
            batch_op.drop_index(batch_op.f(name))
