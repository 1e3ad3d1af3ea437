"""Reading the partner-owned Groups: read and search (spec §4). Other partners' Groups do not exist (404)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Q, QuerySet

from matching.groups import NPI_SYSTEM, RESULT_SYSTEM, served
from matching.models import MatchJob, MemberMatchGroup
from pdex import audit
from pdex.dates import date_range
from pdex.fhir import BadRequest, NotFound, require_fhir_id, valid_fhir_id
from pdex.jobs import asyncstatus
from pdex.models import Partner

DEFAULT_COUNT = 20
MAX_COUNT = 200
SEARCH_PARAMS = ("_id", "identifier", "code", "characteristic", "characteristic-value-reference:identifier",
                 "name", "name:exact", "name:contains", "_lastUpdated", "_count", "_offset")


def status_url(job: MatchJob) -> str:
    return asyncstatus.status_url(job)


def owned_group(*, partner: Partner, group_id: str) -> MemberMatchGroup:
    require_fhir_id(group_id, "Group")
    group = MemberMatchGroup.objects.filter(pk=group_id, partner=partner).first()
    if group is None:
        raise NotFound(f"Group/{group_id} is not known to this client.")
    return group


def read_group(*, partner: Partner, group_id: str, request=None) -> dict[str, Any]:
    group = owned_group(partner=partner, group_id=group_id)
    audit.record("group-read", audit.SUCCESS, partner=partner, entity=f"Group/{group.id}", request=request)
    return served(group)


def _token(value: str) -> tuple[str | None, str]:
    """system|code, |code (no system) or code (any system)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


def _last_updated(groups: QuerySet, value: str) -> QuerySet:
    prefix, raw = (value[:2], value[2:]) if value[:2] in ("eq", "ne", "gt", "lt", "ge", "le") else ("eq", value)
    start, end = date_range(raw)  # [start, end) at the value's precision; 400 for what is not a date
    lookups = {"eq": Q(last_updated__gte=start, last_updated__lt=end), "gt": Q(last_updated__gte=end),
               "ge": Q(last_updated__gte=start), "lt": Q(last_updated__lt=start), "le": Q(last_updated__lt=end)}
    if prefix == "ne":
        return groups.exclude(lookups["eq"])
    return groups.filter(lookups[prefix])


def _filter(groups: QuerySet, partner: Partner, name: str, values: list[str]) -> QuerySet:
    for raw in values:
        options = [v for v in raw.split(",") if v]
        if name == "_lastUpdated":
            groups = _last_updated(groups, raw)
            continue
        query = Q(pk__in=[])
        for value in options:
            if name == "_id":
                if valid_fhir_id(value):  # no Group has any other id
                    query |= Q(pk=value)
            elif name == "identifier":
                system, code = _token(value)
                query |= Q(identifier_value=code, **({"identifier_system": system} if system is not None else {}))
            elif name in ("code", "characteristic"):
                system, code = _token(value)
                if system in (None, RESULT_SYSTEM) and (name == "code" or code == MemberMatchGroup.Code.MATCH):
                    query |= Q(code=code)
            elif name == "characteristic-value-reference:identifier":
                system, code = _token(value)
                if system in (None, NPI_SYSTEM) and partner.npi and code == partner.npi:
                    query |= Q(code=MemberMatchGroup.Code.MATCH)
            elif name == "name":
                query |= Q(name__istartswith=value)
            elif name == "name:exact":
                query |= Q(name=value)
            elif name == "name:contains":
                query |= Q(name__icontains=value)
        groups = groups.filter(query)
    return groups


def _int(params: Mapping[str, Any], name: str, default: int) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a non-negative integer.", code="value") from None
    if value < 0:
        raise BadRequest(f"{name} must be a non-negative integer.", code="value")
    return value


def search_groups(*, partner: Partner, params: Any, base_url: str) -> dict[str, Any]:
    """A searchset Bundle of the partner's Groups, with total and self/next/previous links."""
    groups = MemberMatchGroup.objects.filter(partner=partner)
    applied: list[tuple[str, str]] = []
    for name in SEARCH_PARAMS:
        if name in ("_count", "_offset"):
            continue
        values = params.getlist(name) if hasattr(params, "getlist") else [params[name]] if name in params else []
        if values:
            groups = _filter(groups, partner, name, values)
            applied += [(name, v) for v in values]
    count = min(_int(params, "_count", DEFAULT_COUNT), MAX_COUNT)
    offset = _int(params, "_offset", 0)
    total = groups.count()
    page = list(groups.order_by("created_at", "id")[offset:offset + count]) if count else []

    def link(relation: str, at: int) -> dict[str, str]:
        return {"relation": relation, "url": f"{base_url}?{urlencode([*applied, ('_count', count), ('_offset', at)])}"}

    links = [link("self", offset)]
    if count and offset + count < total:
        links.append(link("next", offset + count))
    if count and offset > 0:
        links.append(link("previous", max(offset - count, 0)))
    audit.record("group-search", audit.SUCCESS, partner=partner, detail={"total": total, "params": applied})
    return {
        "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
        "entry": [{"fullUrl": f"{settings.FHIR_BASE_URL}/Group/{g.id}", "resource": served(g),
                   "search": {"mode": "match"}} for g in page],
    }
