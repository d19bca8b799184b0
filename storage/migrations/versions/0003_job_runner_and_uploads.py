"""Which process runs each job (`jobs.runner`: "bot" or a CLI process id), and the `uploads`
table of members' files (init images and masks) with their sizes and last use.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ALTER TABLE ... ADD COLUMN, not a table rebuild: a rebuild would drop the jobs trigger.
    # Existing jobs were all run by the bot.
    op.add_column("jobs", sa.Column("runner", sa.Text(), server_default="bot", nullable=False))
    op.create_index("ix_jobs_status_runner", "jobs", ["status", "runner"])
    op.create_table(
        "uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=False),
        sa.CheckConstraint("bytes >= 0", name=op.f("ck_uploads_bytes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
        sa.UniqueConstraint("path", name=op.f("uq_uploads_path")),
    )
    op.create_index("ix_uploads_owner_last_used", "uploads", ["owner_id", "last_used_at"])
    op.create_index("ix_uploads_last_used", "uploads", ["last_used_at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_last_used", table_name="uploads")
    op.drop_index("ix_uploads_owner_last_used", table_name="uploads")
    op.drop_table("uploads")
    op.drop_index("ix_jobs_status_runner", table_name="jobs")
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), again so that the trigger stays.
    op.drop_column("jobs", "runner")
