"""Roll our client signing key over without downtime (docs/requesting.md), or make its due steps now.

    python manage.py rotate_client_keys            # publish a next key; it signs after P2P_KEY_PUBLISH_SECONDS
    python manage.py rotate_client_keys --advance  # the due steps now (beat does this every five minutes)
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from requesting import keys


class Command(BaseCommand):
    help = "Begin a roll-over of our client signing key, or make the roll-over's due steps."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--advance", action="store_true", help="only make the due steps")

    def handle(self, *args, advance: bool, **options) -> None:
        if not advance:
            key = keys.rotate()
            self.stdout.write(f"next key {key.kid} published; signs from {key.activate_after:%Y-%m-%d %H:%M:%S %Z}")
        for step in keys.advance():
            self.stdout.write(step)
        self.stdout.write(f"JWKS ({keys.jwks_url()}): {', '.join(k['kid'] for k in keys.jwks()['keys'])}")
