"""`.env.example` documents every environment variable the configuration reads."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# env("X"…), env.int("X"…), os.environ.get("X"…), os.environ["X"], "X" in os.environ
READS = re.compile(
    r"""(?:\benv(?:\.\w+)?\(|environ\.get\(|environ\[)"([A-Z][A-Z0-9_]+)\""""
    r"""|"([A-Z][A-Z0-9_]+)" in os\.environ"""
)


def test_every_variable_read_in_config_is_documented():
    read = {name for path in (ROOT / "config").glob("*.py") for pair in READS.findall(path.read_text())
            for name in pair if name}
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert {"DATABASE_URL", "REDIS_URL", "EXPORT_STORAGE_URL", "SECRET_KEY", "EXPORT_LOOKBACK_YEARS"} <= read
    assert len(read) > 40
    assert read - documented == set()
