"""`field__any=[…]`: `field = ANY(%s)` with the whole list bound as one array parameter.

Django's `__in` writes one placeholder per value. A batch of 1,000 members then costs a 1,000-placeholder
statement that Django compiles and psycopg splits in Python on every execution (10–20 ms each, several per
batch of a bulk member match or an export chunk); PostgreSQL plans `= ANY(array)` exactly as it plans `IN`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Field, ForeignObject, Lookup


class AnyOf(Lookup):
    lookup_name = "any"
    prepare_rhs = False  # the right-hand side is a list of the field's values, not one value

    def get_db_prep_lookup(self, value: Any, connection) -> tuple[str, list[Any]]:
        field = self.lhs.output_field
        return "%s", [[field.get_db_prep_value(item, connection, prepared=False) for item in value]]

    def as_sql(self, compiler, connection) -> tuple[str, list[Any]]:
        lhs_sql, lhs_params = self.process_lhs(compiler, connection)
        rhs_sql, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs_sql} = ANY({rhs_sql})", [*lhs_params, *rhs_params]


Field.register_lookup(AnyOf)
ForeignObject.register_lookup(AnyOf)  # relations keep lookups of their own (RelatedIn, …), so register there too
