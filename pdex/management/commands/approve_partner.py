"""Approve a pending partner by its client id (what the admin's "Approve" action does), audited."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pdex import partners
from pdex.models import Partner


class Command(BaseCommand):
    help = "Make a pending or suspended partner active, by client id; recorded in the audit trail."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("client_id")

    def handle(self, *args, client_id: str, **options) -> None:
        partner = Partner.objects.filter(application__client_id=client_id).first()
        if partner is None:
            raise CommandError(f"no partner has client id {client_id}")
        partners.approve(partner, actor="manage.py approve_partner")
        self.stdout.write(f"{partner.name} ({client_id}) is active")
