"""PostgreSQL functions the export streams through, so no resource is parsed in Python on the export path.

`pdex_nonfinancial(body)` turns a claim ExplanationOfBenefit (use=claim) or a Claim into the non-financial
view required for payer-to-payer (CARIN BB "Basis" profiles, spec §5.4/§5.5). Elements removed:

- resource level: `payment`, `total`, `benefitBalance`, `adjudication` entries carrying only amounts;
- in `item`, `addItem` and their `detail` / `subDetail` (recursively): `net`, `unitPrice`, `factor`,
  and `adjudication.amount`; an adjudication entry left with nothing but its category is dropped,
  one that keeps a `reason` or a `value` (e.g. allowed units) stays without its amount.

Everything else (codes, dates, diagnoses, procedures, care team, insurance, supporting info) is kept.
See docs/windows.md.
"""

from django.db import migrations

NONFINANCIAL_SQL = r"""
CREATE OR REPLACE FUNCTION pdex_nonfinancial_adjudication(adjudication jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT jsonb_agg(entry - 'amount' ORDER BY ord)
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(adjudication) = 'array' THEN adjudication ELSE '[]' END)
         WITH ORDINALITY AS t(entry, ord)
    WHERE entry ? 'reason' OR entry ? 'value'
$fn$;

CREATE OR REPLACE FUNCTION pdex_nonfinancial_lines(lines jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    result jsonb := '[]'::jsonb;
    line jsonb;
    adjudication jsonb;
BEGIN
    IF jsonb_typeof(lines) IS DISTINCT FROM 'array' THEN
        RETURN lines;
    END IF;
    FOR line IN SELECT value FROM jsonb_array_elements(lines) LOOP
        IF jsonb_typeof(line) = 'object' THEN
            line := line - 'net' - 'unitPrice' - 'factor';
            IF line ? 'adjudication' THEN
                adjudication := pdex_nonfinancial_adjudication(line -> 'adjudication');
                line := CASE WHEN adjudication IS NULL THEN line - 'adjudication'
                             ELSE jsonb_set(line, '{adjudication}', adjudication) END;
            END IF;
            IF line ? 'detail' THEN
                line := jsonb_set(line, '{detail}', pdex_nonfinancial_lines(line -> 'detail'));
            END IF;
            IF line ? 'subDetail' THEN
                line := jsonb_set(line, '{subDetail}', pdex_nonfinancial_lines(line -> 'subDetail'));
            END IF;
        END IF;
        result := result || jsonb_build_array(line);
    END LOOP;
    RETURN result;
END
$fn$;

CREATE OR REPLACE FUNCTION pdex_nonfinancial(body jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    result jsonb := body - 'payment' - 'total' - 'benefitBalance';
    adjudication jsonb;
BEGIN
    IF result ? 'adjudication' THEN
        adjudication := pdex_nonfinancial_adjudication(result -> 'adjudication');
        result := CASE WHEN adjudication IS NULL THEN result - 'adjudication'
                       ELSE jsonb_set(result, '{adjudication}', adjudication) END;
    END IF;
    IF result ? 'item' THEN
        result := jsonb_set(result, '{item}', pdex_nonfinancial_lines(result -> 'item'));
    END IF;
    IF result ? 'addItem' THEN
        result := jsonb_set(result, '{addItem}', pdex_nonfinancial_lines(result -> 'addItem'));
    END IF;
    RETURN result;
END
$fn$;
"""

DROP_SQL = """
DROP FUNCTION IF EXISTS pdex_nonfinancial(jsonb);
DROP FUNCTION IF EXISTS pdex_nonfinancial_lines(jsonb);
DROP FUNCTION IF EXISTS pdex_nonfinancial_adjudication(jsonb);
"""


class Migration(migrations.Migration):

    dependencies = [
        ("exports", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(NONFINANCIAL_SQL, DROP_SQL),
    ]
