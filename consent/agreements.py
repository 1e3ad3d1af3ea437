"""The data-sharing agreement a partner must have on file before we send it members' data (seed spec: "the
requesting payer must have a signed agreement before any export").

A partner without one still gets tokens and matches (it may need the match to sign the agreement); an
export kick-off is refused. `AGREEMENT_REQUIRED_FOR_MATCH` refuses member match too, for payers whose
counsel wants it there.
"""

from __future__ import annotations

from django.conf import settings

from pdex.fhir import Forbidden
from pdex.models import Partner

AGREEMENT_REQUIRED_TEXT = ("An agreement is required: this client has no data-sharing agreement in force with us. "
                           "Contact the plan to put one on file.")


def require_agreement(partner: Partner, *, entity: str = "") -> None:
    """403 with an OperationOutcome unless the partner's agreement is on file and in force today."""
    if not partner.has_agreement():
        raise Forbidden(AGREEMENT_REQUIRED_TEXT, code="forbidden",
                        audit_reason="no data-sharing agreement in force", audit_entity=entity,
                        audit_detail={"agreement_date": str(partner.agreement_date or ""),
                                      "agreement_end": str(partner.agreement_end or "")})


def require_agreement_for_match(partner: Partner, *, entity: str = "") -> None:
    """require_agreement, when AGREEMENT_REQUIRED_FOR_MATCH says matching needs one too."""
    if settings.AGREEMENT_REQUIRED_FOR_MATCH:
        require_agreement(partner, entity=entity)
