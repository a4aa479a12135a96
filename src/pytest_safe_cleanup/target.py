"""A database target from a URL (an engine's included): dialect, host class, name, masked URL.

The host class is decided here, once, so that the guard never parses URLs itself.
"""

from __future__ import annotations

import fnmatch
import getpass
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

QUERY_ORIGIN = " (from the query string)"
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def first_line(exc: BaseException) -> str:
    """A driver error's first line, without SQLAlchemy's background link."""
    text = str(getattr(exc, "orig", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class TargetError(ValueError):
    """A URL that cannot name a database target."""


@dataclass(frozen=True)
class Target:
    """Where a cleanup would run. ``key`` identifies it without any password."""

    backend: str
    host: str | None
    port: int | None
    database: str
    name: str
    masked_url: str
    key: str
    host_class: str  # "local" or "remote"
    host_reason: str
    disposable: bool = False
    driver: str = ""
    hostaddr: str | None = None  # the address a live connection reached, where known

    @property
    def is_local(self) -> bool:
        """True for loopback, unix sockets, SQLite and allowed host globs."""
        return self.host_class == "local"


def parse_url(url: str | URL) -> URL:
    """Parse a database URL, or raise a one-line TargetError that says what is wrong."""
    if isinstance(url, URL):
        return url
    text = str(url).strip()
    if not text:
        raise TargetError("empty database URL: give one like postgresql+psycopg://user@host/db")
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError) as exc:
        shown = mask_text(text)
        raise TargetError(
            f"could not parse {shown!r} as a database URL ({mask_message(str(exc), text)}); "
            "use the form dialect+driver://user:password@host:port/database"
        ) from None
    host = parsed.host or ""
    if host.count("[") != host.count("]"):  # SQLAlchemy accepts "host=[bad" as a name
        raise TargetError(
            f"could not parse {mask_text(text)!r} as a database URL (unbalanced brackets "
            f"in host {host!r}); use the form dialect+driver://user:password@host:port/database"
        )
    return parsed


_SCHEME_SLASHES = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# key=value secrets in a query string, a libpq/ODBC connection string or a message;
# %3D and %3B are "=" and ";" percent-encoded (as inside odbc_connect=...).
_SECRET_PAIR = re.compile(
    r"(?i)(?:(?<![A-Za-z0-9_])|(?<=%3B)|(?<=%26))(sslpassword|password|passwd|pwd)(\s*(?:=|%3D)\s*)"
    r"('[^']*'|\"[^\"]*\"|(?:(?!%26|%3B)[^&;\s'\"#,)])+)"
)
# user:password@ at the start of a word, without a scheme ("app:secret@db/x")
_BARE_USERINFO = re.compile(r"(?<![^\s'\"(,=])([^\s:/@'\"]+):(?!//)([^\s'\"]*)@")


def _mask_authority(segment: str, found: list[str]) -> str:
    """Mask the password in what follows a ``scheme://`` (up to the next one)."""
    first_word = re.split(r"[\s'\"]", segment, maxsplit=1)[0]
    # The userinfo ends at the last "@" of the first word; a password with a space
    # in it has its "@" further on, so then the last "@" of the segment counts.
    at = first_word.rfind("@")
    if at < 0:
        at = segment.rfind("@")
    if at >= 0:
        userinfo = segment[:at]
        user, colon, _ = userinfo.partition(":")
        if colon and not re.search(r"[\s'\"/]", user):
            found.append(userinfo[len(user) + 1 :])
            return f"{user}:***{segment[at:]}"
        return segment
    # No "@" at all ("scheme://user:secret/db"): a colon not followed by a port.
    authority = re.split(r"[/?#\s'\"]", segment, maxsplit=1)[0]
    if authority.startswith("["):
        return segment
    host, colon, rest = authority.partition(":")
    if colon and rest and not rest.isdigit():
        found.append(rest)
        return f"{host}:***{segment[len(authority) :]}"
    return segment


def mask_text(text: str) -> str:
    """Hide passwords in any URL-like text, parseable or not.

    Error messages repeat what they could not parse, so this works on text, not on a
    parsed URL: the userinfo after every ``scheme://`` (with or without its ``@``),
    a bare ``user:password@``, and ``password=``/``pwd=``/``sslpassword=`` values in
    query strings and connection strings are all shown as ``***``.
    """
    return _mask(text, [])


def _mask(text: str, found: list[str]) -> str:
    """``mask_text``, collecting every hidden value in ``found``."""
    starts = [m.end() for m in _SCHEME_SLASHES.finditer(text)]
    if starts:
        parts = [text[: starts[0]]]
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else len(text)
            segment = text[start:stop]
            # the next scheme's name belongs to the next segment, not to this userinfo
            tail = _SCHEME_SLASHES.search(segment)
            cut = tail.start() if tail is not None else len(segment)
            parts.append(_mask_authority(segment[:cut], found) + segment[cut:])
        text = "".join(parts)

    def bare(m: re.Match[str]) -> str:
        found.append(m.group(2))
        return f"{m.group(1)}:***@"

    def pair(m: re.Match[str]) -> str:
        found.append(m.group(3))
        return f"{m.group(1)}{m.group(2)}***"

    return _SECRET_PAIR.sub(pair, _BARE_USERINFO.sub(bare, text))


def mask_message(message: str, source: str) -> str:
    """Mask ``message`` and every secret of ``source`` that it repeats, in any form.

    A parser's error may quote a fragment of the text it failed on (a password read as
    a port, say) where no URL shape is left to recognise.
    """
    found: list[str] = []
    _mask(source, found)
    for secret in sorted({f for f in found if f}, key=len, reverse=True):
        message = message.replace(secret, "***")
    return mask_text(message)


PASSWORD_QUERY_KEYS = frozenset({"password", "passwd", "pwd"})
"""Query keys (compared lower-cased) that carry the login password."""
SECRET_QUERY_KEYS = PASSWORD_QUERY_KEYS | {"sslpassword"}
"""Query keys (compared lower-cased) whose values are secrets: masked wherever a URL is shown."""


def _without_secrets(url: URL) -> URL:
    secret = {k: "***" for k in url.query if k.lower() in SECRET_QUERY_KEYS}
    return url.update_query_dict(secret) if secret else url


def carries_secret(url: URL) -> bool:
    """True when the URL holds a password, in its user info or a secret query key."""
    return url.password is not None or any(k.lower() in SECRET_QUERY_KEYS for k in url.query)


def mask_url(url: URL) -> str:
    """Render a URL with its password (and password-like query values) hidden."""
    return _without_secrets(url).render_as_string(hide_password=True)


def _is_loopback(host: str) -> bool:
    bare = host.strip().lower()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if bare in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _classify_host(host: str, allowed_hosts: tuple[str, ...], origin: str) -> tuple[str, str]:
    if host.startswith("/") or host.startswith("@"):
        return "local", f"unix socket {host}{origin}"
    if origin == QUERY_ORIGIN:
        # libpq lets the query string override the URL's host: a name there is easy
        # to miss when reading the URL, so only a socket path there counts as local.
        return "remote", f"host {host} is given in the query string"
    if _is_loopback(host):
        return "local", f"loopback host {host}{origin}"
    for pattern in allowed_hosts:
        if fnmatch.fnmatchcase(host.lower(), pattern.lower()):
            return "local", f"host {host} matches safe_cleanup_allowed_hosts {pattern!r}"
    return "remote", f"host {host}{origin} is not local"


# Query keys with which a driver connects wherever they say, whatever the URL's host.
_CONNECTION_QUERY_KEYS = frozenset({"odbc_connect", "dsn"})


def _query_value(query: Mapping[str, str | tuple[str, ...]], key: str) -> str | None:
    value = query.get(key)
    if value is None:
        return None
    if isinstance(value, tuple):
        return ",".join(value)
    return value


def classify(
    url: URL, allowed_hosts: tuple[str, ...] = (), environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """Return ("local" | "remote", reason) for a URL's host.

    Only what the driver will really connect to counts: a host in the query string
    overrides the URL's host in libpq, and an empty host falls back to PGHOST.
    """
    environ = os.environ if environ is None else environ
    backend = url.get_backend_name()
    if backend == "sqlite":
        return "local", "SQLite file" if url.database not in (None, "", ":memory:") else (
            "SQLite in memory"
        )
    query_host = _query_value(url.query, "host")
    if backend == "postgresql":
        hosts = []
        # libpq connects to hostaddr (query, else PGHOSTADDR) whatever host says.
        query_addr = _query_value(url.query, "hostaddr")
        if query_addr:
            hosts = [(h, QUERY_ORIGIN) for h in query_addr.split(",") if h]
        elif environ.get("PGHOSTADDR"):
            hosts = [(h, " (from PGHOSTADDR)") for h in environ["PGHOSTADDR"].split(",") if h]
        elif query_host:
            hosts = [(h, QUERY_ORIGIN) for h in query_host.split(",") if h]
        elif url.host:
            hosts = [(url.host, "")]
        elif environ.get("PGHOST"):
            hosts = [(h, " (from PGHOST)") for h in environ["PGHOST"].split(",") if h]
        service = _query_value(url.query, "service") or environ.get("PGSERVICE")
        if not hosts and service:
            return "remote", f"the host comes from the pg_service.conf service {service!r}"
        if not hosts:
            return "local", "default unix socket"
        results = [_classify_host(h, allowed_hosts, origin) for h, origin in hosts]
        remote = [r for r in results if r[0] == "remote"]
        return remote[0] if remote else results[0]
    if backend in ("mysql", "mariadb"):
        socket = _query_value(url.query, "unix_socket")
        # SQLAlchemy's mysql dialects pass query arguments to the driver after the URL's
        # own, so ?host= wins over the URL's host: classified as libpq's query host is.
        if query_host:
            return _classify_host(query_host, allowed_hosts, QUERY_ORIGIN)
        if url.host:
            return _classify_host(url.host, allowed_hosts, "")
        return "local", f"unix socket {socket}" if socket else "default unix socket"
    if not url.host:
        # Only the backends above have a known local default; elsewhere the server comes
        # from the query string, a DSN or the driver's own configuration.
        return "remote", f"no host in the URL: the {backend} driver decides where it connects"
    carrier = next((k for k in url.query if k.lower() in _CONNECTION_QUERY_KEYS), None)
    if carrier is not None:
        return "remote", f"the server is given by {carrier}= in the query string"
    return _classify_host(url.host, allowed_hosts, "")


def _os_user() -> str:
    """The operating-system user libpq falls back to (the effective user's name)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, OSError):
        try:
            return getpass.getuser()
        except (ImportError, KeyError, OSError):
            return ""


def database_name(url: URL, environ: Mapping[str, str] | None = None) -> str:
    """The name a person types to confirm: the database, or a SQLite file's name.

    A PostgreSQL URL without a database connects where libpq (and asyncpg) would:
    PGDATABASE, else the user name (the URL's, else PGUSER, else the OS user).
    """
    environ = os.environ if environ is None else environ
    db = url.database or ""
    if url.get_backend_name() == "sqlite":
        if db in ("", ":memory:") or db.startswith("file::memory:"):
            return "memory"
        return PurePath(db.split("?", 1)[0].removeprefix("file:")).name
    if not db and url.get_backend_name() == "postgresql":
        return environ.get("PGDATABASE") or url.username or environ.get("PGUSER") or _os_user()
    return db


def target_key(url: URL) -> str:
    """A password-free identity for caching verdicts per target."""
    # The backend, not the driver: psycopg and asyncpg reach the same database.
    bare = URL.create(
        url.get_backend_name(), url.username, None, url.host, url.port, url.database, url.query
    )
    return _without_secrets(bare).render_as_string(hide_password=True)


def from_url(
    url: str | URL, allowed_hosts: tuple[str, ...] = (), environ: Mapping[str, str] | None = None
) -> Target:
    """Build a Target from a URL string or object."""
    parsed = parse_url(url)
    host_class, reason = classify(parsed, allowed_hosts, environ)
    return Target(
        backend=parsed.get_backend_name(),
        host=parsed.host,
        port=parsed.port,
        database=parsed.database or "",
        name=database_name(parsed, environ),
        masked_url=mask_url(parsed),
        key=target_key(parsed),
        host_class=host_class,
        host_reason=reason,
    )


def classify_reached_host(
    backend: str, host: str | None, hostaddr: str | None, allowed_hosts: tuple[str, ...] = ()
) -> tuple[str, str]:
    """Return ("local" | "remote", reason) for where a live connection reached.

    The client's own record of where it connected decides, not the URL's text: a
    socket folder or a loopback address is local, and so is a host matching an
    allowed glob; where the address is known, it must be loopback too for a
    loopback name (a ``localhost`` that resolves elsewhere is not local).
    """
    if backend == "sqlite":
        return "local", "SQLite file"
    if not host:
        return "remote", "the driver did not say where it connected"
    if host.startswith("/") or host.startswith("@"):
        return "local", f"unix socket {host}"
    for pattern in allowed_hosts:
        if fnmatch.fnmatchcase(host.lower(), pattern.lower()):
            return "local", f"host {host} matches safe_cleanup_allowed_hosts {pattern!r}"
    if _is_loopback(host) and (not hostaddr or _is_loopback(hostaddr)):
        return "local", f"loopback host {host}"
    if hostaddr and hostaddr != host:
        return "remote", f"host {host} ({hostaddr}) is not local"
    return "remote", f"host {host} is not local"


def reached_target(reached: Any, host_class: str, host_reason: str) -> Target:
    """The Target of the database a live connection reached (see watch.Reached)."""
    backend, database = reached.backend, reached.database
    if backend == "sqlite":
        name = "memory" if database in ("", ":memory:") else PurePath(database).name
        shown = URL.create(f"sqlite+{reached.driver}", database=database or None)
        key = f"sqlite:///{database}"
    else:
        name = database
        socket = bool(reached.host) and reached.host.startswith(("/", "@"))
        shown = URL.create(
            f"{backend}+{reached.driver}" if reached.driver else backend,
            username=reached.user,
            host=None if socket else reached.host,
            port=reached.port,
            database=database or None,
            query={"host": reached.host} if socket else {},
        )
        key = f"{backend}://{reached.host or ''}:{reached.port or ''}/{database}"
    return Target(
        backend=backend,
        host=reached.host,
        port=reached.port,
        database=database,
        name=name,
        masked_url=shown.render_as_string(hide_password=True),
        key=key,
        host_class=host_class,
        host_reason=host_reason,
        driver=reached.driver,
        hostaddr=reached.hostaddr,
    )


# Query keys with which libpq (or a MySQL driver) picks the server or the database.
_REDIRECTING_QUERY_KEYS = frozenset(
    {"host", "hostaddr", "port", "dbname", "database", "db", "service", "servicefile"}
)


def reached_url(url: URL, target: Target) -> URL:
    """The engine's URL (driver, credentials, options) aimed at the database reached.

    For tools that connect on their own (``pg_dump``): they must reach the database
    that was judged, whatever the URL's text, query string or ``PG*`` variables say.
    """
    query = {k: v for k, v in url.query.items() if k.lower() not in _REDIRECTING_QUERY_KEYS}
    socket = bool(target.host) and str(target.host).startswith(("/", "@"))
    if socket:
        query["host"] = str(target.host)
    elif target.hostaddr and target.hostaddr != target.host:
        query["hostaddr"] = target.hostaddr
    return url.set(
        host=None if socket else target.host,
        port=target.port,
        database=target.database or None,
        query=query,
    )
