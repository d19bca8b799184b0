"""Initial schema: users, guilds, jobs, images, checkpoints, embeddings, hash cache, settings,
prompt history (with an FTS5 index when this SQLite has FTS5).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Timestamps are REAL seconds since the epoch, UTC (storage.models.UTCTimestamp converts them).

# A finished job stays finished: the repository only updates rows whose status it expects,
# and this trigger stops any other code path (or a hand-written UPDATE) from reviving one.
TERMINAL_STATUS_TRIGGER = """
CREATE TRIGGER jobs_terminal_status_is_final
BEFORE UPDATE OF status ON jobs
WHEN OLD.status IN ('done', 'failed', 'canceled') AND NEW.status IS NOT OLD.status
BEGIN
    SELECT RAISE(ABORT, 'job status is final');
END
"""

# External-content FTS5 table: the text lives once, in prompt_history; triggers keep the index
# in step. https://www.sqlite.org/fts5.html#external_content_tables
FTS_STATEMENTS = (
    """
    CREATE VIRTUAL TABLE prompt_history_fts USING fts5(
        prompt, negative_prompt,
        content='prompt_history', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER prompt_history_fts_insert AFTER INSERT ON prompt_history BEGIN
        INSERT INTO prompt_history_fts (rowid, prompt, negative_prompt)
        VALUES (new.id, new.prompt, new.negative_prompt);
    END
    """,
    """
    CREATE TRIGGER prompt_history_fts_delete AFTER DELETE ON prompt_history BEGIN
        INSERT INTO prompt_history_fts (prompt_history_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt);
    END
    """,
    """
    CREATE TRIGGER prompt_history_fts_update AFTER UPDATE ON prompt_history BEGIN
        INSERT INTO prompt_history_fts (prompt_history_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt);
        INSERT INTO prompt_history_fts (rowid, prompt, negative_prompt)
        VALUES (new.id, new.prompt, new.negative_prompt);
    END
    """,
)


def fts5_available(connection: sa.Connection) -> bool:
    """Some SQLite builds lack FTS5; history search then falls back to LIKE."""
    try:
        connection.exec_driver_sql("CREATE VIRTUAL TABLE temp.easel_fts5_probe USING fts5(x)")
    except sa.exc.OperationalError:
        return False
    connection.exec_driver_sql("DROP TABLE temp.easel_fts5_probe")
    return True


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "guilds",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guilds")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("application_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_token", sa.Text(), nullable=True),
        sa.Column("interaction_created_at", sa.Float(), nullable=True),
        sa.Column("response_message_id", sa.BigInteger(), nullable=True),
        sa.Column("frontend", sa.Text(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=False),
        sa.Column("batch_key", sa.Text(), nullable=False),
        sa.Column("cost", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("canceled_by", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'canceled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint("frontend IN ('discord', 'cli')", name=op.f("ck_jobs_frontend")),
        sa.CheckConstraint("cost >= 0", name=op.f("ck_jobs_cost")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.execute(TERMINAL_STATUS_TRIGGER)

    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("image_index", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("infotext", sa.Text(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_images_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("job_id", "image_index", name=op.f("uq_images_job_id_image_index")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=True),
        sa.Column("short_hash", sa.Text(), nullable=True),
        sa.Column("format", sa.Text(), nullable=False),
        sa.Column("architecture", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("mtime", sa.Float(), nullable=True),
        sa.Column("vae_path", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "format IN ('diffusers', 'safetensors', 'ckpt', 'hub')",
            name=op.f("ck_checkpoints_format"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("name", name=op.f("uq_checkpoints_name")),
    )
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=True),
        sa.Column("vectors", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('loaded', 'skipped')", name=op.f("ck_embeddings_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embeddings")),
        sa.UniqueConstraint("trigger", name=op.f("uq_embeddings_trigger")),
    )
    op.create_table(
        "file_hashes",
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_file_hashes")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    op.create_table(
        "prompt_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_prompt_history_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_history")),
    )
    op.create_index("ix_prompt_history_user_created", "prompt_history", ["user_id", "created_at"])
    if fts5_available(op.get_bind()):
        for statement in FTS_STATEMENTS:
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS prompt_history_fts_update")
    op.execute("DROP TRIGGER IF EXISTS prompt_history_fts_delete")
    op.execute("DROP TRIGGER IF EXISTS prompt_history_fts_insert")
    op.execute("DROP TABLE IF EXISTS prompt_history_fts")
    op.drop_index("ix_prompt_history_user_created", table_name="prompt_history")
    op.drop_table("prompt_history")
    op.drop_table("settings")
    op.drop_table("file_hashes")
    op.drop_table("embeddings")
    op.drop_table("checkpoints")
    op.drop_table("images")
    op.execute("DROP TRIGGER IF EXISTS jobs_terminal_status_is_final")
    op.drop_index("ix_jobs_status_id", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("guilds")
    op.drop_table("users")
