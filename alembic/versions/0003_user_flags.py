"""users.is_admin (may sign in at /admin) and users.is_active (tokens are honoured)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (a server default fills the existing rows), never
    # a batch copy: on SQLite that would drop and recreate `users`, and with foreign keys on
    # the drop would cascade to every post.
    op.add_column(
        "users", sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column(
        "users", sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False)
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN directly (SQLite 3.35+), for the same reason.
    op.execute("ALTER TABLE users DROP COLUMN is_active")
    op.execute("ALTER TABLE users DROP COLUMN is_admin")
