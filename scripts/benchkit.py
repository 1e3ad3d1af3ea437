"""What the benchmarks share: each runs in a fresh database of its own, never the one the tests or demo use."""

from __future__ import annotations


def recreate_database(name: str) -> None:
    """Drop and create database `name` on the configured server, and point Django at it (before setup)."""
    from django.conf import settings

    from config.embedded import recreate_database as recreate

    db = settings.DATABASES["default"]
    recreate(db, name)
    db["NAME"] = name


def database_url() -> str:
    """The benchmark database's URL, for worker subprocesses."""
    from django.db import connection

    from config.embedded import settings_database_url

    return settings_database_url(connection.settings_dict)
