"""Register a requesting payer from the command line; the client id is the last line printed."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pdex import partners
from pdex.auth.jwks import InvalidKeySet
from pdex.auth.scopes import BULK_MEMBER_MATCH, MEMBER_MATCH
from pdex.models import Partner

PAYER_TO_PAYER_SCOPES = ("system/*.read", MEMBER_MATCH, BULK_MEMBER_MATCH)


class Command(BaseCommand):
    help = "Create an active partner with its OAuth client; prints the client id on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--jwks", type=Path, help="file holding the partner's public JWK Set")
        parser.add_argument("--jwks-url", default="", help="the partner's JWKS URL (https)")
        parser.add_argument("--scope", nargs="+", default=list(PAYER_TO_PAYER_SCOPES),
                            help="allowed scopes (several words or one quoted, space-separated string); "
                                 "default: system/*.read and the member-match / bulk-member-match operations")
        parser.add_argument("--npi", default="")
        parser.add_argument("--payer-id", default="")
        parser.add_argument("--pending", action="store_true", help="create it pending admin approval")
        parser.add_argument("--agreement-date", type=date.fromisoformat, default=None,
                            help="date the data-sharing agreement was signed (YYYY-MM-DD); exports need one")

    def handle(self, *args, **options) -> None:
        jwks = None
        if options["jwks"]:
            try:
                jwks = json.loads(options["jwks"].read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"cannot read the JWKS file: {exc}") from exc
        try:
            partner = partners.create_partner(
                name=options["name"], jwks=jwks, jwks_url=options["jwks_url"], scope=" ".join(options["scope"]),
                npi=options["npi"], payer_id=options["payer_id"], registered_via="command",
                status=Partner.Status.PENDING if options["pending"] else Partner.Status.ACTIVE,
                agreement_date=options["agreement_date"],
            )
        except InvalidKeySet as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"partner {partner.pk} {partner.name!r} ({partner.status}), scopes: {partner.allowed_scopes}")
        self.stdout.write(partner.client_id)
