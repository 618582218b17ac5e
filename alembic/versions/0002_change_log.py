"""change log (outbox): post_changes written by triggers, change_tags, change_horizons

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Any key will do as long as nothing else in the database uses it: held by every transaction
# that records a change, from its first change until it commits, so offsets follow commit
# order (a reader that has seen offset N has seen everything committed before it).
ADVISORY_KEY = 0x6C697665  # "live"

# The service announces each write with the setting livepost.tags ("tags:" and the hashtags
# of old and new body, app/changelog/record.py): the trigger files the change under them at
# once, and knows the service publishes it right after commit. A write without it (psql, a
# script) is external: the relay derives its hashtags and publishes it at once.
#
# BEFORE triggers, so the statement's RETURNING can read the change's offset (currval) and
# the service needs no further round trip while holding the log's lock.
POSTGRESQL_TRIGGERS = [
    f"""
CREATE FUNCTION livepost_post_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rec posts%ROWTYPE;
    act text;
    ver integer;
    old_text text;
    new_text text;
    announced text := current_setting('livepost.tags', true);
    tags text[];
    logged bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.body IS NOT DISTINCT FROM OLD.body THEN
        RETURN NEW;  -- no change, no record
    END IF;
    IF TG_OP = 'INSERT' THEN
        rec := NEW; act := 'create'; ver := NEW.version; old_text := NULL; new_text := NEW.body;
    ELSIF TG_OP = 'UPDATE' THEN
        -- A body changed by plain SQL still gets a new version, so clients see a new state.
        IF NEW.version <= OLD.version THEN
            NEW.version := OLD.version + 1;
        END IF;
        rec := NEW; act := 'update'; ver := NEW.version; old_text := OLD.body;
        new_text := NEW.body;
    ELSE
        -- A delete is the post's last version: one past its final state.
        rec := OLD; act := 'delete'; ver := OLD.version + 1; old_text := OLD.body;
        new_text := NULL;
    END IF;
    IF announced LIKE 'tags:%' THEN
        tags := array_remove(string_to_array(substr(announced, 6), ' '), '');
        -- One announcement, one write: anything else in this transaction is external.
        PERFORM set_config('livepost.tags', '', true);
    END IF;
    PERFORM pg_advisory_xact_lock({ADVISORY_KEY});
    INSERT INTO post_changes (post_id, action, version, author_id, created_at, old_body,
                              new_body, changed_at, published, external)
    VALUES (rec.id, act, ver, rec.author_id, rec.created_at, old_text, new_text,
            extract(epoch FROM clock_timestamp()),
            -- nobody to tell: the service found no hashtag, or there is no '#' at all
            coalesce(cardinality(tags) = 0, false)
                OR position('#' IN coalesce(old_text, '') || coalesce(new_text, '')) = 0,
            tags IS NULL)
    RETURNING id INTO logged;
    IF cardinality(tags) > 0 THEN
        INSERT INTO change_tags (tag, change_id) SELECT t, logged FROM unnest(tags) AS t;
    ELSIF tags IS NULL THEN
        -- Wakes the relays (at commit): nobody else will publish this change.
        PERFORM pg_notify('livepost_changes', '');
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$
""",
    """
CREATE TRIGGER posts_change BEFORE INSERT OR UPDATE OF body OR DELETE ON posts
    FOR EACH ROW EXECUTE FUNCTION livepost_post_change()
""",
]

# SQLite has one writer at a time, so ids follow commit order by themselves. Its triggers
# cannot tell the service from another client: the relay picks up unpublished rows after a
# grace period instead.
_SQLITE_NOW = "(julianday('now') - 2440587.5) * 86400.0"
SQLITE_TRIGGERS = [
    f"""
CREATE TRIGGER posts_change_insert AFTER INSERT ON posts BEGIN
    INSERT INTO post_changes (post_id, action, version, author_id, created_at, old_body,
                              new_body, changed_at, published, external)
    VALUES (NEW.id, 'create', NEW.version, NEW.author_id, NEW.created_at, NULL, NEW.body,
            {_SQLITE_NOW}, instr(NEW.body, '#') = 0, 0);
END
""",
    f"""
CREATE TRIGGER posts_change_update AFTER UPDATE OF body ON posts
WHEN OLD.body IS NOT NEW.body BEGIN
    INSERT INTO post_changes (post_id, action, version, author_id, created_at, old_body,
                              new_body, changed_at, published, external)
    VALUES (NEW.id, 'update',
            CASE WHEN NEW.version > OLD.version THEN NEW.version ELSE OLD.version + 1 END,
            NEW.author_id, NEW.created_at, OLD.body, NEW.body, {_SQLITE_NOW},
            instr(OLD.body || NEW.body, '#') = 0, 0);
    -- A body changed by plain SQL still gets a new version (this UPDATE fires no trigger:
    -- it does not set body).
    UPDATE posts SET version = OLD.version + 1 WHERE id = NEW.id AND NEW.version <= OLD.version;
END
""",
    f"""
CREATE TRIGGER posts_change_delete AFTER DELETE ON posts BEGIN
    INSERT INTO post_changes (post_id, action, version, author_id, created_at, old_body,
                              new_body, changed_at, published, external)
    VALUES (OLD.id, 'delete', OLD.version + 1, OLD.author_id, OLD.created_at, OLD.body, NULL,
            {_SQLITE_NOW}, instr(OLD.body, '#') = 0, 0);
END
""",
]


def upgrade() -> None:
    op.create_table(
        "post_changes",
        sa.Column("id", BigId, nullable=False),
        sa.Column("post_id", BigId, nullable=False),
        sa.Column("action", sa.String(length=6), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("author_id", BigId, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("old_body", sa.String(length=256), nullable=True),
        sa.Column("new_body", sa.String(length=256), nullable=True),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("external", sa.Boolean(), nullable=False),
        sa.Column("relay_after", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_post_changes_unpublished",
        "post_changes",
        ["id"],
        unique=False,
        postgresql_where=sa.text("NOT published"),
        sqlite_where=sa.text("NOT published"),
    )
    op.create_table(
        "change_tags",
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.Column("change_id", BigId, nullable=False),
        sa.PrimaryKeyConstraint("tag", "change_id"),
    )
    op.create_index("ix_change_tags_change_id", "change_tags", ["change_id"], unique=False)
    op.create_table(
        "change_horizons",
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.Column("pruned_upto", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tag"),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS posts_change ON posts")
        op.execute("DROP FUNCTION IF EXISTS livepost_post_change()")
    else:
        for name in ("posts_change_insert", "posts_change_update", "posts_change_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("change_horizons")
    op.drop_index("ix_change_tags_change_id", table_name="change_tags")
    op.drop_table("change_tags")
    op.drop_index("ix_post_changes_unpublished", table_name="post_changes")
    op.drop_table("post_changes")
