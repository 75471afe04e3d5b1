"""row level security by facility (PostgreSQL only; a no-op on SQLite)

The second wall behind the gate: the application role `carnet_app` sees only the rows of the
facilities the current transaction declares in `carnet.facility_ids` (a comma-separated list of
facility ids, or `*` for the audited system door). The gate sets it with set_config(..., true)
per transaction and runs as `carnet_app` (SET LOCAL ROLE), so even a superuser connection is
walled inside the gate. Superusers outside the gate bypass RLS: production must connect as a
non-superuser member of `carnet_app`.

Written by hand (not regenerated): scripts/regen-initial-migration keeps it.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "carnet_app"

# Patient tables with their own facility_id column.
FACILITY_TABLES = (
    "patients",
    "care_relationships",
    "resource_versions",
    "appointments",
    "encounters",
    "clinical_notes",
    "allergies",
    "conditions",
    "diagnostic_reports",
    "observations",
    "prescriptions",
    "coverages",
    "card_readings",
    "invoices",
    "break_glass_accesses",
    "consents",
    "export_files",
)
# Child tables: visible when their parent row is (the parent's own policy applies inside).
CHILD_TABLES = {
    "note_versions": "EXISTS (SELECT 1 FROM clinical_notes p WHERE p.id = note_id)",
    "invoice_lines": "EXISTS (SELECT 1 FROM invoices p WHERE p.id = invoice_id)",
    "payments": "EXISTS (SELECT 1 FROM invoices p WHERE p.id = invoice_id)",
}

SCOPE = "(carnet_scope_all() OR facility_id = ANY (carnet_scope_facilities()))"


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    # Roles are cluster-wide: several databases (and test processes) may race to create it.
    op.execute(
        f"""
        DO $$ BEGIN
          CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$;
        """
    )
    op.execute(
        f"""
        DO $$ BEGIN
          EXECUTE format('GRANT {APP_ROLE} TO %I', current_user);
        EXCEPTION WHEN others THEN NULL;  -- already a member, or a superuser
        END $$;
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    op.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}"
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION carnet_scope_all() RETURNS boolean LANGUAGE sql STABLE AS
        $$ SELECT coalesce(current_setting('carnet.facility_ids', true), '') = '*' $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION carnet_scope_facilities() RETURNS uuid[] LANGUAGE sql STABLE AS
        $$ SELECT CASE
             WHEN coalesce(current_setting('carnet.facility_ids', true), '') IN ('', '*')
             THEN ARRAY[]::uuid[]
             ELSE string_to_array(current_setting('carnet.facility_ids', true), ',')::uuid[]
           END $$
        """
    )
    for table in FACILITY_TABLES:
        _protect(table, SCOPE)
    for table, expression in CHILD_TABLES.items():
        _protect(table, expression)


def _protect(table: str, expression: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY facility_scope ON {table} USING ({expression}) WITH CHECK ({expression})")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in (*FACILITY_TABLES, *CHILD_TABLES):
        op.execute(f"DROP POLICY IF EXISTS facility_scope ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION IF EXISTS carnet_scope_facilities()")
    op.execute("DROP FUNCTION IF EXISTS carnet_scope_all()")
