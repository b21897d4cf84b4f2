import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.staticfiles", "djsite"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "djsite.urls"
WSGI_APPLICATION = "djsite.wsgi.application"
# Users for tests/test_auth_e2e.py, in the SQLite file it names (it runs `migrate`).
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("DJSITE_DB", ":memory:")}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Test-only: a fast hasher, so a login does not spend a second in PBKDF2.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Sessions in a signed cookie: the session travels with the client, no database.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("DJSITE_STATIC_ROOT", "/tmp/djsite-static")
USE_TZ = True
LOGGING = {
    "version": 1,
    # Keep the loggers configured before Django's setup (the worker's zchannels.*): a
    # worker's warnings and errors must still reach its log.
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
