"""rooms and beds: a location is part of another (bed -> room -> ward); a stay keeps its bed
and the beds it has been in; one bed holds one stay in progress (a partial unique index, so two
desks admitting to the same bed at once cannot both commit)

Revision ID: 0011_beds
Revises: 0010_interop
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_beds"
down_revision = "0010_interop"
branch_labels = None
depends_on = None

IN_PROGRESS = "status = 'in-progress' AND bed_id IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("part_of_id", sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f("ix_locations_part_of_id"), ["part_of_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_locations_part_of_id_locations"), "locations", ["part_of_id"], ["id"]
        )
    with op.batch_alter_table("encounters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bed_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("bed_history", sa.Text(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_encounters_bed_id_locations"), "locations", ["bed_id"], ["id"]
        )
        batch_op.create_index(
            "uq_encounters_bed_in_progress",
            ["bed_id"],
            unique=True,
            sqlite_where=sa.text(IN_PROGRESS),
            postgresql_where=sa.text(IN_PROGRESS),
        )


def downgrade() -> None:
    with op.batch_alter_table("encounters", schema=None) as batch_op:
        batch_op.drop_index("uq_encounters_bed_in_progress")
        batch_op.drop_constraint(batch_op.f("fk_encounters_bed_id_locations"), type_="foreignkey")
        batch_op.drop_column("bed_history")
        batch_op.drop_column("bed_id")
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_locations_part_of_id_locations"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_locations_part_of_id"))
        batch_op.drop_column("part_of_id")
