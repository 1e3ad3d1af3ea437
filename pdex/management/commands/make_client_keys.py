"""Generate a client signing key: a private JWK (keep it) and the public JWKS (register it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser
from joserfc.jwk import ECKey, RSAKey


def generate_private_jwk(alg: str) -> dict:
    """A fresh ES384 (P-384) or RS384 (3072-bit) private JWK whose kid is its RFC 7638 thumbprint."""
    key = ECKey.generate_key("P-384") if alg == "ES384" else RSAKey.generate_key(3072)
    private = key.as_dict(private=True)
    private.update({"kid": key.thumbprint(), "alg": alg, "use": "sig"})
    return private


def public_jwks(private_jwk: dict) -> dict:
    private_members = {"d", "p", "q", "dp", "dq", "qi", "oth"}
    return {"keys": [{name: value for name, value in private_jwk.items() if name not in private_members}]}


class Command(BaseCommand):
    help = "Write private_jwk.json (mode 600) and jwks.json (public) for a SMART backend client."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--alg", choices=["ES384", "RS384"], default="ES384")
        parser.add_argument("--out", required=True, type=Path, help="directory to write the two files into")

    def handle(self, *args, alg: str, out: Path, **options) -> None:
        out.mkdir(parents=True, exist_ok=True)
        private = generate_private_jwk(alg)
        private_path, public_path = out / "private_jwk.json", out / "jwks.json"
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(private, handle, indent=2)
        public_path.write_text(json.dumps(public_jwks(private), indent=2))
        self.stdout.write(f"kid {private['kid']} ({alg})")
        self.stdout.write(f"private key: {private_path}")
        self.stdout.write(f"public JWKS: {public_path}")
