"""Django settings: everything an operator sets comes from the environment (operations.md)."""

import json
import os
from pathlib import Path

from mailsite import env

BASE_DIR = Path(__file__).resolve().parent.parent
env.load_dotenv(BASE_DIR / ".env")

VAR_DIR = BASE_DIR / "var"

SECRET_KEY = env.secret_key(VAR_DIR)
DEBUG = env.get_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in env.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "mailcore",
]

MIDDLEWARE = [
    # First: the client's address and scheme, from trusted proxies only, before anything reads them.
    "mailcore.web.proxy.TrustedProxyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "mailcore.services.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mailsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

WSGI_APPLICATION = "mailsite.wsgi.application"
ASGI_APPLICATION = "mailsite.asgi.application"

DATABASES = {"default": env.database_from_url(env.get("DATABASE_URL", "sqlite:///var/db.sqlite3"), BASE_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"

# --- Mail settings (operations.md, "Settings") -------------------------------------------------

MAIL_HOSTNAME = env.get("MAIL_HOSTNAME") or env.fqdn()
MAIL_SMTP_BIND = env.parse_binds(env.get("MAIL_SMTP_BIND", "127.0.0.1:2525"))
MAIL_SUBMISSION_BIND = env.parse_binds(env.get("MAIL_SUBMISSION_BIND", "127.0.0.1:2587"))
MAIL_POP3_BIND = env.parse_binds(env.get("MAIL_POP3_BIND", "127.0.0.1:2110"))
# POP3: implicit-TLS listeners (the port-995 role), where USER/PASS and AUTH PLAIN work
# before TLS (loopback | always | never), the RFC 1939 §3 autologout timer, and limits.
MAIL_POP3_TLS_BIND = env.parse_binds(env.get("MAIL_POP3_TLS_BIND", ""))
MAIL_POP3_PLAINTEXT = env.get("MAIL_POP3_PLAINTEXT", "loopback")
MAIL_POP3_IDLE_TIMEOUT = env.get_float("MAIL_POP3_IDLE_TIMEOUT", 600.0)
MAIL_POP3_MAX_LINE = env.get_int("MAIL_POP3_MAX_LINE", 255)
MAIL_POP3_MAX_BAD_COMMANDS = env.get_int("MAIL_POP3_MAX_BAD_COMMANDS", 10)
MAIL_POP3_LOCK_TTL = env.get_float("MAIL_POP3_LOCK_TTL", 300.0)
MAIL_POP3_MAX_CONNECTIONS = env.get_int("MAIL_POP3_MAX_CONNECTIONS", 200)
MAIL_POP3_MAX_CONNECTIONS_PER_CLIENT = env.get_int("MAIL_POP3_MAX_CONNECTIONS_PER_CLIENT", 20)
MAIL_POP3_SHUTDOWN_GRACE = env.get_float("MAIL_POP3_SHUTDOWN_GRACE", 10.0)
MAIL_WEB_BIND = env.parse_binds(env.get("MAIL_WEB_BIND", "127.0.0.1:8000"))
MAIL_TLS_CERT = env.get("MAIL_TLS_CERT")
MAIL_TLS_KEY = env.get("MAIL_TLS_KEY")
MAIL_MAX_MESSAGE_SIZE = env.get_int("MAIL_MAX_MESSAGE_SIZE", 26214400)
MAIL_DNS_SERVERS = env.parse_dns_servers(env.get("MAIL_DNS_SERVERS", ""))
MAIL_REMOTE_SMTP_PORT = env.get_int("MAIL_REMOTE_SMTP_PORT", 25)
MAIL_ALLOW_PRIVATE_DESTINATIONS = env.get_bool("MAIL_ALLOW_PRIVATE_DESTINATIONS", False)
MAIL_CALLBACK_INTERVAL = env.get_int("MAIL_CALLBACK_INTERVAL", 30)
MAIL_SOURCE_RETENTION = env.get_int("MAIL_SOURCE_RETENTION", 432000)
MAIL_CALLBACK_MAX_AGE = env.get_int("MAIL_CALLBACK_MAX_AGE", 86400)
# Seconds a pull waits for the origin MX at each step (connect, each reply, each body line).
MAIL_CALLBACK_TIMEOUT = env.get_float("MAIL_CALLBACK_TIMEOUT", 60.0)
# Connections one sweep keeps open at once to one origin host, however many sender domains it serves.
MAIL_CALLBACK_HOST_CONCURRENCY = env.get_int("MAIL_CALLBACK_HOST_CONCURRENCY", 2)
MAIL_USE_SOURCE = env.get_bool("MAIL_USE_SOURCE", True)
# Minutes between runs of the task that ends sourced messages' retention (spec §3 rule 5); a
# notice is sent at most this late after MAIL_SOURCE_RETENTION.
MAIL_SOURCE_EXPIRY_MINUTES = env.get_int("MAIL_SOURCE_EXPIRY_MINUTES", 10)
# Spam check: spamd's HOST:PORT (unset: no spam check), how long to wait for a score,
# and the size above which a message is not scored (spamc's own default limit is 500 KiB).
MAIL_SPAMD = (env.parse_binds(env.get("MAIL_SPAMD", "")) or [None])[0]
MAIL_SPAMD_TIMEOUT = env.get_float("MAIL_SPAMD_TIMEOUT", 5.0)
MAIL_SPAMD_MAX_SIZE = env.get_int("MAIL_SPAMD_MAX_SIZE", 512000)
# Inbound SMTP listener and the SOURCE/GET verbs (reverse-delivery.md §3, §4, §6).
MAIL_SMTP_MAX_CONNECTIONS = env.get_int("MAIL_SMTP_MAX_CONNECTIONS", 1000)
MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT = env.get_int("MAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT", 50)
MAIL_SMTP_COMMAND_TIMEOUT = env.get_float("MAIL_SMTP_COMMAND_TIMEOUT", 300.0)  # RFC 5321 §4.5.3.2.7
MAIL_SMTP_DATA_TIMEOUT = env.get_float("MAIL_SMTP_DATA_TIMEOUT", 180.0)  # RFC 5321 §4.5.3.2.5, per block
MAIL_SMTP_MAX_BAD_COMMANDS = env.get_int("MAIL_SMTP_MAX_BAD_COMMANDS", 20)
# RFC 5321 §6.3: a message with more Received headers than this went round a loop (554 5.4.6).
MAIL_MAX_RECEIVED_HEADERS = env.get_int("MAIL_MAX_RECEIVED_HEADERS", 30)
MAIL_SMTP_MAX_RECIPIENTS = env.get_int("MAIL_SMTP_MAX_RECIPIENTS", 100)
MAIL_SMTP_SHUTDOWN_GRACE = env.get_float("MAIL_SMTP_SHUTDOWN_GRACE", 30.0)
MAIL_SMTP_WORKER_THREADS = env.get_int("MAIL_SMTP_WORKER_THREADS", 8)
# runsmtp's processes (processes.py): one Python process uses one core, so one per core.
MAIL_SMTP_PROCESSES = env.get_int("MAIL_SMTP_PROCESSES", os.cpu_count() or 1)
# Group commit on the MX: at most this many messages per batch, this many batches at
# once (on SQLite they store bodies in parallel and take turns to commit).
MAIL_SMTP_COMMIT_BATCH = env.get_int("MAIL_SMTP_COMMIT_BATCH", 64)
MAIL_SMTP_COMMITTERS = env.get_int("MAIL_SMTP_COMMITTERS", 1)
# Seconds an RCPT verdict (mailbox exists, domain policy) is reused by the MX; 0 turns it off.
MAIL_SMTP_RECIPIENT_CACHE = env.get_float("MAIL_SMTP_RECIPIENT_CACHE", 2.0)
MAIL_SOURCE_MAX_PENDING_PER_CLIENT = env.get_int("MAIL_SOURCE_MAX_PENDING_PER_CLIENT", 500)
MAIL_SOURCE_MAX_PENDING_PER_DOMAIN = env.get_int("MAIL_SOURCE_MAX_PENDING_PER_DOMAIN", 500)
# Ids of clients without a good record asked of one origin MX a minute (reverse-delivery.md §6,
# Fair pulls): below the usual unknown-id limit of an origin (10 a minute).
MAIL_CALLBACK_UNKNOWN_PACE = env.get_int("MAIL_CALLBACK_UNKNOWN_PACE", 5)
MAIL_GET_MAX_UNKNOWN_PER_MINUTE = env.get_int("MAIL_GET_MAX_UNKNOWN_PER_MINUTE", 10)
MAIL_SOURCE_STRICT = env.get_bool("MAIL_SOURCE_STRICT", False)
# Days a sender domain stays remembered as delivering by SOURCE after its last verified message
# (reverse-delivery.md §5.8: its DATA mail is then a downgrade); 0 turns the memory off.
MAIL_SOURCE_PIN_DAYS = env.get_int("MAIL_SOURCE_PIN_DAYS", 30)
# Outbound queue: retry delays in seconds, the last one repeating (RFC 5321 §4.5.4.1
# asks for at least 30 minutes between retries eventually, and gives up after 4-5 days).
MAIL_QUEUE_RETRY_DELAYS = [int(d) for d in env.get("MAIL_QUEUE_RETRY_DELAYS", "60,300,900,1800,3600").split(",") if d.strip()]
MAIL_QUEUE_LIFETIME = env.get_int("MAIL_QUEUE_LIFETIME", 432000)
MAIL_QUEUE_DELAY_WARNING = env.get_int("MAIL_QUEUE_DELAY_WARNING", 14400)
MAIL_QUEUE_LEASE = env.get_int("MAIL_QUEUE_LEASE", 600)
MAIL_QUEUE_SWEEP_MINUTES = env.get_int("MAIL_QUEUE_SWEEP_MINUTES", 1)
MAIL_SMTP_CONNECT_TIMEOUT = env.get_float("MAIL_SMTP_CONNECT_TIMEOUT", 30.0)
MAIL_SMTP_CLIENT_TIMEOUT = env.get_float("MAIL_SMTP_CLIENT_TIMEOUT", 120.0)
MAIL_DNS_TIMEOUT = env.get_float("MAIL_DNS_TIMEOUT", 10.0)
# DNS answers kept per process for their TTL (entries; 0 turns the cache off), and the longest a
# negative answer (no such name or record) is kept, whatever its SOA says (RFC 2308 §5).
MAIL_DNS_CACHE_SIZE = env.get_int("MAIL_DNS_CACHE_SIZE", 10000)
MAIL_DNS_CACHE_NEGATIVE_TTL = env.get_float("MAIL_DNS_CACHE_NEGATIVE_TTL", 300.0)
# Email authentication: SPF, DKIM, DMARC and ARC on inbound mail (0 turns the checks off), the
# seconds of DNS that one message's checks may spend in all (then temperror), and the threads
# that run them (apart from those that store mail, so a slow resolver never holds up storage).
MAIL_AUTH_CHECKS = env.get_bool("MAIL_AUTH_CHECKS", True)
MAIL_AUTH_DNS_TIMEOUT = env.get_float("MAIL_AUTH_DNS_TIMEOUT", 5.0)
MAIL_AUTH_WORKER_THREADS = env.get_int("MAIL_AUTH_WORKER_THREADS", 16)
# Outbound DKIM signing of mail whose From: domain is ours (0 turns it off).
MAIL_DKIM_SIGN = env.get_bool("MAIL_DKIM_SIGN", True)
# The local address that outbound SMTP connects from (unset: the system chooses); `domain dns`
# names it in the SPF record beside the MX.
MAIL_SMTP_SOURCE_ADDRESS = env.get("MAIL_SMTP_SOURCE_ADDRESS", "") or ""
# Submission.
MAIL_SUBMISSION_TLS_BIND = env.parse_binds(env.get("MAIL_SUBMISSION_TLS_BIND", ""))
# Where AUTH may come before TLS: loopback (default) | always | never, as MAIL_POP3_PLAINTEXT.
MAIL_SUBMISSION_PLAINTEXT_AUTH = env.get("MAIL_SUBMISSION_PLAINTEXT_AUTH", "loopback")
MAIL_AUTH_FAILURE_DELAY = env.get_float("MAIL_AUTH_FAILURE_DELAY", 2.0)
MAIL_AUTH_MAX_FAILURES = env.get_int("MAIL_AUTH_MAX_FAILURES", 5)
MAIL_AUTH_FAILURE_WINDOW = env.get_int("MAIL_AUTH_FAILURE_WINDOW", 900)
# Recently verified credentials (POP3, submission, web sign-in), per process, as Dovecot's auth
# cache: seconds an entry lives (0 turns the cache off) and how many entries a process keeps.
MAIL_AUTH_CACHE_TTL = env.get_float("MAIL_AUTH_CACHE_TTL", 60.0)
MAIL_AUTH_CACHE_SIZE = env.get_int("MAIL_AUTH_CACHE_SIZE", 10000)
# The quarantine: the web UI's public base URL for links in mailed digests,
# seconds between two digests to one mailbox (0: none), days held mail is kept before a schedule
# deletes it (digest links expire with it).
MAIL_WEB_URL = env.get("MAIL_WEB_URL", "http://127.0.0.1:8000").rstrip("/")
MAIL_DIGEST_INTERVAL = env.get_int("MAIL_DIGEST_INTERVAL", 86400)
MAIL_QUARANTINE_RETENTION_DAYS = env.get_float("MAIL_QUARANTINE_RETENTION_DAYS", 30.0)
# Body store garbage collection: a body no Message refers to (a crash between its fsync and its
# row's commit) or a `.tmp-` file is removed once older than the grace period, by a schedule that
# runs every MAIL_STORE_GC_MINUTES; a body being written now is always younger than the grace.
MAIL_STORE_GC_GRACE = env.get_float("MAIL_STORE_GC_GRACE", 3600.0)
MAIL_STORE_GC_MINUTES = env.get_int("MAIL_STORE_GC_MINUTES", 60)
# Bodies of at most this many octets are appended to segment files under MAIL_DATA_DIR (many
# bodies per file, one fdatasync per group commit) instead of each getting a file; 0: each its own.
MAIL_STORE_SEGMENT_MAX = env.get_int("MAIL_STORE_SEGMENT_MAX", 1048576)
MAIL_DATA_DIR = Path(env.get("MAIL_DATA_DIR", "var/mail"))
if not MAIL_DATA_DIR.is_absolute():
    MAIL_DATA_DIR = BASE_DIR / MAIL_DATA_DIR

# Message bodies live in their own storage: the file system by default; an S3-compatible store
# is a change of this entry only (e.g. django-storages' S3Storage), never of code.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "mailbodies": {
        "BACKEND": env.get("MAIL_STORAGE_BACKEND", "mailcore.store.backends.DurableFileSystemStorage"),
        # MAIL_STORAGE_OPTIONS (a JSON object) gives another backend its options, e.g. for
        # django-storages' S3Storage: {"bucket_name": "mail", "endpoint_url": "https://..."}.
        "OPTIONS": {"location": str(MAIL_DATA_DIR), **json.loads(env.get("MAIL_STORAGE_OPTIONS", "{}"))},
    },
}

# An S3-compatible object store for bodies instead, shared by every node (docs/scaling.md): set
# the bucket (which must exist), and the endpoint unless it is AWS itself. Unset credentials
# come from boto3's usual sources (AWS_ACCESS_KEY_ID, an instance role). A request that is not
# answered within MAIL_S3_TIMEOUT seconds is tried MAIL_S3_MAX_ATTEMPTS times in all, then the
# message gets a 451: a dead endpoint never holds a listener for long.
MAIL_S3_BUCKET = env.get("MAIL_S3_BUCKET", "")
MAIL_S3_ENDPOINT_URL = env.get("MAIL_S3_ENDPOINT_URL", "") or None
MAIL_S3_REGION = env.get("MAIL_S3_REGION", "us-east-1")
MAIL_S3_ACCESS_KEY = env.get("MAIL_S3_ACCESS_KEY", "") or None
MAIL_S3_SECRET_KEY = env.get("MAIL_S3_SECRET_KEY", "") or None
MAIL_S3_PREFIX = env.get("MAIL_S3_PREFIX", "")
MAIL_S3_TIMEOUT = env.get_float("MAIL_S3_TIMEOUT", 10.0)
MAIL_S3_MAX_ATTEMPTS = env.get_int("MAIL_S3_MAX_ATTEMPTS", 3)
if MAIL_S3_BUCKET:
    STORAGES["mailbodies"] = {
        "BACKEND": "mailcore.store.s3.ObjectStoreBodies",
        "OPTIONS": {
            "bucket_name": MAIL_S3_BUCKET,
            "endpoint_url": MAIL_S3_ENDPOINT_URL,
            "region_name": MAIL_S3_REGION,
            "access_key": MAIL_S3_ACCESS_KEY,
            "secret_key": MAIL_S3_SECRET_KEY,
            "location": MAIL_S3_PREFIX,
            "timeout": MAIL_S3_TIMEOUT,
            "max_attempts": MAIL_S3_MAX_ATTEMPTS,
        },
    }

# --- the web UI behind a TLS proxy ("Putting the web UI on the internet" in the README) -------

# MAIL_WEB_URL (above): an https public URL turns on the secure settings below.
# Peers whose X-Forwarded-For and X-Forwarded-Proto are believed (mailcore.web.proxy); from any
# other peer those headers are dropped.
MAIL_WEB_TRUSTED_PROXIES = env.parse_networks(env.get("MAIL_WEB_TRUSTED_PROXIES", ""))
if MAIL_WEB_TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if MAIL_WEB_URL.startswith("https://"):
    # Served over https: cookies never sent in clear, and browsers told to keep to https (HSTS,
    # sent by SecurityMiddleware on https responses only).
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.get_int("MAIL_WEB_HSTS_SECONDS", 31536000)
_web_origin = MAIL_WEB_URL.split("/", 3)
if len(_web_origin) >= 3 and _web_origin[2]:
    CSRF_TRUSTED_ORIGINS = ["/".join(_web_origin[:3])]
    _web_host = _web_origin[2].rsplit(":", 1)[0] if not _web_origin[2].endswith("]") else _web_origin[2]
    if _web_host not in ALLOWED_HOSTS:
        ALLOWED_HOSTS.append(_web_host)

# --- django-q2 --------------------------------------------------------------------------------

REDIS_URL = env.get("REDIS_URL")
Q_CLUSTER = {
    # Two servers sharing one Redis need distinct names: the name is the broker's queue key.
    "name": env.get("MAIL_Q_NAME", "mailcore"),
    "workers": env.get_int("MAIL_Q_WORKERS", 2),
    "timeout": 300,
    "retry": 360,
    "max_attempts": 1,
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 1000,
    "poll": 0.1,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# Django's cache: Redis when REDIS_URL is set; otherwise a database table (created by migration
# 0005). Failed-login counts are not kept here but in the database (mailcore.services.login_failures),
# where an increment is atomic. Two servers sharing one Redis need distinct prefixes, like MAIL_Q_NAME.
MAIL_CACHE_PREFIX = env.get("MAIL_CACHE_PREFIX", Q_CLUSTER["name"])
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": MAIL_CACHE_PREFIX,
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "mailcore_cache",
            "KEY_PREFIX": MAIL_CACHE_PREFIX,
            # Culling drops a third of the entries once this many exist: keep it far above the
            # number of addresses failing at once, or a flood of addresses would wipe counts.
            "OPTIONS": {"MAX_ENTRIES": 100000},
        },
    }

# qcluster's guard saves the cluster's statistics (what `qinfo` and `qmonitor` show) every guard
# cycle, 0.5 s, to Q_CLUSTER's "cache". In SQLite's database cache each save is a write
# transaction with an fsync of its own, holding the one write lock that the MX's commits then
# wait for. The statistics expire after 3 s and need no durability: on SQLite they go to files
# beside the database. PostgreSQL takes concurrent writers, and Redis keeps them in Redis.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and not REDIS_URL:
    _database = Path(DATABASES["default"]["NAME"])
    CACHES["qcluster_stats"] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(_database.with_name(_database.name + "-qcluster-stats")),
        "KEY_PREFIX": MAIL_CACHE_PREFIX,
    }
    Q_CLUSTER["cache"] = "qcluster_stats"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "mailcore": {"handlers": ["console"], "level": env.get("MAIL_LOG_LEVEL", "INFO"), "propagate": False},
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
