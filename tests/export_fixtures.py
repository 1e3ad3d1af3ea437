"""Folded into tests.builders; this name stays only for scripts/bench_everything.py, which imports
`consent_for` from here (outside tests/, not changed with the tests). Delete this file once that script
imports `from tests.builders import consent_for`."""

from tests.builders import consent_for

__all__ = ["consent_for"]
