"""Add a previous payer to the registry, discover it, and register with it.

    python manage.py add_previous_payer --name NAME --npi NPI --fhir-base URL
                                        [--register | --client-id ID] [--software-statement FILE]

`--register` uses RFC 7591 dynamic registration with our JWKS URL; `--client-id` records a registration made
out of band. An existing payer (same NPI) is updated and discovered again.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from requesting import registry
from requesting.models import PreviousPayer


class Command(BaseCommand):
    help = "Add (or update) a previous payer, discover it and register with it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--npi", required=True)
        parser.add_argument("--fhir-base", required=True)
        parser.add_argument("--member-id-system", default="")
        how = parser.add_mutually_exclusive_group()
        how.add_argument("--register", action="store_true", help="dynamic registration (RFC 7591)")
        how.add_argument("--client-id", default="", help="a client id the payer gave us out of band")
        parser.add_argument("--software-statement", type=Path, help="a file holding a software statement (JWT)")

    def handle(self, *args, name, npi, fhir_base, member_id_system, register, client_id, software_statement,
               **options) -> None:
        payer = PreviousPayer.objects.filter(npi=npi).first()
        try:
            if payer is None:
                payer = registry.add_previous_payer(name=name, npi=npi, fhir_base_url=fhir_base,
                                                    member_id_system=member_id_system, actor="command")
            else:
                payer.name, payer.fhir_base_url = name, fhir_base.rstrip("/")
                payer.member_id_system = member_id_system or payer.member_id_system
                payer.save()
                registry.refresh_discovery(payer)
            if software_statement:
                payer.software_statement = software_statement.read_text().strip()
                payer.save(update_fields=["software_statement", "updated_at"])
            if register:
                registry.register_dynamically(payer, actor="command")
            elif client_id:
                registry.set_client_id(payer, client_id, actor="command")
        except registry.RegistrationFailed as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{payer}: operations {', '.join(payer.operations)}; client id {payer.client_id or '–'}")
        if payer.client_id:
            self.stdout.write(f"connection: {registry.check_connection(payer)}")
