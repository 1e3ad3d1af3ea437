"""One settings module, driven by environment variables (see .env.example for every one of them)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from config import embedded, queues

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = embedded.VAR_DIR

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")


# Values that only ever stand in for a real key (docker-compose's and .env.example's old placeholders among them).
PLACEHOLDER_SECRET_KEYS = {"", "change-me", "change-me-in-.env", "changeme", "secret", "django-insecure"}
SECRET_KEY_MIN_LENGTH = 32


def _secret_key(debug: bool) -> str:
    """SECRET_KEY signs sessions and download URLs, so outside DEBUG a placeholder stops start-up.

    Unset, a single-machine install keeps one generated under var/: made only when the service picks its own
    PostgreSQL (DATABASE_URL unset: the embedded or local default, every process on this machine), and read
    by any process of that machine afterwards. A deployment that names its DATABASE_URL names its SECRET_KEY
    too: machines that each made their own would refuse each other's signed URLs (docs/operations.md).
    """
    key_file = VAR_DIR / "secret_key"
    if "SECRET_KEY" in os.environ:
        key = os.environ["SECRET_KEY"]
        if not debug and (key.strip() in PLACEHOLDER_SECRET_KEYS or key.startswith(("change-me", "django-insecure"))
                          or len(key) < SECRET_KEY_MIN_LENGTH):
            raise ImproperlyConfigured(
                f"SECRET_KEY is a placeholder or shorter than {SECRET_KEY_MIN_LENGTH} characters. Set a random one "
                "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), or unset it on a single machine "
                "to keep a generated one under var/.")
        return key
    if not key_file.exists():
        if "DATABASE_URL" in os.environ and not debug:
            raise ImproperlyConfigured(
                "SECRET_KEY is not set. A deployment with its own DATABASE_URL must set SECRET_KEY, the same on "
                "every machine (python -c 'import secrets; print(secrets.token_urlsafe(50))'); only the "
                "single-machine default generates one under var/.")
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _secret_key(DEBUG)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
# The port web serves on (Procfile, `make run`): the advertised URLs follow it unless FHIR_BASE_URL is set.
PORT = env.int("PORT", default=8000)
FHIR_BASE_URL = env.str("FHIR_BASE_URL", default=f"http://localhost:{PORT}/fhir").rstrip("/")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "pdex.apps.PdexAdminConfig",  # django.contrib.admin with the dashboard's site (pdex/admin/dashboard.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "oauth2_provider",
    "pdex",
    "consent",
    "matching",
    "exports",
    "requesting",
]

MIDDLEWARE = [
    "pdex.logcontext.RequestIdMiddleware",
    "pdex.metrics.RequestMetricsMiddleware",
    # Before every middleware that may refuse a request (ALLOWED_HOSTS, CSRF): API clients get JSON errors.
    "pdex.fhir.FhirErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# A CSRF refusal of an API path (e.g. POST /healthz) answers JSON; the admin keeps Django's page.
CSRF_FAILURE_VIEW = "pdex.views.csrf_failure"

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- PostgreSQL and Redis -------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL") or embedded.database_url()
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Several test runs may share one server (parallel sessions, xdist): each names its own database.
DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DB_NAME", default="test_pdex")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL") or embedded.redis_url()
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="pdex"),
    }
}


def _celery_broker_url(url: str) -> str:
    """kombu spells a unix-socket Redis as redis+socket://path?virtual_host=N."""
    if url.startswith("unix://"):
        path, _, query = url[len("unix://"):].partition("?")
        db = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("db", "0")
        return f"redis+socket://{path}?virtual_host={db}"
    return url


# --- Celery: reliability settings on from day one ------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=_celery_broker_url(REDIS_URL))
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=30 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
# Longer than the longest task, or Redis hands an unacknowledged task to a second worker mid-run.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT * 2}
# Queues by kind of work (config/queues.py), all named after this prefix.
CELERY_QUEUE_PREFIX = env.str("CELERY_QUEUE", default="pdex")
CELERY_TASK_DEFAULT_QUEUE = queues.names(CELERY_QUEUE_PREFIX)["control"]
CELERY_TASK_ROUTES = queues.routes(CELERY_QUEUE_PREFIX)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# A process that dies at start-up shows its traceback as written, not one log record per write() call.
CELERY_WORKER_REDIRECT_STDOUTS = False
# Beat's schedule file lives with the rest of the local state (PDEX_VAR_DIR), wherever that is.
CELERY_BEAT_SCHEDULE_FILENAME = env.str("BEAT_SCHEDULE", default=str(VAR_DIR / "celerybeat-schedule"))
CELERY_TIMEZONE = "UTC"
# Task events for Flower / `celery events` (Procfile `flower`, docker-compose `flower`).
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=True)
CELERY_TASK_SEND_SENT_EVENT = CELERY_WORKER_SEND_TASK_EVENTS
QUEUE_NAMES = queues.names(CELERY_QUEUE_PREFIX)  # kind → queue, for /metrics' queue depths

# --- Auth ----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_EXPIRE_SECONDS": env.int("ACCESS_TOKEN_EXPIRE_SECONDS", default=300),
    "OAUTH2_VALIDATOR_CLASS": "pdex.auth.validator.SmartBackendValidator",
    # RFC 9700 (OAuth 2.0 Security BCP) behaviours, adopted now rather than at django-oauth-toolkit 4.0. Only
    # client credentials are reachable here (pdex.auth.views), so most concern flows we never serve; the
    # one that matters is that a bearer token is accepted in the Authorization header only, never a query.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_SCHEME": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,  # no refresh token is ever issued (SMART backend services)
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https"],
}
# SMART Backend Services (docs/auth.md). The token URL is the `aud` client assertions must name; by
# default the origin of FHIR_BASE_URL + /oauth/token.
TOKEN_ENDPOINT_URL = env.str("TOKEN_ENDPOINT_URL", default="")
CLIENT_ASSERTION_MAX_LIFETIME = env.int("CLIENT_ASSERTION_MAX_LIFETIME", default=300)
CLIENT_ASSERTION_CLOCK_SKEW = env.int("CLIENT_ASSERTION_CLOCK_SKEW", default=60)
JWKS_FETCH_TIMEOUT_SECONDS = env.float("JWKS_FETCH_TIMEOUT_SECONDS", default=5.0)
JWKS_CACHE_DEFAULT_SECONDS = env.int("JWKS_CACHE_DEFAULT_SECONDS", default=300)
JWKS_CACHE_MAX_SECONDS = env.int("JWKS_CACHE_MAX_SECONDS", default=3600)
# Partners' JWKS URLs must be https; plain http only for local demos and tests.
JWKS_ALLOW_HTTP = env.bool("JWKS_ALLOW_HTTP", default=DEBUG)
# Rate limits of /oauth/token and /oauth/register (docs/auth.md), counted in Redis; 0 turns one off. A partner
# needs a token every five minutes, so a minute's budget of 60 leaves room for many workers.
OAUTH_RATE_WINDOW_SECONDS = env.int("OAUTH_RATE_WINDOW_SECONDS", default=60)
TOKEN_RATE_PER_CLIENT = env.int("TOKEN_RATE_PER_CLIENT", default=60)
TOKEN_RATE_PER_ADDRESS = env.int("TOKEN_RATE_PER_ADDRESS", default=300)
REGISTER_RATE_WINDOW_SECONDS = env.int("REGISTER_RATE_WINDOW_SECONDS", default=3600)
REGISTER_RATE_PER_ADDRESS = env.int("REGISTER_RATE_PER_ADDRESS", default=20)
# The header our own reverse proxy sets to the caller's address (its last entry is used), e.g. X-Forwarded-For;
# empty: REMOTE_ADDR. Never name a header the proxy passes through from clients unchanged.
CLIENT_ADDRESS_HEADER = env.str("CLIENT_ADDRESS_HEADER", default="")

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["pdex.renderers.FhirJsonRenderer", "pdex.renderers.JsonRenderer"],
    "DEFAULT_PARSER_CLASSES": ["pdex.renderers.FhirJsonParser", "pdex.renderers.JsonParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["pdex.auth.bearer.BearerHeaderAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["pdex.auth.permissions.HasRequiredScopes"],
    "EXCEPTION_HANDLER": "pdex.fhir.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# --- Our plan (the data holder) ------------------------------------------------------------------
PAYER_NAME = env.str("PAYER_NAME", default="Old Plan Health")
PAYER_NPI = env.str("PAYER_NPI", default="1234567893")
PAYER_ORGANIZATION_ID = env.str("PAYER_ORGANIZATION_ID", default="payer-old-plan")
MEMBER_ID_SYSTEM = env.str("MEMBER_ID_SYSTEM", default="https://old-plan.example.org/fhir/memberid")

# Codes that mark a resource sensitive at ingest, besides its meta.security labels (docs/data-store.md).
SENSITIVE_SECURITY_CODES = env.list(
    "SENSITIVE_SECURITY_CODES", default=["R", "V", "ETH", "HIV", "PSY", "SDV", "SEX", "STD", "SUD", "BH", "PSYTHPN"]
)
SENSITIVE_CODES_FILE = env.path("SENSITIVE_CODES_FILE", default=str(BASE_DIR / "pdex" / "sensitive_codes.json"))
# Our capability to segment sensitive data; the consent decision needs it to honour a #regular consent.
CONSENT_CAN_SEGMENT_SENSITIVE = env.bool("CONSENT_CAN_SEGMENT_SENSITIVE", default=True)
# A data-sharing agreement in force is always required for an export kick-off; this asks it for member match too.
AGREEMENT_REQUIRED_FOR_MATCH = env.bool("AGREEMENT_REQUIRED_FOR_MATCH", default=False)

# --- Member match (docs/matching.md) ------------------------------------------------------------
MEMBER_UMB_SYSTEM = env.str("MEMBER_UMB_SYSTEM", default="https://old-plan.example.org/fhir/umb")
# The member-match failure budget (matching/budget.py, docs/matching.md): members not matched (no match, several,
# consent) one partner may submit per window, across $member-match and $bulk-member-match. A bulk request
# reserves one per member before anything is evaluated, so it may hold at most the remaining budget.
MEMBER_MATCH_MAX_FAILURES = env.int("MEMBER_MATCH_MAX_FAILURES", default=1000)
MEMBER_MATCH_FAILURE_WINDOW_SECONDS = env.int("MEMBER_MATCH_FAILURE_WINDOW_SECONDS", default=3600)
MATCH_BATCH_SIZE = env.int("MATCH_BATCH_SIZE", default=1000)

# --- Exports -------------------------------------------------------------------------------------
EXPORT_STORAGE_URL = env.str("EXPORT_STORAGE_URL", default=f"file://{VAR_DIR / 'exports'}")
AWS_ENDPOINT_URL = env.str("AWS_ENDPOINT_URL", default="") or None
EXPORT_LOOKBACK_YEARS = env.int("EXPORT_LOOKBACK_YEARS", default=5)
EXPORT_WINDOW_MODE = env.str("EXPORT_WINDOW_MODE", default="cap")  # cap (PDex 2.1.0) or floor (2.2.0)
EXPORT_PA_STATUS_MONTHS = env.int("EXPORT_PA_STATUS_MONTHS", default=12)
EXPORT_EXCLUDE_DENIED_PA = env.bool("EXPORT_EXCLUDE_DENIED_PA", default=True)
EXPORT_EXCLUDE_DRUG_PA = env.bool("EXPORT_EXCLUDE_DRUG_PA", default=True)
EXPORT_CHUNK_ROWS = env.int("EXPORT_CHUNK_ROWS", default=20_000)  # a chunk's size: estimated rows it writes
EXPORT_CHUNK_MEMBERS = env.int("EXPORT_CHUNK_MEMBERS", default=2_000)  # and at most this many members
# Writes from our own systems (pdex.write): their bearer tokens' lifetime; how long a deleted resource's
# tombstone is kept for `_since` exports (the maintenance sweep expires older ones).
INTERNAL_TOKEN_DAYS = env.int("INTERNAL_TOKEN_DAYS", default=30)
TOMBSTONE_RETENTION_DAYS = env.int("TOMBSTONE_RETENTION_DAYS", default=400)
# Where `$import` may read input files from: storage URLs (file://folder, s3://bucket/prefix); nothing else opens.
IMPORT_SOURCES = env.list("IMPORT_SOURCES", default=[f"file://{VAR_DIR / 'imports'}"])
EXPORT_FILE_MAX_BYTES = env.int("EXPORT_FILE_MAX_BYTES", default=256 * 1024 * 1024)
# PostgreSQL work_mem of an export worker's streaming connection (one per worker process): a chunk's sort of
# its rows into blocks stays in memory.
EXPORT_WORK_MEM = env.str("EXPORT_WORK_MEM", default="64MB")
EXPORT_MAX_RUNNING_JOBS = env.int("EXPORT_MAX_RUNNING_JOBS", default=4)
EXPORT_OUTPUT_TTL_SECONDS = env.int("EXPORT_OUTPUT_TTL_SECONDS", default=24 * 3600)
EXPORT_PRESIGNED_MANIFEST = env.bool("EXPORT_PRESIGNED_MANIFEST", default=False)
EXPORT_PRESIGNED_URL_SECONDS = env.int("EXPORT_PRESIGNED_URL_SECONDS", default=300)

# --- The job engine (pdex.jobs.engine): leases, attempts, the recovery sweep, for exports and matches ---
# A worker renews its lease on a unit of work (chunk, batch) every third of this; a unit whose lease ran
# out is taken over by the next worker that asks for work; a unit that fails JOB_MAX_ATTEMPTS times fails
# its job. The sweep runs every JOB_SWEEP_SECONDS on the maintenance queue.
JOB_LEASE_SECONDS = env.int("JOB_LEASE_SECONDS", default=120)
JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", default=5)
JOB_SWEEP_SECONDS = env.int("JOB_SWEEP_SECONDS", default=30)
STATUS_RETRY_AFTER_SECONDS = env.int("STATUS_RETRY_AFTER_SECONDS", default=10)  # the longest Retry-After
# A poll that finds its job about to finish is answered when it finishes, up to this long (0: never held), and
# at most STATUS_HOLDS polls per web process are held at once (docs/async-status.md, "The last stretch").
STATUS_HOLD_SECONDS = env.float("STATUS_HOLD_SECONDS", default=1.0)
STATUS_HOLDS = env.int("STATUS_HOLDS", default=2)
# Service levels (docs/service-levels.md): every job is due JOB_DEADLINE_DAYS after its request (Bulk Data's
# seven days at most); the sweep logs, and admin flags, a job still open JOB_DEADLINE_WARNING_HOURS before it.
JOB_DEADLINE_DAYS = env.int("JOB_DEADLINE_DAYS", default=7)
JOB_DEADLINE_WARNING_HOURS = env.int("JOB_DEADLINE_WARNING_HOURS", default=24)
# Whether a partner may ask for urgent handling (`Prefer: priority=urgent`); admins may raise a job anyway.
JOB_URGENT_REQUESTS = env.bool("JOB_URGENT_REQUESTS", default=True)

# --- The requesting side: pulls from previous payers (docs/requesting.md) -------------------------
# Our signing keys as a client: algorithm, how long a new key is published before it signs (longer than a
# payer may cache our JWKS), how long a retired key stays published, and the secret they are sealed with.
P2P_KEY_ALG = env.str("P2P_KEY_ALG", default="ES384")
P2P_KEY_PUBLISH_SECONDS = env.int("P2P_KEY_PUBLISH_SECONDS", default=3600)
P2P_KEY_RETIRE_SECONDS = env.int("P2P_KEY_RETIRE_SECONDS", default=3600)
P2P_KEY_ENCRYPTION_SECRET = env.str("P2P_KEY_ENCRYPTION_SECRET", default="")
# Where payers fetch our public keys; default: the origin of FHIR_BASE_URL + /client/jwks.json.
P2P_CLIENT_JWKS_URL = env.str("P2P_CLIENT_JWKS_URL", default="")
P2P_CONTACT_EMAIL = env.str("P2P_CONTACT_EMAIL", default="")
P2P_HTTP_TIMEOUT_SECONDS = env.float("P2P_HTTP_TIMEOUT_SECONDS", default=60.0)
# Polling their jobs: the wait when they send no Retry-After, the longest wait we accept from one, and how
# long a pull waits for their match or export before it gives up.
P2P_DEFAULT_RETRY_SECONDS = env.int("P2P_DEFAULT_RETRY_SECONDS", default=5)
P2P_MAX_RETRY_AFTER_SECONDS = env.int("P2P_MAX_RETRY_AFTER_SECONDS", default=300)
P2P_REMOTE_JOB_MAX_HOURS = env.int("P2P_REMOTE_JOB_MAX_HOURS", default=24)
# Downloads are spooled here (one file per unit of work, deleted once ingested); lines ingested per batch.
P2P_DOWNLOAD_DIR = env.str("P2P_DOWNLOAD_DIR", default=str(VAR_DIR / "p2p-downloads"))
P2P_INGEST_BATCH_LINES = env.int("P2P_INGEST_BATCH_LINES", default=1000)
# The schedule of follow-up pulls while a consent is valid: every P2P_RUNOFF_PULL_DAYS during the first
# P2P_RUNOFF_DAYS of our coverage (run-off), then every P2P_CONCURRENT_PULL_DAYS (concurrent coverage);
# beat looks for pulls due every P2P_SCHEDULE_SECONDS.
P2P_RUNOFF_DAYS = env.int("P2P_RUNOFF_DAYS", default=90)
P2P_RUNOFF_PULL_DAYS = env.int("P2P_RUNOFF_PULL_DAYS", default=7)
P2P_CONCURRENT_PULL_DAYS = env.int("P2P_CONCURRENT_PULL_DAYS", default=91)
P2P_SCHEDULE_SECONDS = env.int("P2P_SCHEDULE_SECONDS", default=3600)

# --- Django plumbing -----------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
FORMAT_MODULE_PATH = ["config.formats"]  # times to the second in the admin (config/formats/en/formats.py)
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# The admin's CSS/JS served by the web process itself (gunicorn serves no static files), straight from the
# apps' folders, so a single-machine install needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=50 * 1024 * 1024)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Deployment over HTTPS (`manage.py check --deploy`, docs/operations.md) ----------------------------
# Served over https when FHIR_BASE_URL says so (TLS ends at the load balancer): secure cookies and HSTS then.
SERVED_OVER_HTTPS = env.bool("SERVED_OVER_HTTPS", default=FHIR_BASE_URL.startswith("https://"))
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SERVED_OVER_HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if SERVED_OVER_HTTPS else 0)
SECURE_CONTENT_TYPE_NOSNIFF = True
SILENCED_SYSTEM_CHECKS = [
    # W008, no SECURE_SSL_REDIRECT: the load balancer redirects browsers to https; an API client that posted
    # over http must get an error, not a redirect that drops its body and its bearer token in the clear.
    "security.W008",
    # W005 and W021, HSTS without includeSubDomains and preload: both commit hosts of the parent domain that
    # this service does not own; the operator opts in at the load balancer.
    "security.W005", "security.W021",
    # oauth2_provider.W006, tokens kept in plaintext: they live five minutes (ACCESS_TOKEN_EXPIRE_SECONDS)
    # and are deleted when expired (pdex.clear_expired_tokens); hashing them at rest is an auth change of its
    # own (docs/auth.md), not a setting to flip here.
    "oauth2_provider.W006",
]
if not SERVED_OVER_HTTPS:
    # A single machine on plain http (make demo, make run): secure-only cookies would never be sent back and
    # HSTS cannot be served; these three apply, and are on, whenever FHIR_BASE_URL is https.
    SILENCED_SYSTEM_CHECKS += ["security.W004", "security.W012", "security.W016"]

# One JSON object per line (python-json-logger), each with the request id of the request or job it serves
# (pdex.logcontext); LOG_FORMAT=plain for a human at a terminal.
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "pdex.logcontext.ContextFilter"}},
    "formatters": {
        "json": {"()": "pythonjsonlogger.json.JsonFormatter",
                 "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                 "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"},
                # One line per request comes from pdex.request (with its request id); Django's own is a duplicate.
                "django.server": {"level": "WARNING"}},
}

# --- Metrics (pdex/metrics.py, docs/operations.md) -----------------------------------------------
# The web processes' counters live in files here, one per process (prometheus-client multiprocess mode);
# the Procfile empties it when web starts.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
# /metrics answers a bearer METRICS_TOKEN when one is set; otherwise only scrapers on these networks.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
METRICS_SERVICE_LEVEL_DAYS = env.int("METRICS_SERVICE_LEVEL_DAYS", default=30)

# django-oauth-toolkit's swappable models, named so Partner's foreign key to Application migrates cleanly.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth2_provider.IDToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth2_provider.Grant"

# --- Periodic tasks (Celery beat) ----------------------------------------------------------------
CELERY_BEAT_SCHEDULE = {
    "expire-outputs": {"task": "pdex.expire_outputs",
                       "schedule": env.int("EXPORT_EXPIRY_SWEEP_SECONDS", default=300)},
    # Units of work whose worker died keep an expired lease, and jobs whose messages were lost stop moving:
    # the sweep sends them again (pdex.jobs.engine.sweep).
    "sweep-stale-work": {"task": "pdex.sweep_stale_work", "schedule": JOB_SWEEP_SECONDS},
    # Consents that expired (no event says so): withdraw the completed exports holding their members, so a
    # presigned URL handed out before the expiry dies with its file (docs/consent.md, "The guarantee").
    "withdraw-ended-consents": {"task": "exports.withdraw_ended",
                                "schedule": env.int("CONSENT_WITHDRAW_SWEEP_SECONDS", default=300)},
    "clear-expired-tokens": {"task": "pdex.clear_expired_tokens",
                             "schedule": env.int("TOKEN_CLEANUP_SECONDS", default=3600)},
    # The requesting side: follow-up pulls that are due, and the steps of a signing-key roll-over.
    "schedule-pulls": {"task": "requesting.schedule_pulls", "schedule": P2P_SCHEDULE_SECONDS},
    "advance-signing-keys": {"task": "requesting.advance_signing_keys", "schedule": 300},
}
