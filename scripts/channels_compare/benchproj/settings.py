"""The smallest Django settings Channels 4 needs: no database, no apps of our own,
the channel layer on the Redis server scripts/bench --channels starts (REDIS_URL)."""
import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "benchproj.asgi.application"
ROOT_URLCONF = "benchproj.urls"  # GET /hello, for scripts/bench http
DATABASES = {}
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6399/0")]},
    },
}
# Warnings and errors to stderr; and Daphne's "Listening on TCP address ...", which tells
# scripts/bench the port it got for -p 0.
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"stderr": {"class": "logging.StreamHandler"}},
           "root": {"level": "WARNING", "handlers": ["stderr"]},
           "loggers": {"daphne.server": {"level": "INFO"}}}
