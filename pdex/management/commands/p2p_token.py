"""Print a bearer token for a partner's key, so a partner engineer can call the API with curl.

What a partner's client does (SMART Backend Services): sign a short-lived client assertion with its private
key and trade it at the token endpoint. It needs no access to our database: only the key, the client id and
the token URL (by default found through the FHIR base's SMART discovery). docs/quickstart.md uses it.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pdex.auth import client
from pdex.management.commands.create_partner import PAYER_TO_PAYER_SCOPES


class Command(BaseCommand):
    help = "Sign a client assertion with a partner's private key and print the bearer token (or the assertion)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--key", required=True, type=Path, help="the partner's private JWK (make_client_keys)")
        parser.add_argument("--client-id", required=True, help="the client id registration answered")
        parser.add_argument("--fhir-base", default="http://localhost:8000/fhir",
                            help="FHIR base URL; its SMART discovery names the token endpoint")
        parser.add_argument("--token-url", default="", help="the token endpoint, instead of discovery")
        parser.add_argument("--scope", default=" ".join(PAYER_TO_PAYER_SCOPES))
        parser.add_argument("--assertion-only", action="store_true",
                            help="print the signed client assertion instead, to send to the token endpoint yourself")

    def handle(self, *args, key: Path, client_id: str, fhir_base: str, token_url: str, scope: str,
               assertion_only: bool, **options) -> None:
        try:
            private_jwk = json.loads(key.read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read the private key: {exc}") from exc
        try:
            token_url = token_url or client.discover(fhir_base)["token_endpoint"]
            if assertion_only:
                self.stdout.write(client.make_client_assertion(private_jwk, client_id, token_url))
                return
            answer = client.request_token(token_url, client_id, private_jwk, scope)
        except Exception as exc:  # a command line tool: whatever went wrong, said in one line
            raise CommandError(f"no token: {type(exc).__name__}: {exc}") from exc
        self.stderr.write(f"scope: {answer.get('scope', '')}; expires in {answer.get('expires_in')} s")
        self.stdout.write(answer["access_token"])
