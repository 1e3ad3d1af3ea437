"""SMART scopes: v1 ≡ v2, both spellings of the PDex operation scopes, and what a token is granted."""

from __future__ import annotations

import pytest

from pdex.auth import scopes
from pdex.auth.scopes import BULK_MEMBER_MATCH, MATCH_GROUP_EXPORT, MEMBER_MATCH

LEGACY_BULK = "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/bulk-member-match"
IG_GROUP_EXPORT = (
    "system.Group.u?code=http://hl7.org/fhir/us/davinci-pdex/ValueSet/PDexMultiMemberMatchResultVS|match"
)


@pytest.mark.parametrize("v1, v2", [
    ("system/*.read", "system/*.rs"),
    ("system/Patient.read", "system/Patient.rs"),
    ("system/Group.read", "system/Group.rs"),
    ("system/*.write", "system/*.cud"),
    ("system/*.*", "system/*.cruds"),
])
def test_v1_and_v2_spellings_are_equivalent(v1, v2):
    assert scopes.satisfies([v1], v2) and scopes.satisfies([v2], v1)
    assert scopes.parse(v1) == scopes.parse(v2)


def test_wildcard_covers_each_type_but_not_the_reverse():
    assert scopes.satisfies(["system/*.read"], "system/ExplanationOfBenefit.rs")
    assert not scopes.satisfies(["system/Patient.rs"], "system/*.rs")
    assert not scopes.satisfies(["system/Patient.r"], "system/Patient.rs")
    assert not scopes.satisfies(["patient/*.read"], "system/Patient.rs")


@pytest.mark.parametrize("granted", [BULK_MEMBER_MATCH, LEGACY_BULK])
@pytest.mark.parametrize("required", [BULK_MEMBER_MATCH, LEGACY_BULK])
def test_both_bulk_member_match_spellings_are_one_scope(granted, required):
    assert scopes.satisfies([granted], required)


def test_ig_spelling_of_the_match_group_export_scope_is_an_alias():
    assert scopes.satisfies([IG_GROUP_EXPORT], MATCH_GROUP_EXPORT)
    assert scopes.satisfies([MATCH_GROUP_EXPORT], IG_GROUP_EXPORT)
    assert not scopes.satisfies([MATCH_GROUP_EXPORT], "system/Group.rs")
    assert scopes.satisfies(["system/Group.rs"], MATCH_GROUP_EXPORT)


def test_operation_scopes_are_not_implied_by_resource_scopes():
    assert not scopes.satisfies(["system/*.cruds"], MEMBER_MATCH)
    assert not scopes.satisfies([BULK_MEMBER_MATCH], MEMBER_MATCH)


def test_satisfies_all_takes_alternatives():
    granted = ["system/Group.read", LEGACY_BULK]
    assert scopes.satisfies_all(granted, [BULK_MEMBER_MATCH, ("system/Group.rs", MATCH_GROUP_EXPORT)])
    assert not scopes.satisfies_all(granted, [MEMBER_MATCH])


@pytest.mark.parametrize("requested, allowed, granted", [
    (["system/Patient.read"], ["system/*.rs"], ["system/Patient.read"]),
    (["system/*.rs"], ["system/*.read"], ["system/*.rs"]),
    (["system/Observation.cruds"], ["system/*.read"], ["system/Observation.rs"]),
    (["system/*.rs"], ["system/Patient.rs", "system/Group.read"], ["system/Patient.rs", "system/Group.rs"]),
    (["system/Patient.c"], ["system/*.rs"], []),
    (["patient/*.read"], ["system/*.read"], []),
    (["launch", "openid", "system/Patient.rs"], ["system/*.read"], ["system/Patient.rs"]),
    ([LEGACY_BULK, MEMBER_MATCH], [BULK_MEMBER_MATCH], [LEGACY_BULK]),
    ([IG_GROUP_EXPORT], [MATCH_GROUP_EXPORT], [IG_GROUP_EXPORT]),
    (["system/Group.rs"], [MATCH_GROUP_EXPORT], [MATCH_GROUP_EXPORT]),
    (["system/Patient.rs", "system/Patient.rs", "system/Patient.read"], ["system/*.rs"],
     ["system/Patient.rs", "system/Patient.read"]),
])
def test_grant_is_requested_intersected_with_allowed(requested, allowed, granted):
    assert scopes.grant(requested, allowed) == granted


def test_every_granted_scope_is_within_policy():
    allowed = ["system/Patient.rs", "system/Group.read", BULK_MEMBER_MATCH]
    requested = ["system/*.cruds", "system/Coverage.rs", LEGACY_BULK, MEMBER_MATCH, "system/Group.s"]
    for scope in scopes.grant(requested, allowed):
        assert scopes.satisfies(allowed, scope)


def test_supported_scopes_are_all_known():
    assert all(scopes.is_known(scope) for scope in scopes.SUPPORTED)


@pytest.mark.parametrize("scope", ["system/UnknownResource.read", "system/UnknownResource.r", "system/Patients.rs"])
def test_a_scope_naming_no_r4_resource_type_is_not_a_smart_scope(scope):
    assert scopes.parse(scope) is None and scopes.names_unknown_resource_type(scope)
    assert scopes.grant([scope], ["system/*.read"]) == []


def test_r4_only_resource_types_are_known():
    """R4 (4.0.1) is what we serve: MedicinalProduct exists there (it left in R4B), SubscriptionTopic does not."""
    assert scopes.parse("system/MedicinalProduct.rs") is not None
    assert scopes.parse("system/SubscriptionTopic.rs") is None
    assert len(scopes.R4_RESOURCE_TYPES) == 146
