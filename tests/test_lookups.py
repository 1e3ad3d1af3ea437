"""`field__any=[…]` (pdex.lookups): the same rows as `__in`, with the whole list bound as one array parameter."""

from __future__ import annotations

from consent.models import MemberBlock
from pdex.models import Member
from tests.builders import make_member


def test_any_finds_what_in_finds_with_one_parameter_whatever_the_count(db):
    members = [make_member(f"any-{n}") for n in range(5)]
    wanted = [m.pk for m in members[:3]] + list(range(10**9, 10**9 + 1000))  # 1,003 ids, 1,000 of them unknown
    by_any = Member.objects.filter(pk__any=wanted)
    assert set(by_any) == set(Member.objects.filter(pk__in=wanted)) == set(members[:3])
    sql, params = by_any.query.sql_with_params()
    assert "= ANY(" in sql and len(params) == 1
    assert list(Member.objects.filter(fhir_id__any=["any-4", "nobody"])) == [members[4]]
    assert not Member.objects.filter(pk__any=[]).exists()


def test_any_on_a_relation_compares_the_related_id(db):
    blocked, other = make_member("any-blocked"), make_member("any-other")
    MemberBlock.objects.create(member=blocked, partner=None, reason="asked", created_by="test")
    assert list(MemberBlock.objects.filter(member_id__any=[blocked.pk, other.pk]).values_list("member_id", flat=True)) \
        == [blocked.pk]
    assert MemberBlock.objects.filter(member__any=[blocked.pk]).count() == 1


def test_an_integer_list_is_one_literal_cast_to_the_column_type(db):
    """Sent as psycopg's smallint[], a list against a bigint column is searched whole for every row (PostgreSQL
    hashes a long `= ANY` list only when both sides are of one type); cast, it is hashed."""
    sql, params = MemberBlock.objects.filter(member_id__any=[3, 1, 2]).query.sql_with_params()
    assert "= ANY(%s::bigint[])" in sql
    assert params == ("{3,1,2}",)
    sql, params = Member.objects.filter(fhir_id__any=["a", "b"]).query.sql_with_params()
    assert "::" not in sql.split("= ANY(")[1] and params == (["a", "b"],)  # text needs no cast
