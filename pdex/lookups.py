"""Long lists of ids bound as one parameter, in lookups and in inserts.

`field__any=[…]`: `field = ANY(%s)` with the whole list bound as one array parameter. Django's `__in` writes
one placeholder per value. A batch of 1,000 members then costs a 1,000-placeholder statement that Django
compiles and psycopg splits in Python on every execution (10–20 ms each, several per batch of a bulk member
match or an export chunk); PostgreSQL plans `= ANY(array)` exactly as it plans `IN`. An integer list is cast to
the column's own type, so a long list is hashed rather than searched for every row (INTEGER_TYPES), and bound
as one text literal.

`bigint_array(ids)`: the value of an `ArrayField(BigIntegerField())` in a bulk insert, as one text literal cast
in SQL. Django prepares an array value element by element (the base field's prep, then psycopg's dumper per
item): the 219 chunks of a 9,800-member export plan, 415,000 ids, took 1.1–1.3 s to insert, 0.3 s this way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Field, ForeignObject, Lookup
from django.db.models.expressions import RawSQL

# psycopg sends a list of small ints as smallint[] (integer[] up to 2^31). PostgreSQL hashes a long `= ANY` list
# only when both sides hash alike, which bigint against smallint do not, so a filter `member_id = ANY(list)`
# searched the whole list for every row: 9,800 consents against 9,800 members took 300–430 ms, 20 ms with the
# list cast to the column's own type.
INTEGER_TYPES = ("smallint", "integer", "bigint")


class AnyOf(Lookup):
    lookup_name = "any"
    prepare_rhs = False  # the right-hand side is a list of the field's values, not one value

    def integer_type(self, connection) -> str | None:
        """The column's type when it is an integer one (its list goes as one literal, cast to it)."""
        db_type = self.lhs.output_field.db_type(connection)
        return db_type if db_type in INTEGER_TYPES else None

    def get_db_prep_lookup(self, value: Any, connection) -> tuple[str, list[Any]]:
        if self.integer_type(connection):
            return "%s", [integer_array_literal(value)]
        field = self.lhs.output_field
        return "%s", [[field.get_db_prep_value(item, connection, prepared=False) for item in value]]

    def as_sql(self, compiler, connection) -> tuple[str, list[Any]]:
        lhs_sql, lhs_params = self.process_lhs(compiler, connection)
        rhs_sql, rhs_params = self.process_rhs(compiler, connection)
        if db_type := self.integer_type(connection):
            rhs_sql = f"{rhs_sql}::{db_type}[]"
        return f"{lhs_sql} = ANY({rhs_sql})", [*lhs_params, *rhs_params]


Field.register_lookup(AnyOf)
ForeignObject.register_lookup(AnyOf)  # relations keep lookups of their own (RelatedIn, …), so register there too


def integer_array_literal(ids: Iterable[int]) -> str:
    """`{1,2,3}`: one text parameter, built in C, where a list is adapted id by id in Python (Django's client-side
    binding writes a list out element by element: 14 ms for 9,800 ids)."""
    return "{" + ",".join(map(str, map(int, ids))) + "}"


def bigint_array(ids: Iterable[int]) -> RawSQL:
    """`ids` as a bigint[] value for a bulk insert: one parameter, however many ids."""
    return RawSQL("%s::bigint[]", (integer_array_literal(ids),))
