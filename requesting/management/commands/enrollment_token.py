"""A bearer token for one of our enrollment systems to write consents (POST /fhir/Consent).

    python manage.py enrollment_token "Enrollment portal" [--days 90]

Its scope (`enrollment/Consent.write`) is one no partner can ever be granted (docs/requesting.md).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from requesting.enrollment import ENROLLMENT_CONSENT_SCOPE, issue_token


class Command(BaseCommand):
    help = "Issue a bearer token for an enrollment system to record members' consents for previous payers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("system", help="which enrollment system it is for")
        parser.add_argument("--days", type=int, default=90, help="lifetime of the token")

    def handle(self, *args, system: str, days: int, **options) -> None:
        token = issue_token(system, days=days)
        self.stderr.write(f"scope {ENROLLMENT_CONSENT_SCOPE}, expires {token.expires:%Y-%m-%d}")
        self.stdout.write(token.token)
