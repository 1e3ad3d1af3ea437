"""What a partner receives of a resource, computed when the row is written and stored beside it.

A trigger on `pdex_resource` (BEFORE INSERT, and BEFORE UPDATE of the columns it reads) fills two columns
Django's model does not know of, so every write path keeps them current — `load_ndjson`'s COPY and upsert,
the ingest of pulled records, the ORM, and any write API — without one line of Python per path:

- `export_text`: the NDJSON line as exported, `pdex_nonfinancial(body)::text` for a Claim or a claim
  ExplanationOfBenefit (use ≠ preauthorization), `body::text` otherwise;
- `pa_documents`: for a prior-authorization ExplanationOfBenefit, the `DocumentReference/…` references of its
  `supportingInfo[*].valueReference` (the PA-attachment relation), empty for every other row.

The export then selects `export_text` and concatenates, and the DocumentReference rule compares an array
through a partial index instead of a JSON path per row (exports/rules.py). The rules themselves stay in
exports/rules.py and migration 0002 (`pdex_nonfinancial`); this trigger only decides when they run. The
migration fills the rows that exist (a data migration: an UPDATE that fires the trigger).
"""

from django.db import migrations

STORED_SQL = r"""
ALTER TABLE pdex_resource ADD COLUMN IF NOT EXISTS export_text text;
ALTER TABLE pdex_resource ADD COLUMN IF NOT EXISTS pa_documents text[] NOT NULL DEFAULT '{}';

CREATE OR REPLACE FUNCTION pdex_resource_stored() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.resource_type = 'Claim'
       OR (NEW.resource_type = 'ExplanationOfBenefit' AND NEW.eob_use IS DISTINCT FROM 'preauthorization') THEN
        NEW.export_text := pdex_nonfinancial(NEW.body)::text;
    ELSE
        NEW.export_text := NEW.body::text;
    END IF;
    IF NEW.resource_type = 'ExplanationOfBenefit' AND NEW.eob_use = 'preauthorization' THEN
        NEW.pa_documents := ARRAY(
            SELECT DISTINCT ref #>> '{}'
            FROM jsonb_path_query(NEW.body, '$.supportingInfo[*].valueReference.reference') AS ref
            WHERE jsonb_typeof(ref) = 'string' AND starts_with(ref #>> '{}', 'DocumentReference/'));
    ELSE
        NEW.pa_documents := '{}';
    END IF;
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS pdex_resource_stored ON pdex_resource;
CREATE TRIGGER pdex_resource_stored
    BEFORE INSERT OR UPDATE OF body, resource_type, eob_use ON pdex_resource
    FOR EACH ROW EXECUTE FUNCTION pdex_resource_stored();

-- The DocumentReference rule asks "does one of this member's PAs cite this document?": only PAs citing one.
CREATE INDEX IF NOT EXISTS resource_pa_documents ON pdex_resource (member_id)
    WHERE resource_type = 'ExplanationOfBenefit' AND eob_use = 'preauthorization' AND pa_documents <> '{}';
"""

FILL_SQL = "UPDATE pdex_resource SET body = body;"

DROP_SQL = r"""
DROP TRIGGER IF EXISTS pdex_resource_stored ON pdex_resource;
DROP FUNCTION IF EXISTS pdex_resource_stored();
DROP INDEX IF EXISTS resource_pa_documents;
ALTER TABLE pdex_resource DROP COLUMN IF EXISTS export_text;
ALTER TABLE pdex_resource DROP COLUMN IF EXISTS pa_documents;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("exports", "0010_partner_receipts"),
        ("pdex", "0003_member_identity_from_coverage"),
    ]

    operations = [
        migrations.RunSQL(STORED_SQL, DROP_SQL),
        migrations.RunSQL(FILL_SQL, migrations.RunSQL.noop),
    ]
