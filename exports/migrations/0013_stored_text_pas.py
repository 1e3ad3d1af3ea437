"""The stored export line and PA-attachment relation (migration 0011) for PAS prior authorizations and
ClaimResponse: a PAS Claim (use=preauthorization) cites its supporting DocumentReferences in `supportingInfo`
as a PDex PA EOB does, so its citations are stored in `pa_documents` too; a ClaimResponse other than a PA's
decision is a claim's adjudication and goes out non-financial, like a claim EOB. The rules stay in
exports/rules.py; this only widens what the trigger computes, and refills the rows it now computes anew.

Reversing leaves the wider function in place (it computes the same for every row 0011 knew of).
"""

from django.db import migrations

STORED_SQL = r"""
CREATE OR REPLACE FUNCTION pdex_resource_stored() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.resource_type = 'Claim'
       OR (NEW.resource_type IN ('ExplanationOfBenefit', 'ClaimResponse')
           AND NEW.eob_use IS DISTINCT FROM 'preauthorization') THEN
        NEW.export_text := pdex_nonfinancial(NEW.body)::text;
    ELSE
        NEW.export_text := NEW.body::text;
    END IF;
    IF NEW.resource_type IN ('ExplanationOfBenefit', 'Claim') AND NEW.eob_use = 'preauthorization' THEN
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

DROP INDEX IF EXISTS resource_pa_documents;
CREATE INDEX resource_pa_documents ON pdex_resource (member_id)
    WHERE resource_type IN ('ExplanationOfBenefit', 'Claim') AND eob_use = 'preauthorization'
      AND pa_documents <> '{}';
"""

FILL_SQL = "UPDATE pdex_resource SET body = body WHERE resource_type IN ('Claim', 'ClaimResponse');"


class Migration(migrations.Migration):

    dependencies = [
        ("exports", "0012_export_file_parts"),
        ("pdex", "0004_write_api_tombstones_imports"),
    ]

    operations = [
        migrations.RunSQL(STORED_SQL, migrations.RunSQL.noop),
        migrations.RunSQL(FILL_SQL, migrations.RunSQL.noop),
    ]
