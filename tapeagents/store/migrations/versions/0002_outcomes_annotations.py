"""Task, outcome and reward columns on tapes; annotations of steps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tapes") as batch:
        batch.add_column(sa.Column("task_id", sa.String(200)))
        batch.add_column(sa.Column("outcome", sa.String(32)))
        batch.add_column(sa.Column("reward", sa.Float))
    op.create_index("ix_tapes_task_id", "tapes", ["task_id"])
    op.create_index("ix_tapes_outcome", "tapes", ["outcome"])
    op.create_table(
        "annotations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tape_id", sa.String(64), nullable=False),
        sa.Column("step_index", sa.Integer),
        sa.Column("rating", sa.Float),
        sa.Column("label", sa.String(200)),
        sa.Column("comment", sa.Text),
        sa.Column("author", sa.String(200)),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_annotations_tape_id", "annotations", ["tape_id"])
    op.create_index("ix_annotations_label", "annotations", ["label"])


def downgrade() -> None:
    op.drop_table("annotations")
    op.drop_index("ix_tapes_outcome", "tapes")
    op.drop_index("ix_tapes_task_id", "tapes")
    with op.batch_alter_table("tapes") as batch:
        for column in ("reward", "outcome", "task_id"):
            batch.drop_column(column)
