"""Tollgate settings, read from the environment.

With no environment at all Tollgate runs on an embedded default: a SQLite
file under var/, a local-memory cache, Celery tasks run in-process and DEBUG
on. Each variable below switches one piece to its production counterpart;
README.md lists them all.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from celery.schedules import crontab
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.getenv("TOLLGATE_VAR_DIR", BASE_DIR / "var"))


def envbool(name: str, default: str) -> bool:
    return os.getenv(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: str) -> int:
    return int(os.getenv(name, default))


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    """Turn postgres://user:pass@host:port/name?opt=val into a DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql", "sqlite"):
        raise ValueError(f"DATABASE_URL scheme {parsed.scheme!r} is not supported")
    if parsed.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parsed.path) or ":memory:"}
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    conn_max_age = envint("DB_CONN_MAX_AGE", "0")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "tollgate",
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": conn_max_age,
        # A kept connection may have died with a database restart: test it before each
        # request reuses it, instead of failing that request.
        "CONN_HEALTH_CHECKS": conn_max_age > 0,
        "OPTIONS": options,
    }


def generated_secret(path: Path) -> str:
    """A secret kept in var/ so sessions survive restarts of the embedded default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


TOLLGATE_ENV = os.getenv("TOLLGATE_ENV", "development")
PRODUCTION = TOLLGATE_ENV == "production"

DEBUG = envbool("DEBUG", "false" if PRODUCTION else "true")
if PRODUCTION and not os.getenv("SECRET_KEY"):
    raise RuntimeError("SECRET_KEY must be set when TOLLGATE_ENV=production")
SECRET_KEY = os.getenv("SECRET_KEY") or generated_secret(VAR_DIR / "secret_key")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", "")

# Reverse proxies (IPs or CIDRs) whose X-Forwarded-For is believed: the client address is the
# first hop, read from the right, that is not one of them (accounts.client_address). Empty:
# the header is ignored and REMOTE_ADDR is the client.
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES", "")
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as _error:
        raise RuntimeError(f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or CIDR network") from _error

# Upstream credentials are encrypted with these keys (Fernet). The first key
# encrypts; every key decrypts, so a new key can be put in front and old rows
# re-encrypted with `manage.py rotate_credentials` before the old key is removed.
CREDENTIALS_KEYS = envlist("CREDENTIALS_KEYS", "")
if not CREDENTIALS_KEYS:
    if PRODUCTION:
        raise RuntimeError("CREDENTIALS_KEYS must be set when TOLLGATE_ENV=production")
    CREDENTIALS_KEYS = [generated_secret(VAR_DIR / "credentials_key")]
if PRODUCTION:
    # A passphrase weaker than a key would be the weakest link of the encryption: refuse to
    # start (`check --deploy` flags the same outside production: accounts.checks).
    from accounts.crypto import weak_keys

    if _weak := weak_keys(CREDENTIALS_KEYS):
        raise RuntimeError("CREDENTIALS_KEYS is too weak for production: " + " ".join(_weak))

# Upstream base URLs: link-local and cloud metadata addresses are always refused; loopback and
# private networks only while this is on. The embedded default allows them (a local fake
# upstream, a relay on the LAN); production refuses them unless it is set.
UPSTREAM_ALLOW_PRIVATE_NETWORKS = envbool(
    "UPSTREAM_ALLOW_PRIVATE_NETWORKS", "false" if PRODUCTION else "true"
)

INSTALLED_APPS = [
    "console.admin_site.ConsoleAdminConfig",  # django.contrib.admin, for admins only
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "django_tables2",
    # Dependencies point one way, down this list: console → gateway → billing → channels →
    # accounts → common (tests/test_layout.py checks every import).
    "common",
    "accounts",
    "channels",
    "billing",
    "gateway",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "console.middleware.StaffOnlyConsoleMiddleware",
]

if PRODUCTION:
    # Static files from the built manifest; runserver and live_server serve them in development.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.console",
            ],
        },
    },
]

if os.getenv("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "tollgate.sqlite3",
            # Writers wait for each other instead of failing with "database is locked".
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.getenv("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.getenv("CACHE_KEY_PREFIX", "tollgate"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Sign-in throttle (console.throttle). LOGIN_FAILURE_LIMIT failures for one email lock it,
# from every address, for LOGIN_FAILURE_WINDOW_SECONDS after the last counted failure.
# LOGIN_IP_FAILURE_LIMIT failures from one client address throttle that address: from then on
# it may only try emails that have no failures, so it cannot lock every staff member out.
LOGIN_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", "5")
LOGIN_IP_FAILURE_LIMIT = envint("LOGIN_IP_FAILURE_LIMIT", "20")
LOGIN_FAILURE_WINDOW_SECONDS = envint("LOGIN_FAILURE_WINDOW_SECONDS", "900")

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.getenv("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.getenv("STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

DJANGO_TABLES2_TEMPLATE = "components/table.html"
DJANGO_TABLES2_TABLE_ATTRS = {"class": "table table-hover align-middle mb-0"}

# Content-Security-Policy: nothing from other origins, inline scripts only
# with the per-response nonce.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.SELF],
    "object-src": [CSP.NONE],
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = envint("SESSION_COOKIE_AGE", str(60 * 60 * 12))

# Load balancers probe the backend over plain HTTP: /healthz must answer there, not redirect.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "true")
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", str(60 * 60 * 24 * 365))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True


def envfloat(name: str, default: str) -> float:
    return float(os.getenv(name, default))


# The gateway (docs/gateway.md; README "The gateway"). Timeouts are in seconds.
GATEWAY_CONNECT_TIMEOUT = envfloat("GATEWAY_CONNECT_TIMEOUT", "10")
GATEWAY_FIRST_BYTE_TIMEOUT = envfloat("GATEWAY_FIRST_BYTE_TIMEOUT", "120")
GATEWAY_IDLE_TIMEOUT = envfloat("GATEWAY_IDLE_TIMEOUT", "120")
GATEWAY_TOTAL_TIMEOUT = envfloat("GATEWAY_TOTAL_TIMEOUT", "900")
GATEWAY_MAX_BODY_BYTES = envint("GATEWAY_MAX_BODY_BYTES", str(32 * 1024 * 1024))
GATEWAY_MAX_ATTEMPTS = envint("GATEWAY_MAX_ATTEMPTS", "3")
GATEWAY_UPSTREAM_POOL_SIZE = envint("GATEWAY_UPSTREAM_POOL_SIZE", "512")
GATEWAY_DB_THREADS = envint("GATEWAY_DB_THREADS", "4")
# Holds of one key that wait while its hold runs go together, at most this many per query string
# (docs/gateway.md#hold-batches).
GATEWAY_HOLD_BATCH_SIZE = envint("GATEWAY_HOLD_BATCH_SIZE", "64")
# A hold that goes alone is sent from the event loop on one of at most this many connections per
# process (0: every hold on a database thread; docs/gateway.md#holds-on-the-event-loop).
GATEWAY_LOOP_HOLD_CONNECTIONS = envint("GATEWAY_LOOP_HOLD_CONNECTIONS", "4")
# The hold starts beside the admission's round trip, not after it (docs/gateway.md#the-hold-beside-the-admission).
GATEWAY_HOLD_BESIDE_ADMISSION = envbool("GATEWAY_HOLD_BESIDE_ADMISSION", "true")
# How long Python lets one thread keep the GIL when another wants it (5 ms by default): a database
# thread whose answer has come waits for the event loop at most this long (docs/gateway.md#serving).
GATEWAY_SWITCH_INTERVAL_MS = envfloat("GATEWAY_SWITCH_INTERVAL_MS", "1")
# A tick on the event loop this often measures how late the loop runs (0 turns the watch off); a
# loop blocked this much longer than the tick's interval is logged with its stack (0: no log;
# docs/gateway.md#event-loop-lag-and-stalls).
GATEWAY_LOOP_WATCH_INTERVAL_MS = envfloat("GATEWAY_LOOP_WATCH_INTERVAL_MS", "100")
GATEWAY_LOOP_STALL_LOG_MS = envfloat("GATEWAY_LOOP_STALL_LOG_MS", "200")
# At most one stall warning (with its stack) per worker this often; the stalls in between are counted
# (0: every stall is logged).
GATEWAY_LOOP_STALL_LOG_EVERY_S = envfloat("GATEWAY_LOOP_STALL_LOG_EVERY_S", "60")
# Once started, what a gateway process has loaded is frozen out of the garbage collector's full
# collections (gc.freeze: docs/gateway.md#serving).
GATEWAY_GC_FREEZE = envbool("GATEWAY_GC_FREEZE", "true")
# The recorder thread: at most this many finished requests per transaction, and how long a batch
# that is not full waits for more (docs/recording.md#batches).
GATEWAY_RECORD_BATCH_SIZE = envint("GATEWAY_RECORD_BATCH_SIZE", "64")
GATEWAY_RECORD_BATCH_WAIT_MS = envfloat("GATEWAY_RECORD_BATCH_WAIT_MS", "25")
GATEWAY_SNAPSHOT_TTL = envfloat("GATEWAY_SNAPSHOT_TTL", "10")
GATEWAY_SNAPSHOT_REDIS_TTL = envint("GATEWAY_SNAPSHOT_REDIS_TTL", "300")
GATEWAY_SNAPSHOT_CACHE_SIZE = envint("GATEWAY_SNAPSHOT_CACHE_SIZE", "20000")
GATEWAY_NEGATIVE_TTL = envfloat("GATEWAY_NEGATIVE_TTL", "5")
GATEWAY_NEGATIVE_CACHE_SIZE = envint("GATEWAY_NEGATIVE_CACHE_SIZE", "10000")
GATEWAY_STICKY_TTL = envfloat("GATEWAY_STICKY_TTL", "3600")
GATEWAY_STICKY_SIZE = envint("GATEWAY_STICKY_SIZE", "100000")
GATEWAY_RATE_LIMIT_DEFAULT_SECONDS = envfloat("GATEWAY_RATE_LIMIT_DEFAULT_SECONDS", "60")
GATEWAY_NO_ACCOUNT_RETRY_SECONDS = envfloat("GATEWAY_NO_ACCOUNT_RETRY_SECONDS", "5")
GATEWAY_SHUTDOWN_SECONDS = envfloat("GATEWAY_SHUTDOWN_SECONDS", "30")
# Holds and pending records (docs/gateway.md#holds-and-settle): the output tokens a request without
# max_tokens is held for, and how long a pending record may stay before recovery settles it (a
# live request never outlasts the total timeout; the margin covers its recording).
GATEWAY_DEFAULT_OUTPUT_TOKENS = envint("GATEWAY_DEFAULT_OUTPUT_TOKENS", "1024")
GATEWAY_HOLD_LEASE_SECONDS = envfloat("GATEWAY_HOLD_LEASE_SECONDS", str(GATEWAY_TOTAL_TIMEOUT + 60))
# A held stream writes the usage it has seen so far to its pending record this often, so recovery
# after a crash bills what was observed rather than the estimate (docs/gateway.md#pending-records);
# shorter streams write nothing. 0 turns it off.
GATEWAY_OBSERVE_EVERY_SECONDS = envfloat("GATEWAY_OBSERVE_EVERY_SECONDS", "5")
# SIGTERM: how long requests in flight may still run before their upstream is cut (then recorded
# as cut); new requests meanwhile get 503 SHUTTING_DOWN (docs/gateway.md#shutdown).
GATEWAY_DRAIN_SECONDS = envfloat("GATEWAY_DRAIN_SECONDS", "60")
# Where slots and RPM windows live (docs/gateway.md#shared-limits): "redis" (default with
# REDIS_URL), "database" (default without), or "process" (this process only: one worker).
GATEWAY_LIMITS = os.getenv("GATEWAY_LIMITS", "")
# How long a concurrency slot stays taken if its process dies; 0 = GATEWAY_TOTAL_TIMEOUT + 60.
GATEWAY_SLOT_LEASE_SECONDS = envfloat("GATEWAY_SLOT_LEASE_SECONDS", "0")
# Seconds the gateway waits for Redis (connect or reply) before it counts slots in its own process.
GATEWAY_REDIS_TIMEOUT = envfloat("GATEWAY_REDIS_TIMEOUT", "2")
# Where accounts without a base URL of their own send requests (OAuth and setup-token accounts
# always): the providers' official endpoints; `make run` points both at the fake upstream.
GATEWAY_OPENAI_BASE_URL = os.getenv("GATEWAY_OPENAI_BASE_URL", "https://api.openai.com")
GATEWAY_ANTHROPIC_BASE_URL = os.getenv("GATEWAY_ANTHROPIC_BASE_URL", "https://api.anthropic.com")
# The Redis pub/sub channel every gateway process hears snapshot invalidations on.
GATEWAY_INVALIDATION_CHANNEL = os.getenv("GATEWAY_INVALIDATION_CHANNEL", "tollgate:snapshots")

# Celery: Redis is the broker when REDIS_URL is set; otherwise tasks run
# in-process (eager) and the console says scheduled jobs are off.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_IGNORE_RESULT = True
SCHEDULED_JOBS_ENABLED = bool(REDIS_URL)

# Reconcile and prune (docs/jobs.md#reconcile-runs, docs/jobs.md#prune).
USAGE_RETENTION_DAYS = envint("USAGE_RETENTION_DAYS", "90")
# A token scripts send as "Authorization: Bearer …" to read /reconcile/api/ without a session;
# empty (the default) turns token access off.
RECONCILE_API_TOKEN = os.getenv("RECONCILE_API_TOKEN", "")
# The host id every run and correction records; empty means the machine's hostname.
RECONCILE_HOST_ID = os.getenv("RECONCILE_HOST_ID", "")

# The beat schedule (docs/jobs.md#what-runs): `celery -A config beat` sends these, a worker runs
# them. Every entry names a registered task (tests/accounts/test_jobs.py). Intervals in seconds.
JOBS_EXPIRE_EVERY_SECONDS = envint("JOBS_EXPIRE_EVERY_SECONDS", "300")
JOBS_PAUSE_ACCOUNTS_EVERY_SECONDS = envint("JOBS_PAUSE_ACCOUNTS_EVERY_SECONDS", "300")
# Hours in TIME_ZONE for the nightly jobs, and how often stale pending records are looked for.
JOBS_RECONCILE_HOUR = envint("JOBS_RECONCILE_HOUR", "3")
JOBS_PRUNE_HOUR = envint("JOBS_PRUNE_HOUR", "4")
JOBS_RECOVER_EVERY_SECONDS = envint("JOBS_RECOVER_EVERY_SECONDS", "60")
JOBS_DASHBOARD_WARM_EVERY_SECONDS = envint("JOBS_DASHBOARD_WARM_EVERY_SECONDS", "300")
CELERY_BEAT_SCHEDULE = {
    "expire-keys": {"task": "accounts.expire_keys", "schedule": JOBS_EXPIRE_EVERY_SECONDS},
    "expire-subscriptions": {
        "task": "accounts.expire_subscriptions",
        "schedule": JOBS_EXPIRE_EVERY_SECONDS,
    },
    "pause-expired-accounts": {
        "task": "accounts.pause_expired_accounts",
        "schedule": JOBS_PAUSE_ACCOUNTS_EVERY_SECONDS,
    },
    # A dry-run reconcile of every scope; its drift shows on the dashboard (docs/jobs.md#reconcile-runs).
    "nightly-reconcile": {
        "task": "billing.reconcile_nightly",
        "schedule": crontab(hour=JOBS_RECONCILE_HOUR, minute=0),
    },
    # Ledger rows past USAGE_RETENTION_DAYS, folded into the carry-forward first (docs/jobs.md).
    "prune-usage": {"task": "billing.usage_prune", "schedule": crontab(hour=JOBS_PRUNE_HOUR, minute=30)},
    # Pending records whose lease has passed: a gateway process died (docs/gateway.md#pending-records).
    "recover-pending-requests": {
        "task": "gateway.pending_recover",
        "schedule": JOBS_RECOVER_EVERY_SECONDS,
    },
    # The dashboard's closed hours and days summed into the cache ahead of the first visitor.
    "warm-dashboard": {"task": "console.dashboard_warm", "schedule": JOBS_DASHBOARD_WARM_EVERY_SECONDS},
}

# Logs (README "Logging"): human-readable lines by default, one JSON object per line with
# LOG_FORMAT=json; either way a line about a gateway request carries its request id.
LOG_FORMAT = os.getenv("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise RuntimeError(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "common.logs.RequestIdFilter"}},
    "formatters": {
        "plain": {"()": "common.logs.PlainFormatter"},
        "json": {"()": "common.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}
    },
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# Metrics (README "Metrics"): GET /metrics, for a bearer token and/or from listed addresses. With
# neither set, production refuses every scrape and the embedded default answers loopback only.
# Several worker processes share their numbers through PROMETHEUS_MULTIPROC_DIR (read by
# prometheus_client from the environment itself).
METRICS_TOKEN = os.getenv("METRICS_TOKEN", "")
METRICS_ALLOWED_IPS = envlist("METRICS_ALLOWED_IPS", "")
for _network in METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _error:
        raise RuntimeError(
            f"METRICS_ALLOWED_IPS: {_network!r} is not an IP address or CIDR network"
        ) from _error
# Distinct model names one process labels metrics with; past it a model is counted as "other"
# (a client chooses the model string, and each label value costs memory for good).
METRICS_MAX_MODELS = envint("METRICS_MAX_MODELS", "200")
