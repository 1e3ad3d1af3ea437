"""`manage.py internal_client NAME`: register one of our own systems as a writer (if new) and print a token."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pdex.extract import SOURCE_FORMATS
from pdex.models import InternalClient
from pdex.write import access


class Command(BaseCommand):
    help = "Register an internal client (our claims, clinical or PA system) and print a bearer token for it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--scope", default=access.DEFAULT_SCOPE, help="write scopes of a new client")
        parser.add_argument("--source-format", default="", choices=["", *SOURCE_FORMATS],
                            help="what its data is made from (PDex ProvenancePayerDataSource code)")
        parser.add_argument("--days", type=int, default=None, help="token lifetime (INTERNAL_TOKEN_DAYS)")

    def handle(self, *args, name: str, scope: str, source_format: str, days: int | None, **options) -> None:
        client = InternalClient.objects.filter(name=name).first()
        if client is None:
            try:
                client = access.register_internal_client(name, scope=scope, source_format=source_format,
                                                         actor="manage.py internal_client")
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            self.stderr.write(f"registered internal client {name!r} with {client.allowed_scopes}")
        try:
            token = access.issue_token(client, days=days)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(token.token)
