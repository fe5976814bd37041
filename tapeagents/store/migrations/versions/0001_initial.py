"""The first schema: tapes, tags, steps, LLM calls and content-addressed blobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tapes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("parent_id", sa.String(64)),
        sa.Column("fork_index", sa.Integer),
        sa.Column("prefix_length", sa.Integer, nullable=False),
        sa.Column("author", sa.String(200)),
        sa.Column("agent", sa.String(200)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("context", sa.Text),
        sa.Column("metadata", sa.Text),
    )
    op.create_index("ix_tapes_parent_id", "tapes", ["parent_id"])
    op.create_index("ix_tapes_agent", "tapes", ["agent"])
    op.create_index("ix_tapes_status", "tapes", ["status"])
    op.create_index("ix_tapes_created_at", "tapes", ["created_at"])
    op.create_table(
        "tape_tags",
        sa.Column("tape_id", sa.String(64), primary_key=True),
        sa.Column("tag", sa.String(200), primary_key=True),
    )
    op.create_index("ix_tape_tags_tag", "tape_tags", ["tag"])
    op.create_table(
        "steps",
        sa.Column("tape_id", sa.String(64), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("agent", sa.String(200)),
        sa.Column("node", sa.String(200)),
        sa.Column("llm_call_id", sa.String(64)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sqlite_with_rowid=False,  # keyed by (tape, index): no separate primary-key index
    )
    op.create_index("ix_steps_llm_call_id", "steps", ["llm_call_id"])
    op.create_table(
        "llm_calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("parameters", sa.Text),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("logprobs", sa.Text),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("cost", sa.Float),
        sa.Column("latency", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "blobs",
        sa.Column("hash", sa.String(32), primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("blobs", "llm_calls", "steps", "tape_tags", "tapes"):
        op.drop_table(table)
