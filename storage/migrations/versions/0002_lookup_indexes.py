"""Indexes for the lookups the bot makes most: images by Discord message (buttons on a
posted image), and active jobs per user and per guild (queue limits).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_images_message_id", "images", ["message_id"])
    op.create_index("ix_jobs_owner_status", "jobs", ["owner_id", "status"])
    op.create_index("ix_jobs_guild_status", "jobs", ["guild_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_guild_status", table_name="jobs")
    op.drop_index("ix_jobs_owner_status", table_name="jobs")
    op.drop_index("ix_images_message_id", table_name="images")
