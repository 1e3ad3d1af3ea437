"""Approve a pending partner by its client id (what the admin's "Approve" action does), audited; with
`--agreement-date`, file its data-sharing agreement too (what the admin's partner form does)."""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pdex import partners
from pdex.models import Partner


class Command(BaseCommand):
    help = "Make a pending or suspended partner active, by client id; recorded in the audit trail."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("client_id")
        parser.add_argument("--agreement-date", type=date.fromisoformat, default=None,
                            help="also file the data-sharing agreement signed on this date (exports need one)")

    def handle(self, *args, client_id: str, agreement_date: date | None = None, **options) -> None:
        partner = Partner.objects.filter(application__client_id=client_id).first()
        if partner is None:
            raise CommandError(f"no partner has client id {client_id}")
        partners.approve(partner, actor="manage.py approve_partner")
        if agreement_date is not None:
            Partner.objects.filter(pk=partner.pk).update(agreement_date=agreement_date)
        self.stdout.write(f"{partner.name} ({client_id}) is active"
                          + (f", agreement of {agreement_date} on file" if agreement_date else ""))
