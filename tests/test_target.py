"""Where a cleanup would run: host class, database name and a password-free URL, as a table."""

from __future__ import annotations

import os

import pytest

from pytest_safe_cleanup import target
from pytest_safe_cleanup.target import TargetError

GLOBS = ("postgres", "*.svc.cluster.local")

HOST_CASES = [
    # (id, url, environ, host_class, words in the reason)
    ("localhost", "postgresql+psycopg://u@localhost:5432/db", {}, "local", "loopback"),
    ("LOCALHOST-upper", "postgresql+psycopg://u@LOCALHOST/db", {}, "local", "loopback"),
    ("127.0.0.1", "postgresql+psycopg://u@127.0.0.1:5432/db", {}, "local", "loopback"),
    ("127.0.0.2", "postgresql+psycopg://u@127.0.0.2/db", {}, "local", "loopback"),
    ("::1-bracketed-url", "postgresql://u@[::1]:5432/db", {}, "local", "loopback"),
    (
        "unix-socket-in-query",
        "postgresql+psycopg://u@/db?host=/var/run/postgresql",
        {},
        "local",
        "unix socket /var/run/postgresql",
    ),
    ("empty-host-default-socket", "postgresql+psycopg://u@/db", {}, "local", "default unix socket"),
    (
        "empty-host-PGHOST-remote",
        "postgresql+psycopg://u@/db",
        {"PGHOST": "db.example.com"},
        "remote",
        "from PGHOST",
    ),
    (
        "empty-host-PGHOST-socket",
        "postgresql+psycopg://u@/db",
        {"PGHOST": "/tmp"},
        "local",
        "unix socket /tmp",
    ),
    (
        "empty-host-PGHOSTADDR-remote",
        "postgresql+psycopg://u@/db",
        {"PGHOSTADDR": "10.1.2.3"},
        "remote",
        "from PGHOST",
    ),
    (
        "url-host-beats-PGHOST",
        "postgresql+psycopg://u@localhost/db",
        {"PGHOST": "db.example.com"},
        "local",
        "loopback",
    ),
    # libpq connects to hostaddr whatever host says (checked against a real server)
    (
        "query-hostaddr-remote",
        "postgresql+psycopg://u@/db?hostaddr=10.0.0.5",
        {},
        "remote",
        "query string",
    ),
    (
        "query-hostaddr-beats-socket",
        "postgresql+psycopg://u@/db?host=/tmp&hostaddr=10.0.0.5",
        {},
        "remote",
        "query string",
    ),
    (
        "PGHOSTADDR-beats-url-localhost",
        "postgresql+psycopg://u@localhost/db",
        {"PGHOSTADDR": "10.0.0.5"},
        "remote",
        "from PGHOSTADDR",
    ),
    (
        "PGHOSTADDR-loopback-local",
        "postgresql+psycopg://u@db.example.com/db",
        {"PGHOSTADDR": "127.0.0.1"},
        "local",
        "loopback",
    ),
    (
        "service-in-query-remote",
        "postgresql+psycopg://u@/db?service=main",
        {},
        "remote",
        "pg_service.conf",
    ),
    (
        "PGSERVICE-remote",
        "postgresql+psycopg://u@/db",
        {"PGSERVICE": "main"},
        "remote",
        "pg_service.conf",
    ),
    ("db.local-is-remote", "postgresql+psycopg://u@db.local/db", {}, "remote", "not local"),
    ("10.0.0.5-is-remote", "postgresql+psycopg://u@10.0.0.5/db", {}, "remote", "not local"),
    ("192.168.1.4-is-remote", "postgresql+psycopg://u@192.168.1.4/db", {}, "remote", "not local"),
    (
        "localhost.example.com-is-remote",
        "postgresql+psycopg://u@localhost.example.com/db",
        {},
        "remote",
        "not local",
    ),
    ("query-host-remote", "postgresql://u@/db?host=prod.example.com", {}, "remote", "query string"),
    (
        "query-host-localhost-still-remote",
        "postgresql://u@/db?host=localhost",
        {},
        "remote",
        "query string",
    ),
    (
        "query-host-overrides-url-host",
        "postgresql://u@localhost/db?host=prod.example.com",
        {},
        "remote",
        "query string",
    ),
    (
        "query-host-list-one-remote",
        "postgresql://u@/db?host=/tmp,prod.example.com",
        {},
        "remote",
        "query string",
    ),
    (
        "glob-postgres",
        "postgresql+psycopg://u@postgres:5432/db",
        {},
        "local",
        "safe_cleanup_allowed_hosts",
    ),
    (
        "glob-svc-cluster-local",
        "postgresql+psycopg://u@pg.ns.svc.cluster.local/db",
        {},
        "local",
        "'*.svc.cluster.local'",
    ),
    (
        "glob-does-not-match-suffix",
        "postgresql+psycopg://u@postgres.example.com/db",
        {},
        "remote",
        "not local",
    ),
    ("sqlite-file", "sqlite:////tmp/app.db", {}, "local", "SQLite file"),
    ("sqlite-relative-file", "sqlite:///app.db", {}, "local", "SQLite file"),
    ("sqlite-memory", "sqlite://", {}, "local", "SQLite in memory"),
    ("sqlite-memory-explicit", "sqlite:///:memory:", {}, "local", "SQLite in memory"),
    ("mysql-localhost", "mysql+pymysql://u@localhost:3306/db", {}, "local", "loopback"),
    ("mysql-remote", "mysql+pymysql://u@mysql.example.com/db", {}, "remote", "not local"),
    (
        "mysql-socket",
        "mysql+pymysql://u@/db?unix_socket=/var/run/mysqld/mysqld.sock",
        {},
        "local",
        "unix socket /var/run/mysqld/mysqld.sock",
    ),
    ("mysql-default-socket", "mysql+pymysql://u@/db", {}, "local", "default unix socket"),
    # the mysql dialects pass ?host= to the driver after the URL's host: the query wins
    (
        "mysql-query-host-beats-localhost",
        "mysql+pymysql://u@localhost:3306/db?host=db.example.com",
        {},
        "remote",
        "host db.example.com is given in the query string",
    ),
    (
        "mariadb-query-host-beats-127",
        "mariadb+pymysql://u@127.0.0.1/db?host=10.0.0.5",
        {},
        "remote",
        "query string",
    ),
    (
        "mysql-query-host-only",
        "mysql+pymysql://u@/db?host=mysql.example.com",
        {},
        "remote",
        "query string",
    ),
    (
        "mysql-query-loopback-is-still-remote",
        "mysql+pymysql://u@/db?host=127.0.0.1",
        {},
        "remote",
        "query string",
    ),
    (
        "mysql-query-host-glob-is-still-remote",
        "mysql+pymysql://u@localhost/db?host=postgres",
        {},
        "remote",
        "query string",
    ),
    (
        "mysql-query-socket-path-is-local",
        "mysql+pymysql://u@db.example.com/db?host=/var/run/mysqld/mysqld.sock",
        {},
        "local",
        "unix socket /var/run/mysqld/mysqld.sock (from the query string)",
    ),
    (
        "mariadb-service-name-not-in-globs",
        "mariadb+pymysql://u@mysql/db",
        {},
        "remote",
        "not local",
    ),
    # Only SQLite, PostgreSQL and MySQL/MariaDB have a known local default without a host:
    # elsewhere the driver connects wherever its query string, DSN or configuration says.
    (
        "mssql-odbc_connect-no-host-remote",
        "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Dprod%3BDATABASE%3Dapp",
        {},
        "remote",
        "no host in the URL",
    ),
    (
        "oracle-dsn-no-host-remote",
        "oracle+oracledb://u:p@/?dsn=prod.example.com/orcl",
        {},
        "remote",
        "no host in the URL",
    ),
    ("mssql-dsn-name-no-host-remote", "mssql+pyodbc://u:p@/app", {}, "remote", "mssql driver"),
    (
        "mssql-odbc_connect-beats-localhost",
        "mssql+pyodbc://u@localhost/app?odbc_connect=SERVER%3Dprod",
        {},
        "remote",
        "odbc_connect= in the query string",
    ),
    (
        "oracle-dsn-beats-localhost",
        "oracle+oracledb://u:p@localhost/?dsn=prod.example.com/orcl",
        {},
        "remote",
        "dsn= in the query string",
    ),
    ("mssql-localhost", "mssql+pyodbc://u:p@localhost:1433/app", {}, "local", "loopback"),
]


@pytest.mark.parametrize(
    ("url", "environ", "host_class", "words"),
    [c[1:] for c in HOST_CASES],
    ids=[c[0] for c in HOST_CASES],
)
def test_host_class(url: str, environ: dict[str, str], host_class: str, words: str) -> None:
    t = target.from_url(url, GLOBS, environ)
    assert t.host_class == host_class, t.host_reason
    assert t.is_local is (host_class == "local")
    assert words in t.host_reason


def test_classify_reads_the_given_environ_not_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "db.example.com")
    assert target.from_url("postgresql+psycopg://u@/db", (), {}).is_local
    assert not target.from_url("postgresql+psycopg://u@/db").is_local  # default: os.environ


SECRET = "S3cr3t-pw"
MASK_CASES = [
    ("userinfo", f"postgresql+psycopg://app:{SECRET}@db.example.com:5432/orders"),
    ("query-password", f"postgresql+psycopg://app@db.example.com/orders?password={SECRET}"),
    ("query-PASSWORD-upper", f"postgresql://app@db.example.com/orders?PASSWORD={SECRET}"),
    ("both", f"postgresql://app:{SECRET}@db.example.com/orders?password={SECRET}&sslmode=require"),
    ("mysql-userinfo", f"mysql+pymysql://app:{SECRET}@localhost/orders"),
    ("query-sslpassword", f"postgresql://app@db.example.com/orders?sslpassword={SECRET}"),
]


@pytest.mark.parametrize("url", [c[1] for c in MASK_CASES], ids=[c[0] for c in MASK_CASES])
def test_password_never_in_masked_url_or_key(url: str) -> None:
    t = target.from_url(url)
    for shown in (t.masked_url, t.key, repr(t), t.host_reason):
        assert SECRET not in shown
    assert "db.example.com" in t.masked_url or "localhost" in t.masked_url
    assert "orders" in t.masked_url
    assert t.name == "orders"


def test_same_target_same_key_whatever_the_password() -> None:
    a = target.from_url(f"postgresql://app:{SECRET}@h/db")
    b = target.from_url("postgresql://app:other@h/db")
    assert a.key == b.key


def test_other_query_values_are_kept_in_the_masked_url() -> None:
    t = target.from_url(f"postgresql://app@h/db?password={SECRET}&sslmode=require")
    assert "sslmode=require" in t.masked_url


@pytest.mark.parametrize(
    "url",
    [
        f"not a url://app:{SECRET}@host/db",
        f"postgresql+psycopg://app:{SECRET}/orders",  # the "@" is missing
        f"postgresql://app:{SECRET}",
        f"postgresql://app:{SECRET}@[bad/orders",
        f"postgresql://app:{SECRET}@db:notaport/orders",
        f"postgresql://app:{SECRET} x@db:port/orders",  # a space in the password
        f"app:{SECRET}@db/orders",  # no scheme
    ],
)
def test_unparseable_url_error_hides_the_password(url: str) -> None:
    with pytest.raises(TargetError) as info:
        target.from_url(url)
    message = str(info.value)
    assert SECRET not in message
    assert "dialect+driver://user:password@host:port/database" in message


MASK_TEXT_CASES = [
    # (id, text, what must still show)
    ("userinfo", f"postgresql://user:{SECRET}@db/x", "postgresql://user:***@db/x"),
    ("no-at", f"postgresql://user:{SECRET}/db", "postgresql://user:***/db"),
    ("no-at-no-path", f"postgresql://user:{SECRET}", "postgresql://user:***"),
    ("at-in-password", f"postgresql://u:{SECRET}@x@db/x", "postgresql://u:***@db/x"),
    ("slash-in-password", f"postgresql://u:a/{SECRET}@db/x", "postgresql://u:***@db/x"),
    ("space-in-password", f"'postgresql://u:a {SECRET}@db/x'", "'postgresql://u:***@db/x'"),
    ("empty-password", "mysql+pymysql://root:@localhost/x", "root:***@localhost/x"),
    ("query-password", f"postgresql://u@db/x?password={SECRET}&a=1", "password=***&a=1"),
    ("query-sslpassword", f"postgresql://u@db/x?sslpassword={SECRET}", "sslpassword=***"),
    ("query-PWD", f"mysql://u@db/x?PWD={SECRET}", "PWD=***"),
    ("libpq-keywords", f"host=db password={SECRET} dbname=x", "host=db password=*** dbname=x"),
    ("libpq-quoted", f"host=db password='a {SECRET}' dbname=x", "password=*** dbname=x"),
    (
        "odbc-encoded",
        f"mssql+pyodbc:///?odbc_connect=SERVER%3Dp%3BPWD%3D{SECRET}%3BUID%3Du",
        "PWD%3D***%3BUID",
    ),
    ("bare-userinfo", f"app:{SECRET}@db/orders", "app:***@db/orders"),
    ("two-urls", f"a://u:{SECRET}@h/d b://v:{SECRET}@k/e", "a://u:***@h/d b://v:***@k/e"),
    # nothing to hide: left as it is
    ("port-kept", "postgresql://localhost:5432/db", "postgresql://localhost:5432/db"),
    ("ipv6-kept", "postgresql://[::1]:5432/db", "postgresql://[::1]:5432/db"),
    ("email-kept", "mail bob@example.com", "mail bob@example.com"),
    ("words-kept", 'password authentication failed for user "bob"', "failed for user"),
]


@pytest.mark.parametrize(
    ("text", "shown"), [c[1:] for c in MASK_TEXT_CASES], ids=[c[0] for c in MASK_TEXT_CASES]
)
def test_mask_text_hides_passwords_in_any_url_like_text(text: str, shown: str) -> None:
    masked = target.mask_text(text)
    assert SECRET not in masked
    assert shown in masked


def test_empty_url_says_what_to_give() -> None:
    with pytest.raises(TargetError, match="empty database URL"):
        target.from_url("  ")


NAME_CASES = [
    ("sqlite-absolute", "sqlite:////tmp/some/dir/app.db", "app.db"),
    ("sqlite-relative", "sqlite:///data/test.sqlite3", "test.sqlite3"),
    ("sqlite-uri", "sqlite:///file:/tmp/x/orders.db?mode=rw&uri=true", "orders.db"),
    ("sqlite-memory", "sqlite://", "memory"),
    ("sqlite-memory-explicit", "sqlite:///:memory:", "memory"),
    ("postgres", "postgresql+psycopg://u:pw@localhost:5432/orders_test", "orders_test"),
    ("postgres-no-database-is-user", "postgresql+psycopg://alice@localhost", "alice"),
    ("mysql", "mysql+pymysql://u@localhost/shop", "shop"),
]


@pytest.mark.parametrize(
    ("url", "name"), [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES]
)
def test_database_name(url: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDATABASE", raising=False)
    assert target.from_url(url).name == name


PG_DEFAULT_NAME_CASES = [
    # libpq's default database: PGDATABASE, else the user (URL, else PGUSER, else OS user)
    ("PGDATABASE-beats-url-user", "postgresql://alice@localhost", {"PGDATABASE": "shop"}, "shop"),
    (
        "PGDATABASE-beats-PGUSER",
        "postgresql://localhost",
        {"PGDATABASE": "shop", "PGUSER": "bob"},
        "shop",
    ),
    ("url-user", "postgresql://alice@localhost", {"PGUSER": "bob"}, "alice"),
    ("PGUSER", "postgresql://localhost", {"PGUSER": "bob"}, "bob"),
    ("url-database-beats-all", "postgresql://alice@localhost/app", {"PGDATABASE": "x"}, "app"),
]


@pytest.mark.parametrize(
    ("url", "environ", "name"),
    [c[1:] for c in PG_DEFAULT_NAME_CASES],
    ids=[c[0] for c in PG_DEFAULT_NAME_CASES],
)
def test_postgres_default_database_follows_libpq(
    url: str, environ: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process environment must not leak in: only the environ given counts.
    monkeypatch.setenv("PGDATABASE", "from_process")
    monkeypatch.setenv("PGUSER", "from_process")
    assert target.from_url(url, (), environ).name == name


def test_postgres_default_database_falls_back_to_the_os_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pwd = pytest.importorskip("pwd")
    monkeypatch.setenv("PGDATABASE", "from_process")
    monkeypatch.setenv("PGUSER", "from_process")
    name = target.from_url("postgresql://localhost", (), {}).name
    assert name == pwd.getpwuid(os.geteuid()).pw_name


def test_postgres_default_database_is_where_libpq_connects(pg_server_url: str) -> None:
    """The name a person confirms is the database a URL without one really reaches."""
    from sqlalchemy import create_engine, make_url, text

    server = make_url(pg_server_url)
    if server.get_backend_name() != "postgresql" or not server.username:
        pytest.skip("needs a PostgreSQL URL with a user name")
    bare = server.set(database=None)
    environ = {"PGDATABASE": "template1"}  # not the user's name, which libpq would try next
    engine = create_engine(bare)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PGDATABASE", environ["PGDATABASE"])
            with engine.connect() as conn:
                reached = conn.execute(text("SELECT current_database()")).scalar()
    finally:
        engine.dispose()
    assert target.from_url(bare, (), environ).name == reached


def test_first_line_is_the_first_non_blank_line_stripped() -> None:
    class Wrapped(Exception):
        orig = ValueError("\n  driver says no  \n\tdetail\n")

    assert target.first_line(Wrapped("ignored")) == "driver says no"
    assert target.first_line(RuntimeError("  one\ntwo")) == "one"
    assert target.first_line(RuntimeError("  \n ")) == "RuntimeError"


def test_secret_query_keys_include_sslpassword() -> None:
    assert "sslpassword" in target.SECRET_QUERY_KEYS
    assert "sslpassword" not in target.PASSWORD_QUERY_KEYS
    assert target.carries_secret(target.parse_url("postgresql://u@h/db?SSLPassword=x"))
    assert target.carries_secret(target.parse_url("postgresql://u:p@h/db"))
    assert not target.carries_secret(target.parse_url("postgresql://u@h/db?sslmode=require"))


def test_libpq_really_connects_to_hostaddr(pg_server_url: str) -> None:
    """Why hostaddr decides the host class: the socket in host= is never used."""
    from sqlalchemy import URL, create_engine, make_url, text

    server = make_url(pg_server_url)
    if server.get_backend_name() != "postgresql" or server.host != "127.0.0.1":
        pytest.skip("needs the server on 127.0.0.1")
    url = URL.create(
        server.drivername,
        username=server.username,
        password=server.password,
        database=server.database,
        query={
            "host": "/nonexistent-dir",
            "hostaddr": "127.0.0.1",
            "port": str(server.port or 5432),
        },
    )
    assert url.host is None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT inet_server_addr()")).scalar() is not None
    finally:
        engine.dispose()
    assert not target.from_url(url, (), {}).is_local


def test_mysql_driver_really_connects_to_the_query_host() -> None:
    """Why ?host= decides a MySQL URL's host class: the URL's own host is never used."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    pytest.importorskip("pymysql")
    url = "mysql+pymysql://root@nonexistent.invalid:3306/mysql?host=127.0.0.1"
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    except OperationalError as exc:
        if os.environ.get("SAFE_CLEANUP_REQUIRE_MYSQL") == "1":
            raise
        pytest.skip(f"no MySQL/MariaDB server on 127.0.0.1:3306: {exc}")
    finally:
        engine.dispose()
    assert not target.from_url(url, (), {}).is_local
