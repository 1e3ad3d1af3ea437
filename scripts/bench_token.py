"""Token endpoint benchmark: signed client assertions in, bearer tokens out, per second.

Creates a throw-away partner per algorithm (ES384, RS384), posts BENCH_TOKENS token requests for each
through the full Django stack (form parsing, DOT, assertion verification, Redis jti check, token row,
audit row), and prints tokens per second; then the assertion verification alone (no database, no Redis)
for comparison. Runs in a database of its own (`<the configured database>_bench_token`, re-created each run), so
its figures do not move with whatever the application's database holds.

    make bench-token            # or: BENCH_TOKENS=500 .venv/bin/python scripts/bench_token.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Throughput, not the rate limits: they would refuse the 61st token of a client in a minute (test_auth_ratelimit
# pins them); counters under a prefix of this run's own.
os.environ.update({"TOKEN_RATE_PER_CLIENT": "1000000", "TOKEN_RATE_PER_ADDRESS": "1000000",
                   "CACHE_KEY_PREFIX": f"bench-token-{os.getpid()}"})

import django  # noqa: E402
from benchkit import bench_database, recreate_database  # noqa: E402

recreate_database(bench_database("token"))  # before Django connects: a database of its own
django.setup()

from django.test import Client  # noqa: E402
from oauth2_provider.models import AccessToken  # noqa: E402

from pdex import partners  # noqa: E402
from pdex.auth.assertion import ClientKeys, verify_client_assertion  # noqa: E402
from pdex.auth.client import make_client_assertion, token_form  # noqa: E402
from pdex.auth.discovery import token_endpoint_url  # noqa: E402
from pdex.management.commands.make_client_keys import generate_private_jwk, public_jwks  # noqa: E402

N = int(os.environ.get("BENCH_TOKENS", "300"))


def bench(alg: str) -> None:
    private = generate_private_jwk(alg)
    partner = partners.create_partner(name=f"bench-token-{alg}", jwks=public_jwks(private), scope="system/*.read",
                                      status="active", registered_via="command")
    url = token_endpoint_url()
    client = Client()
    try:
        forms = [urlencode(token_form(make_client_assertion(private, partner.client_id, url), "system/*.rs"))
                 for _ in range(N)]
        started = time.perf_counter()
        for form in forms:
            response = client.post("/oauth/token", form, content_type="application/x-www-form-urlencoded")
            assert response.status_code == 200, response.content
        elapsed = time.perf_counter() - started
        print(f"{alg}: {N} tokens in {elapsed:.2f} s = {N / elapsed:.0f} tokens/s "
              f"({1000 * elapsed / N:.1f} ms each, full stack in-process)")

        keys = ClientKeys(client_id=partner.client_id, active=True, jwks=partner.jwks, jwks_url="")
        now = int(time.time())
        started = time.perf_counter()
        for form in forms:
            assertion = dict(pair.split("=", 1) for pair in form.split("&"))["client_assertion"]
            verify_client_assertion(assertion, token_url=url, now=now, find_client=lambda _: keys)
        elapsed = time.perf_counter() - started
        print(f"{alg}: assertion verification alone {N / elapsed:.0f} /s ({1000 * elapsed / N:.2f} ms each)")
    finally:
        AccessToken.objects.filter(application=partner.application).delete()
        application = partner.application
        partner.delete()
        application.delete()


if __name__ == "__main__":
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    for alg in ("ES384", "RS384"):
        bench(alg)
