"""Storage URLs as text: the one precedence rule, normalising, and showing them without the password.

Precedence, written once: --storage flag > TUNER_STORAGE > TUNER_STORAGE_FILE > sqlite:///tuner.db.
The URL's password is never printed: every message uses ``redact(url)`` or ``shown_url(url)``, and any other
text that may hold it goes through ``scrub(text, url)``.
"""

from __future__ import annotations

import os
import shlex
import traceback
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from tuner.errors import TunerError

DEFAULT_STORAGE = "sqlite:///tuner.db"
# postgres:// and postgresql:// name no driver: SQLAlchemy 2.1 would then pick psycopg 3, which tuner does not
# declare; psycopg2 is the driver in pyproject.toml, so a driverless PostgreSQL URL means that one.
PG_DRIVER = "postgresql+psycopg2"
_PG_WITHOUT_DRIVER = ("postgres", "postgresql")
# A value that is not a URL is echoed back (with a sqlite:/// suggestion) only when it looks like a file path:
# anything else may be a password pasted into the wrong place.
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".db3")


def resolve_storage_url(flag: str | None = None) -> str:
    """The storage URL by the one precedence rule; a file keeps the password out of `ps` and shell history."""
    if flag:
        return normalise_url(flag)
    if os.environ.get("TUNER_STORAGE"):
        return normalise_url(os.environ["TUNER_STORAGE"])
    if os.environ.get("TUNER_STORAGE_FILE"):
        path = Path(os.environ["TUNER_STORAGE_FILE"])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TunerError(f"TUNER_STORAGE_FILE {path}: cannot be read ({exc.strerror})") from None
        return normalise_url(text.strip())
    return DEFAULT_STORAGE


def _looks_like_path(value: str) -> bool:
    if ":" in value or "@" in value:  # user:password@host...: never echo it
        return False
    return "/" in value or value.lower().endswith(_SQLITE_SUFFIXES) or Path(value).exists()


def _not_a_url(value: str) -> str:
    if _looks_like_path(value):
        return f"storage URL {value!r} is not a database URL; did you mean sqlite:///{value}?"
    return ("the storage is not a database URL (its value is not shown: it may hold a password); expected "
            "e.g. sqlite:///tuner.db or postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB")


def normalise_url(url: str) -> str:
    """The URL as tuner opens it, or one TunerError that never shows a password.

    A bare file path gets a sqlite:/// suggestion; postgres:// and postgresql:// get the psycopg2 driver.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise TunerError(_not_a_url(url)) from None
    except ValueError:  # it parsed, but int(port) did not
        raise TunerError(f"storage URL {scheme}://... is not a valid database URL: its port is not a "
                         "number") from None
    if parsed.host and "@" in parsed.host:
        # SQLAlchemy splits at the first '@': the rest of the password would be shown as the host.
        raise TunerError(f"storage URL {scheme}://{parsed.username or ''}:***@...: a '@' in the password must "
                         "be written %40") from None
    if parsed.drivername in _PG_WITHOUT_DRIVER:
        return parsed.set(drivername=PG_DRIVER).render_as_string(hide_password=False)
    return url


def redact(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and messages."""
    try:
        parsed = make_url(url)
    except Exception:  # not a URL: a file path is harmless, anything else may be a password
        return url if _looks_like_path(url) else "(storage value not shown)"
    if parsed.host and "@" in parsed.host:  # an unescaped '@' in the password: see normalise_url
        return f"{parsed.drivername}://***"
    return parsed.render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The absolute path of a SQLite URL's file; None for other databases and in-memory SQLite."""
    if not is_sqlite(url):
        return None
    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:" or parsed.query.get("uri") == "true":
        return None  # in memory, or a file: URI whose path SQLite itself interprets
    return Path(parsed.database).absolute()


def shown_url(url: str) -> str:
    """The storage as people should see it: password hidden, a SQLite file's path absolute (a relative
    one means a different file in every working directory)."""
    path = sqlite_path(url)
    return f"sqlite:///{path}" if path is not None else redact(url)


def worker_hint(url: str, study: str) -> tuple[str, str | None]:
    """The command that starts a worker of `study` on any host, storage included, and a note for the reader.

    A SQLite file goes in --storage by absolute path. A server URL goes in TUNER_STORAGE (not argv, which
    `ps` shows), its password shown as *** for the user to fill in: it is never printed.
    """
    tail = f"tuner worker --study {shlex.quote(study)}"
    if is_sqlite(url):
        return f"{tail} --storage {shlex.quote(shown_url(url))}", None
    note = None
    if password_of(url):
        note = ("*** stands for the database password (never printed); or point TUNER_STORAGE_FILE at a file "
                "holding the whole URL")
    return f"TUNER_STORAGE={shlex.quote(redact(url))} {tail}", note


def password_of(url: str) -> str | None:
    try:
        return make_url(url).password
    except Exception:
        return None


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from any text (driver errors sometimes echo the DSN)."""
    secret = password_of(url)
    return text.replace(secret, "***") if secret else text


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _storage_flag(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--storage" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--storage="):
            return arg.split("=", 1)[1]
    return None


def scrubbed_traceback(exc: BaseException, argv: Sequence[str]) -> str:
    """A bug's traceback, with the password of the storage that argv or the environment names removed."""
    text = "".join(traceback.format_exception(exc))
    flag = _storage_flag(argv)
    try:
        url = resolve_storage_url(flag)
    except TunerError:  # not a URL: scrub the raw value itself, it may be a password
        raw = flag or os.environ.get("TUNER_STORAGE")
        return text.replace(raw, "***") if raw else text
    return scrub(text, url)
