"""The application of this process: Django set up, then the consumers, then the WSGI
application -- in that order, in every process that runs application code (a worker, the
reloader's import check, `zchannels.testing`).

Django is set up from the configured settings module: ``DJANGO_SETTINGS_MODULE``, or the
one the WSGI application's module names (the ``os.environ.setdefault(
"DJANGO_SETTINGS_MODULE", "mysite.settings")`` line ``django-admin startproject`` writes
in ``mysite/wsgi.py``, found in the source without running it, as ``zchannels init``
finds the module). So a consumer module may start as every Django module does, with
``from django.contrib.auth.models import User``. A project without Django pays nothing:
Django is not imported.

An application that does not import (a SyntaxError, an ImportError, Django's
ImproperlyConfigured, in a consumer module, the WSGI module or the settings) does not
stop a worker: `load_or_fail` returns its `Failure`, and the worker stays up answering
every event at once (`dispatch.UnavailableDispatcher`: 503, close 1011), logs the
traceback once and tells the terminal once (`report_failure`), instead of a restart loop
into supervisord's FATAL while clients wait for a 504. A restart imports it again (the
reloader restarts the workers once the code imports).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable

from zchannels.api import routing
from zchannels.core.config import Config
from zchannels.core.exceptions import ZChannelsError
from zchannels.core.stats import counters
from zchannels.worker import wsgi
from zchannels.worker.dispatch import (Dispatcher, DjangoDispatcher, OnError,
                                       UnavailableDispatcher)

log = logging.getLogger("zchannels.worker")

SETTINGS_VARIABLE = "DJANGO_SETTINGS_MODULE"
# The settings module a WSGI module names: os.environ.setdefault("DJANGO_SETTINGS_MODULE",
# "mysite.settings") as startproject writes it, or os.environ["..."] = "...".
_SETTINGS_IN_SOURCE = re.compile(
    r"""os\.environ(?:\.setdefault\(\s*|\[\s*)["']DJANGO_SETTINGS_MODULE["']\s*"""
    r"""(?:,|\]\s*=)\s*["']([A-Za-z_][\w.]*)["']""")
# In the run directory: the failure last told on the terminal, and by which supervisord
# (its pid): the workers of one copy tell it once between them, not once each.
FAILURE_FILE = "application-failure"

_RUNTIME_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class SetupMismatch(ZChannelsError, RuntimeError):
    """`zchannels.testing` would run the consumers with another Django setup than the
    workers do: Django set up with another settings module than the configured one, or
    a consumer module that uses Django imported before Django was set up."""


@dataclass(frozen=True)
class Failure:
    """Why the application did not import."""

    description: str  # "/x/consumers/chat.py, line 12: SyntaxError: invalid syntax"
    traceback: str


@dataclass
class Application:
    """What a worker runs: the consumers' registry, the WSGI application (None: not
    mounted, or not for this pool), whether Django is set up (then its database
    connections are looked after around every event), or why none of it imported."""

    registry: routing.Registry
    wsgi_app: wsgi.WSGIApp | None = None
    django: bool = False
    failure: Failure | None = None

    def dispatcher(self, count: Callable[[str], None] = counters.incr,
                   on_error: OnError | None = None, in_tests: bool = False) -> Dispatcher:
        """The dispatcher for it: the plain one (nothing more per event), the one that
        looks after Django's connections, or the one that answers every event 503/1011."""
        if self.failure is not None:
            return UnavailableDispatcher(self.registry, None, count, on_error)
        if self.django:
            return DjangoDispatcher(self.registry, self.wsgi_app, count, on_error,
                                    in_tests=in_tests)
        return Dispatcher(self.registry, self.wsgi_app, count, on_error)


# -- Django ---------------------------------------------------------------------------

def settings_module(wsgi_app: str) -> str | None:
    """The settings module the workers set Django up with: ``DJANGO_SETTINGS_MODULE``,
    else the one the module of `wsgi_app` names (`named_settings`); None for neither
    (no Django)."""
    return os.environ.get(SETTINGS_VARIABLE) or named_settings(wsgi_app)


def named_settings(wsgi_app: str) -> str | None:
    """The settings module the module of `wsgi_app` (``"mysite.wsgi:application"``)
    names, read from its source, found in the current directory and then ``sys.path``,
    without running it."""
    if not wsgi_app:
        return None
    path = _module_file(wsgi_app.partition(":")[0], [os.getcwd(), *sys.path])
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            found = _SETTINGS_IN_SOURCE.search(f.read())
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found else None


def _module_file(module_name: str, search: Iterable[str]) -> str | None:
    """Where ``a.b`` would be imported from, without importing ``a`` (its
    ``__init__`` may need Django already)."""
    relative = os.path.join(*module_name.split("."))
    for directory in search:
        for candidate in (relative + ".py", os.path.join(relative, "__init__.py")):
            path = os.path.join(directory or os.curdir, candidate)
            if os.path.isfile(path):
                return path
    return None


def django_ready() -> bool:
    """Is Django set up in this process? (Without importing it if nothing has.)"""
    registry = sys.modules.get("django.apps.registry")
    return registry is not None and bool(getattr(registry, "apps").ready)


def django_configured() -> bool:
    """Are Django's settings configured in this process (set up, or at least
    ``settings.configure()``d by the application)? Its database connections may be
    used then."""
    conf = sys.modules.get("django.conf")
    return conf is not None and bool(getattr(conf, "settings").configured)


def setup_django(settings: str | None) -> bool:
    """Set Django up with `settings` (unless it is already); True if Django is set up."""
    if settings is None or django_ready():
        return django_ready()
    os.environ.setdefault(SETTINGS_VARIABLE, settings)
    import django
    try:
        django.setup()
    finally:
        _keep_our_loggers()
    return True


def _keep_our_loggers() -> None:
    """Django's ``LOGGING`` (``dictConfig``, ``disable_existing_loggers`` true unless it
    says otherwise) turns off every logger that exists by then: zchannels' among them,
    and the worker would fail silently. They keep logging."""
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("zchannels") and isinstance(logger, logging.Logger):
            logger.disabled = False


def current_settings() -> str | None:
    """The settings module Django is set up with (None: ``settings.configure()``)."""
    from django.conf import settings
    return getattr(settings, "SETTINGS_MODULE", None)


# -- loading ------------------------------------------------------------------------

def add_to_path(directories: Iterable[str]) -> None:
    """The consumers directories on ``sys.path`` (their helper modules, a WSGI module
    kept there), as `routing.load_consumers` puts them, before anything is imported."""
    for directory in directories:
        directory = os.path.abspath(directory)
        if directory not in sys.path:
            sys.path.append(directory)


def load(config: Config, http: bool) -> Application:
    """Import the application into the global registry, as every worker does: Django
    set up from the configured settings module, then the consumer modules (the first
    error names the consumer, as before Django was set up here), then the WSGI
    application (if `http`: the pool serves ``http.request``). Raises what the import
    raises."""
    # Run from the project as `python -m zchannels` is: its modules importable, also
    # under the `zchannels` console script (whose sys.path starts with its bin/).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    add_to_path(config.consumers)
    setup_django(settings_module(config.wsgi_app))
    routing.load_consumers(config.consumers)
    wsgi_app = wsgi.load_app(config.wsgi_app) if config.wsgi_app and http else None
    return Application(routing.registry, wsgi_app, django_configured())


def load_or_fail(config: Config, http: bool) -> Application:
    """`load`, and on any error the `Failure` instead (an empty registry), for a worker
    that stays up to say so."""
    try:
        return load(config, http)
    except (Exception, SystemExit) as error:  # SystemExit: a module that calls exit()
        routing.registry.clear()  # half an application serves nothing
        unnamed = settings_module(config.wsgi_app) is None
        return Application(routing.registry, failure=Failure(
            describe_error(error) + (hint(error) if unnamed else ""),
            project_traceback(error)))


def describe_error(error: BaseException) -> str:
    """``/x/chat.py, line 12: SyntaxError: invalid syntax``: the project's file and line
    where the import failed (the deepest frame outside zchannels and libraries)."""
    name = type(error).__name__
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}, line {error.lineno}: {name}: {error.msg}"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith("<") and not _is_library(frame.filename)]
    where = f"{frames[-1].filename}, line {frames[-1].lineno}: " if frames else ""
    return f"{where}{name}: {error}"


def project_traceback(error: BaseException) -> str:
    """The traceback of `error` without zchannels' own frames and importlib's: from the
    first line of the project (or of Django) to the error."""
    formatted = traceback.TracebackException.from_exception(error)
    formatted.stack = traceback.StackSummary.from_list(
        [frame for frame in formatted.stack
         if not frame.filename.startswith((_RUNTIME_DIR, "<frozen "))])
    return "".join(formatted.format())


def hint(error: BaseException) -> str:
    """What to do about an import error that says Django is not set up, when nothing
    named its settings ("" for other errors)."""
    if type(error).__name__ in ("ImproperlyConfigured", "AppRegistryNotReady") \
            and not django_ready():
        return (f" (Django is not set up: set {SETTINGS_VARIABLE}, or mount the project "
                "with wsgi_app, whose module names its settings)")
    return ""


def _is_library(path: str) -> bool:
    """The standard library, installed packages and zchannels itself."""
    roots = {sys.prefix, sys.base_prefix, *(sysconfig.get_paths()[key] for key in
                                           ("stdlib", "platstdlib", "purelib", "platlib"))}
    path = os.path.abspath(path)
    return path.startswith(_RUNTIME_DIR) or any(
        path.startswith(os.path.abspath(root) + os.sep) for root in roots)


# -- telling the developer ------------------------------------------------------------

def report_failure(failure: Failure, config: Config, role: str) -> None:
    """Log the failure at ERROR with its traceback (the worker's log), and tell the
    terminal -- this process's stdout, which supervisord writes to its own: the
    ``zchannels run`` or ``scripts/run`` terminal -- unless another worker of this copy
    already told it this very failure."""
    log.error("the application failed to import: %s\n%s", failure.description,
              failure.traceback.rstrip())
    if not _first_to_tell(config.run_dir, failure.description):
        return
    workers = " ".join(f"worker-{pool.name}:*" for pool in config.pools)
    try:
        _tell(f"\nzchannels: THE APPLICATION FAILED TO IMPORT ({role}, pid {os.getpid()}):\n"
              f"  {failure.description}\n\n{failure.traceback.rstrip()}\n\n"
              "zchannels: until it imports, the workers answer every HTTP request with 503 "
              "and close every WebSocket with 1011. Fix it, then restart the workers "
              f"(supervisorctl restart {workers}); under --reload the reloader does it once "
              "the code imports. Told once; the workers' logs are in "
              f"{os.path.join(os.path.abspath(config.run_dir), 'logs')}\n")
    except OSError as e:  # no terminal to tell: the log has it
        log.warning("could not tell the terminal: %s", e)


def _tell(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _first_to_tell(run_dir: str, description: str) -> bool:
    """True for the first worker (under this supervisord) to report `description`."""
    record = f"{os.getppid()}\n{description}"
    try:
        with open(os.path.join(run_dir, FAILURE_FILE), "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
            f.seek(0)
            if f.read() == record:
                return False
            f.seek(0)
            f.truncate()
            f.write(record)
    except OSError as e:  # no run directory to agree in: tell it
        log.warning("could not record the failure in %s: %s", run_dir, e)
    return True


def forget_failure(run_dir: str) -> None:
    """The application imports: a failure after this one is told again."""
    try:
        os.unlink(os.path.join(run_dir, FAILURE_FILE))
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("could not remove %s: %s", os.path.join(run_dir, FAILURE_FILE), e)


# -- zchannels.testing ----------------------------------------------------------------

TEST_HOST = "testserver"  # the Host of zchannels.testing's clients (testing/server.py)

def setup_for_tests(directories: Iterable[str], wsgi_app: str, settings: str | None,
                    preloaded: routing.Registry | None) -> bool:
    """What `zchannels.testing.TestServer` does before it loads anything: refuse a
    Django setup the workers would not have (`SetupMismatch`), else set Django up as
    they do. True if Django is set up.

    The workers' settings module is `settings` if the test names it, else the one the
    module of `wsgi_app` names (the project's configuration), else
    ``DJANGO_SETTINGS_MODULE``. `preloaded`: a registry whose consumer modules were
    imported before the server was made."""
    add_to_path(directories)
    expected, source = settings, "settings="
    if expected is None:
        expected, source = named_settings(wsgi_app), f"the module of wsgi_app {wsgi_app!r}"
    if expected is None:
        expected, source = os.environ.get(SETTINGS_VARIABLE), SETTINGS_VARIABLE
    ready = django_ready()
    chosen = current_settings() if ready else os.environ.get(SETTINGS_VARIABLE)
    if expected is not None and chosen not in (None, expected) or \
            ready and expected is not None and chosen is None:
        state = "set up" if ready else f"about to be set up ({SETTINGS_VARIABLE})"
        raise SetupMismatch(
            f"Django is {state} with the settings module {chosen!r}, but the workers set "
            f"it up with {expected!r} (from {source}): the test would not see what "
            f"production runs. Set Django up with {expected!r} (pytest-django: "
            f"DJANGO_SETTINGS_MODULE = {expected}), or, to test with other settings on "
            "purpose, name them: TestServer(..., settings=...)")
    if ready:
        if preloaded is not None:
            _check_imported_after_django(preloaded)
    elif not setup_django(expected):
        return False
    _allow_test_host()
    return True


def _allow_test_host() -> None:
    """The in-process clients' ``Host`` is ``testserver``, which Django's own test
    environment allows (``setup_test_environment``, run by its test runner and by
    pytest-django); a TestServer that set Django up itself allows it the same way, so
    the ALLOWED_HOSTS check of handshakes (zchannels.worker.hosts) sees what a Django
    test would."""
    from django.conf import settings
    if TEST_HOST not in settings.ALLOWED_HOSTS:
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, TEST_HOST]


def _check_imported_after_django(registry: routing.Registry) -> None:
    """A consumer module that uses Django and was imported before Django was set up
    ran its module code under another setup than a worker's, which sets Django up
    first. Python keeps ``sys.modules`` in import order; Django's apps' models modules
    are imported while Django is set up (never before: they cannot be)."""
    from django.apps import apps
    order = {name: index for index, name in enumerate(sys.modules)}
    setup = [order[config.models_module.__name__] for config in apps.get_app_configs()
             if config.models_module is not None and config.models_module.__name__ in order]
    if not setup:
        return
    set_up_at = min(setup)
    for route in registry.routes:
        name = getattr(route.func, "__module__", None)
        module = sys.modules.get(name or "")
        if module is None or order[module.__name__] > set_up_at:
            continue
        if any(_from_django(value) for value in vars(module).values()):
            raise SetupMismatch(
                f"the consumer module {name} ({getattr(module, '__file__', '?')}) uses "
                "Django and was imported before Django was set up; a worker sets Django "
                "up first, so the test would not see what production runs. Set Django up "
                "before importing it (pytest-django does; or django.setup() at the top "
                "of conftest.py), or pass TestServer the consumers directories to load")


def _from_django(value: object) -> bool:
    """Is `value` (a module global) something of Django's: a model, ``settings``, a
    module or function of the ``django`` package?"""
    try:
        module = _module_of(value)
    except Exception:  # a lazy object that cannot say
        return False
    return module == "django" or module.startswith("django.")


def _module_of(value: object) -> str:
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return ""
    name = getattr(value, "__module__", None) if not isinstance(value, type(sys)) \
        else getattr(value, "__name__", None)
    if not isinstance(name, str):
        name = getattr(type(value), "__module__", "")
    return name if isinstance(name, str) else ""
