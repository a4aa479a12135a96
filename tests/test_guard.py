"""Layer 1 as a table: environment x target x stamp x name -> verdict and the rules that fired."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_safe_cleanup import guard, target
from pytest_safe_cleanup.guard import Level, read_environment
from pytest_safe_cleanup.intent import IntentBook
from pytest_safe_cleanup.settings import Settings, resolve

LOCAL = "postgresql+psycopg://app@localhost:5432/app_test"
REMOTE = "postgresql+psycopg://app@db.example.com:5432/app_test"
DEFAULTS = resolve({}, {}, {})


def wide(text: str) -> str:
    """The full-width form of ASCII text (NFKC folds it back)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def verdict(
    environ: dict[str, str],
    url: str,
    stamp: str | None = None,
    settings: Settings = DEFAULTS,
) -> guard.Verdict:
    environment = read_environment(settings.env_vars, environ)
    tgt = target.from_url(url, settings.allowed_hosts, environ)
    return guard.evaluate(environment, tgt, stamp, settings)


def rules(v: guard.Verdict) -> set[str]:
    """The rules at the verdict's level: the ones that decided it."""
    return {r.rule for r in v.deciding}


# --- process environment x host -------------------------------------------------------------

ENV_CASES = [
    # (ENVIRONMENT value or None, url, level, deciding rules)
    (" Production ", LOCAL, Level.BLOCK, {"environment"}),
    (" Production ", REMOTE, Level.BLOCK, {"environment"}),
    ("PROD", LOCAL, Level.BLOCK, {"environment"}),
    ("PROD", REMOTE, Level.BLOCK, {"environment"}),
    ("stg", LOCAL, Level.BLOCK, {"environment"}),
    ("stg", REMOTE, Level.BLOCK, {"environment"}),
    ("staging", LOCAL, Level.BLOCK, {"environment"}),
    ("staging", REMOTE, Level.BLOCK, {"environment"}),
    ("live", LOCAL, Level.BLOCK, {"environment"}),
    ("live", REMOTE, Level.BLOCK, {"environment"}),
    ("qa", LOCAL, Level.CONFIRM, {"environment"}),
    ("qa", REMOTE, Level.CONFIRM, {"environment", "host"}),
    ("uat", LOCAL, Level.CONFIRM, {"environment"}),
    ("uat", REMOTE, Level.CONFIRM, {"environment", "host"}),
    ("test", LOCAL, Level.ALLOW, {"environment", "host"}),
    ("test", REMOTE, Level.CONFIRM, {"host"}),
    ("ci", LOCAL, Level.ALLOW, {"environment", "host"}),
    ("ci", REMOTE, Level.CONFIRM, {"host"}),
    ("TEST", LOCAL, Level.ALLOW, {"environment", "host"}),
    (None, LOCAL, Level.ALLOW, {"environment", "host"}),
    (None, REMOTE, Level.CONFIRM, {"environment", "host"}),
    ("", REMOTE, Level.CONFIRM, {"environment", "host"}),
    ("   ", LOCAL, Level.ALLOW, {"environment", "host"}),
]


@pytest.mark.parametrize(
    ("value", "url", "level", "fired"),
    ENV_CASES,
    ids=[f"{v!r}-{'local' if u == LOCAL else 'remote'}" for v, u, *_ in ENV_CASES],
)
def test_environment_and_host(value: str | None, url: str, level: Level, fired: set[str]) -> None:
    environ = {} if value is None else {"ENVIRONMENT": value}
    v = verdict(environ, url)
    assert v.level is level, v.reasons
    assert rules(v) == fired
    assert v.explain()  # a person always gets words, whatever the level


def test_environment_reason_names_variable_and_normalised_value() -> None:
    v = verdict({"ENVIRONMENT": " Production "}, LOCAL)
    (reason,) = v.deciding
    assert reason.rule == "environment"
    assert "ENVIRONMENT='production'" in reason.text
    assert "blocked" in reason.text


def test_unset_environment_reason_names_the_variables_checked() -> None:
    settings = resolve({}, {}, {"safe_cleanup_env_vars": ["APP_ENV", "ENVIRONMENT"]})
    v = verdict({}, REMOTE, settings=settings)
    env_reason = next(r for r in v.reasons if r.rule == "environment")
    assert env_reason.level is Level.CONFIRM
    assert "APP_ENV/ENVIRONMENT is not set" in env_reason.text


# --- several variables: the first non-empty wins ------------------------------------------

MULTI = resolve({}, {}, {"safe_cleanup_env_vars": "APP_ENV ENVIRONMENT"})
MULTI_CASES = [
    # (environ, variable that decides, value, level on a local target)
    ({"APP_ENV": "", "ENVIRONMENT": "production"}, "ENVIRONMENT", "production", Level.BLOCK),
    ({"APP_ENV": "  ", "ENVIRONMENT": "production"}, "ENVIRONMENT", "production", Level.BLOCK),
    # APP_ENV decides allowed/confirm, but a blocked ENVIRONMENT still blocks
    ({"APP_ENV": "test", "ENVIRONMENT": "production"}, "APP_ENV", "test", Level.BLOCK),
    ({"APP_ENV": "test", "ENVIRONMENT": "qa"}, "APP_ENV", "test", Level.ALLOW),
    ({"APP_ENV": "Staging", "ENVIRONMENT": "test"}, "APP_ENV", "staging", Level.BLOCK),
    ({"ENVIRONMENT": "qa"}, "ENVIRONMENT", "qa", Level.CONFIRM),
    ({"APP_ENV": "", "ENVIRONMENT": ""}, None, None, Level.ALLOW),
]


@pytest.mark.parametrize(
    ("environ", "variable", "value", "level"),
    MULTI_CASES,
    ids=[
        "APP_ENV-empty-falls-to-ENVIRONMENT",
        "APP_ENV-blank-falls-to-ENVIRONMENT",
        "APP_ENV-first-but-blocked-ENVIRONMENT-blocks",
        "APP_ENV-first-wins",
        "APP_ENV-blocked-beats-allowed-ENVIRONMENT",
        "only-ENVIRONMENT",
        "both-empty-is-unset",
    ],
)
def test_first_non_empty_variable(
    environ: dict[str, str], variable: str | None, value: str | None, level: Level
) -> None:
    environment = read_environment(MULTI.env_vars, environ)
    assert (environment.variable, environment.value) == (variable, value)
    assert environment.checked == ("APP_ENV", "ENVIRONMENT")
    assert verdict(environ, LOCAL, settings=MULTI).level is level


# --- names are read as words: normalised, split on every non-letter -------------------------

TOKEN_CASES = [
    # (ENVIRONMENT value, level on a local target)
    ("production-eu", Level.BLOCK),
    ("prod1", Level.BLOCK),
    (wide("PROD"), Level.BLOCK),  # full-width
    ("PROD_EU", Level.BLOCK),
    ("\tProduction\n", Level.BLOCK),
    ("prod\u2013eu", Level.BLOCK),  # en dash
    ("eu\u2212live", Level.BLOCK),  # minus sign
    ("pro\u200bd", Level.BLOCK),  # a zero-width space does not split a word
    ("pro\u00add", Level.BLOCK),  # nor does a soft hyphen
    ("Pr\u00f3duction", Level.BLOCK),  # an accent does not hide it
    ("stage2", Level.BLOCK),
    ("01-stg", Level.BLOCK),
    ("eu.live.2", Level.BLOCK),
    (wide("STAGING-eu"), Level.BLOCK),
    ("\u0440rod", Level.BLOCK),  # a Cyrillic er, drawn like a Latin "p"
    ("st\u0430ging", Level.BLOCK),  # a Cyrillic a
    ("pr\u03bfd", Level.BLOCK),  # a Greek omicron
    ("prodigy", Level.CONFIRM),  # a longer word is another word
    ("product", Level.CONFIRM),
    ("reproduce", Level.CONFIRM),
    ("preprod", Level.CONFIRM),  # one word, not in the built-in list
    ("test1", Level.CONFIRM),  # allowed names match whole values only
    (wide("TEST"), Level.ALLOW),
    (" Test ", Level.ALLOW),
]


@pytest.mark.parametrize(("value", "level"), TOKEN_CASES, ids=[repr(c[0]) for c in TOKEN_CASES])
def test_environment_values_are_read_as_words(value: str, level: Level) -> None:
    v = verdict({"ENVIRONMENT": value}, LOCAL)
    assert v.level is level, v.reasons
    assert "environment" in rules(v)
    refusal = guard.environment_refusal(
        read_environment(DEFAULTS.env_vars, {"ENVIRONMENT": value}), DEFAULTS
    )
    assert (refusal is not None) is (level is Level.BLOCK)


# --- every variable is read; the strictest wins ---------------------------------------------

APP_ENV_FIRST = resolve({}, {}, {"safe_cleanup_env_vars": "APP_ENV"})
VARIABLE_CASES = [
    # (id, settings, environ, url, level, variable named in the environment reason)
    ("APP_ENV-alone-blocks", DEFAULTS, {"APP_ENV": "production"}, LOCAL, Level.BLOCK, "APP_ENV"),
    ("ENV-prd-blocks", DEFAULTS, {"ENV": "prd"}, LOCAL, Level.BLOCK, "ENV"),
    ("FLASK_ENV-blocks", DEFAULTS, {"FLASK_ENV": "Staging"}, LOCAL, Level.BLOCK, "FLASK_ENV"),
    ("DJANGO_ENV-blocks", DEFAULTS, {"DJANGO_ENV": "live-eu"}, LOCAL, Level.BLOCK, "DJANGO_ENV"),
    ("PYTHON_ENV-blocks", DEFAULTS, {"PYTHON_ENV": "stage2"}, LOCAL, Level.BLOCK, "PYTHON_ENV"),
    # the same names in another case block too, and never allow
    (
        "lower-case-name-blocks",
        DEFAULTS,
        {"environment": "prod"},
        LOCAL,
        Level.BLOCK,
        "environment",
    ),
    ("mixed-case-app_env-blocks", DEFAULTS, {"App_Env": "live"}, LOCAL, Level.BLOCK, "App_Env"),
    (
        "lower-case-name-does-not-allow",
        DEFAULTS,
        {"environment": "test"},
        REMOTE,
        Level.CONFIRM,
        "ENVIRONMENT is not set",
    ),
    (
        "ENV-blocks-despite-allowed-ENVIRONMENT",
        DEFAULTS,
        {"ENVIRONMENT": "test", "ENV": "prod"},
        LOCAL,
        Level.BLOCK,
        "ENV",
    ),
    # the other stacks' variables never allow or confirm anything
    (
        "APP_ENV-test-does-not-allow-remote",
        DEFAULTS,
        {"APP_ENV": "test"},
        REMOTE,
        Level.CONFIRM,
        "ENVIRONMENT",
    ),
    (
        "APP_ENV-qa-does-not-confirm-local",
        DEFAULTS,
        {"APP_ENV": "qa"},
        LOCAL,
        Level.ALLOW,
        "ENVIRONMENT",
    ),
    # naming other variables never hides ENVIRONMENT
    (
        "env_vars-APP_ENV-still-reads-ENVIRONMENT",
        APP_ENV_FIRST,
        {"ENVIRONMENT": "production"},
        LOCAL,
        Level.BLOCK,
        "ENVIRONMENT",
    ),
    (
        "env_vars-APP_ENV-allowed-still-blocked-by-ENVIRONMENT",
        APP_ENV_FIRST,
        {"APP_ENV": "test", "ENVIRONMENT": " Production "},
        LOCAL,
        Level.BLOCK,
        "ENVIRONMENT",
    ),
    (
        "ENVIRONMENT-decides-after-the-listed-ones",
        APP_ENV_FIRST,
        {"ENVIRONMENT": "qa"},
        LOCAL,
        Level.CONFIRM,
        "ENVIRONMENT",
    ),
    (
        "listed-APP_ENV-decides-before-ENVIRONMENT",
        APP_ENV_FIRST,
        {"APP_ENV": "qa", "ENVIRONMENT": "test"},
        LOCAL,
        Level.CONFIRM,
        "APP_ENV",
    ),
]


@pytest.mark.parametrize(
    ("settings", "environ", "url", "level", "variable"),
    [c[1:] for c in VARIABLE_CASES],
    ids=[c[0] for c in VARIABLE_CASES],
)
def test_every_variable_is_read_and_the_strictest_wins(
    settings: Settings, environ: dict[str, str], url: str, level: Level, variable: str
) -> None:
    v = verdict(environ, url, settings=settings)
    assert v.level is level, v.reasons
    env_reason = next(r for r in v.reasons if r.rule == "environment")
    assert variable in env_reason.text
    refusal = guard.environment_refusal(read_environment(settings.env_vars, environ), settings)
    if level is Level.BLOCK:
        assert refusal is not None and f"{variable}=" in refusal
        assert "\n" not in refusal
    else:
        assert refusal is None


def test_every_blocked_variable_is_named() -> None:
    environ = {"ENVIRONMENT": "test", "APP_ENV": "production-eu", "ENV": "stg"}
    environment = read_environment(DEFAULTS.env_vars, environ)
    refusal = guard.environment_refusal(environment, DEFAULTS)
    assert refusal is not None
    assert "APP_ENV='production-eu' holds the blocked environment name 'production'" in refusal
    assert "ENV='stg' is a blocked environment" in refusal
    assert "ENVIRONMENT" not in refusal.split(":")[0]
    assert (environment.variable, environment.value) == ("ENVIRONMENT", "test")


def test_environment_reads_only_the_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    assert read_environment(DEFAULTS.env_vars, {}).values == ()


CONFIG_BYPASSES = [
    # (id, ini) that must not let ENVIRONMENT=production pass
    ("blocked-none", {"safe_cleanup_blocked_environments": "none"}),
    ("blocked-empty", {"safe_cleanup_blocked_environments": ""}),
    ("blocked-other", {"safe_cleanup_blocked_environments": "preprod"}),
    ("env_vars-other", {"safe_cleanup_env_vars": "APP_ENV"}),
    ("env_vars-unused", {"safe_cleanup_env_vars": "NOTHING_HERE"}),
]


@pytest.mark.parametrize(
    "ini", [c[1] for c in CONFIG_BYPASSES], ids=[c[0] for c in CONFIG_BYPASSES]
)
@pytest.mark.parametrize("value", ["production", "prod-eu", wide("STG")])
def test_no_configuration_unblocks_a_built_in_name(ini: dict[str, str], value: str) -> None:
    settings = resolve({}, {}, ini)
    environ = {"ENVIRONMENT": value}
    assert verdict(environ, LOCAL, settings=settings).level is Level.BLOCK
    assert verdict({}, LOCAL, stamp=value, settings=settings).level is Level.BLOCK
    name_url = f"postgresql+psycopg://app@localhost/orders_{value}"
    assert verdict({}, name_url, settings=settings).level is Level.BLOCK


# --- the database's own stamp ---------------------------------------------------------------

STAMP_CASES = [
    # (id, environ, url, stamp, level, deciding rules)
    (
        "production-beats-test-env-and-localhost",
        {"ENVIRONMENT": "test"},
        LOCAL,
        "production",
        Level.BLOCK,
        {"stamp"},
    ),
    ("production-unset-env-localhost", {}, LOCAL, "production", Level.BLOCK, {"stamp"}),
    ("stamp-is-normalised", {"ENVIRONMENT": "test"}, LOCAL, " PROD ", Level.BLOCK, {"stamp"}),
    ("stamp-token", {"ENVIRONMENT": "test"}, LOCAL, "production-eu", Level.BLOCK, {"stamp"}),
    ("stamp-trailing-digit", {"ENVIRONMENT": "test"}, LOCAL, "prod1", Level.BLOCK, {"stamp"}),
    ("stamp-full-width", {"ENVIRONMENT": "test"}, LOCAL, wide("PROD"), Level.BLOCK, {"stamp"}),
    (
        "stamp-disposable-prod-blocks",
        {"ENVIRONMENT": "test"},
        LOCAL,
        "disposable-prod",
        Level.BLOCK,
        {"stamp"},
    ),
    # two rows in a hand-edited stamp table are read together: any blocked one blocks
    (
        "stamp-rows-joined",
        {"ENVIRONMENT": "test"},
        LOCAL,
        "test,production",
        Level.BLOCK,
        {"stamp"},
    ),
    ("stamp-product-asks", {"ENVIRONMENT": "test"}, LOCAL, "product", Level.CONFIRM, {"stamp"}),
    (
        "disposable-makes-remote-pass",
        {"ENVIRONMENT": "test"},
        REMOTE,
        "disposable",
        Level.ALLOW,
        {"environment", "host", "stamp"},
    ),
    (
        "disposable-remote-env-unset",
        {},
        REMOTE,
        "disposable",
        Level.ALLOW,
        {"environment", "host", "stamp"},
    ),
    (
        "disposable-does-not-lift-qa-env",
        {"ENVIRONMENT": "qa"},
        REMOTE,
        "disposable",
        Level.CONFIRM,
        {"environment"},
    ),
    (
        "disposable-does-not-lift-production-env",
        {"ENVIRONMENT": "production"},
        REMOTE,
        "disposable",
        Level.BLOCK,
        {"environment"},
    ),
    ("qa-confirms", {"ENVIRONMENT": "test"}, LOCAL, "qa", Level.CONFIRM, {"stamp"}),
    (
        "test-allows",
        {"ENVIRONMENT": "test"},
        LOCAL,
        "test",
        Level.ALLOW,
        {"environment", "host", "stamp"},
    ),
    (
        "test-does-not-make-remote-local",
        {"ENVIRONMENT": "test"},
        REMOTE,
        "test",
        Level.CONFIRM,
        {"host"},
    ),
    (
        "empty-stamp-is-none",
        {"ENVIRONMENT": "test"},
        LOCAL,
        "",
        Level.ALLOW,
        {"environment", "host"},
    ),
]


@pytest.mark.parametrize(
    ("environ", "url", "stamp", "level", "fired"),
    [c[1:] for c in STAMP_CASES],
    ids=[c[0] for c in STAMP_CASES],
)
def test_stamp(
    environ: dict[str, str], url: str, stamp: str, level: Level, fired: set[str]
) -> None:
    v = verdict(environ, url, stamp)
    assert v.level is level, v.reasons
    assert rules(v) == fired


def test_blocked_stamp_reason_says_what_the_database_is_stamped() -> None:
    v = verdict({"ENVIRONMENT": "test"}, LOCAL, "production")
    (reason,) = v.deciding
    assert reason.rule == "stamp"
    assert "stamped 'production'" in reason.text


# --- the database name ----------------------------------------------------------------------

NAME_CASES = [
    # (url, level on a local target with ENVIRONMENT=test, blocked token or None)
    ("postgresql+psycopg://app@localhost/orders_prod", Level.BLOCK, "prod"),
    ("postgresql+psycopg://app@localhost/product_catalog", Level.ALLOW, None),
    ("postgresql+psycopg://app@localhost/app-staging", Level.BLOCK, "staging"),
    ("postgresql+psycopg://app@localhost/App_Live_Copy", Level.BLOCK, "live"),
    ("postgresql+psycopg://app@localhost/reproduce", Level.ALLOW, None),
    ("postgresql+psycopg://app@localhost/prodigy", Level.ALLOW, None),
    ("postgresql+psycopg://app@localhost/orders-prod2", Level.BLOCK, "prod"),
    ("postgresql+psycopg://app@localhost/ORDERS_PROD", Level.BLOCK, "prod"),
    ("postgresql+psycopg://app@localhost/orders_prod_2024", Level.BLOCK, "prod"),
    ("postgresql+psycopg://app@localhost/stage2copy", Level.BLOCK, "stage"),
    (
        "postgresql+psycopg://app@localhost/orders%EF%BD%90%EF%BD%92%EF%BD%8F%EF%BD%84",
        Level.ALLOW,
        None,
    ),
    (
        "postgresql+psycopg://app@localhost/orders_%EF%BD%90%EF%BD%92%EF%BD%8F%EF%BD%84",
        Level.BLOCK,
        "prod",
    ),
    ("sqlite:////tmp/data/prod.db", Level.BLOCK, "prod"),
    ("sqlite:////tmp/production/app.db", Level.ALLOW, None),  # the folder is not the name
    ("sqlite:///reproduce.db", Level.ALLOW, None),
]


@pytest.mark.parametrize(
    ("url", "level", "token"),
    NAME_CASES,
    ids=[
        "orders_prod",
        "product_catalog",
        "app-staging",
        "App_Live_Copy",
        "reproduce",
        "prodigy",
        "orders-prod2",
        "ORDERS_PROD",
        "orders_prod_2024",
        "stage2copy",
        "orders-fullwidth-prod-one-word",
        "orders_-fullwidth-prod",
        "sqlite-prod.db",
        "sqlite-production-folder",
        "sqlite-reproduce.db",
    ],
)
def test_database_name(url: str, level: Level, token: str | None) -> None:
    v = verdict({"ENVIRONMENT": "test"}, url)
    assert v.level is level, v.reasons
    name_reasons = [r for r in v.reasons if r.rule == "name"]
    if token is None:
        assert name_reasons == []
    else:
        assert rules(v) == {"name"}
        (reason,) = name_reasons
        assert f"blocked token {token!r}" in reason.text


# --- custom lists ---------------------------------------------------------------------------

CUSTOM = resolve(
    {},
    {},
    {
        "safe_cleanup_blocked_environments": "preprod\nprd",
        "safe_cleanup_allowed_environments": ["qa", "Review"],
    },
)
CUSTOM_CASES = [
    # (id, environ, url, stamp, level, deciding rules)
    ("custom-blocked-env", {"ENVIRONMENT": "preprod"}, LOCAL, None, Level.BLOCK, {"environment"}),
    (
        "custom-allowed-env",
        {"ENVIRONMENT": "qa"},
        LOCAL,
        None,
        Level.ALLOW,
        {"environment", "host"},
    ),
    (
        "custom-allowed-is-lower-cased",
        {"ENVIRONMENT": "REVIEW"},
        LOCAL,
        None,
        Level.ALLOW,
        {"environment", "host"},
    ),
    (
        "default-allowed-replaced",
        {"ENVIRONMENT": "test"},
        LOCAL,
        None,
        Level.CONFIRM,
        {"environment"},
    ),
    ("custom-blocked-stamp", {"ENVIRONMENT": "qa"}, LOCAL, "preprod", Level.BLOCK, {"stamp"}),
    (
        "custom-allowed-stamp",
        {"ENVIRONMENT": "qa"},
        LOCAL,
        "review",
        Level.ALLOW,
        {"environment", "host", "stamp"},
    ),
    (
        "custom-blocked-name-token",
        {"ENVIRONMENT": "qa"},
        "postgresql+psycopg://app@localhost/orders_preprod",
        None,
        Level.BLOCK,
        {"name"},
    ),
]


@pytest.mark.parametrize(
    ("environ", "url", "stamp", "level", "fired"),
    [c[1:] for c in CUSTOM_CASES],
    ids=[c[0] for c in CUSTOM_CASES],
)
def test_custom_lists(
    environ: dict[str, str], url: str, stamp: str | None, level: Level, fired: set[str]
) -> None:
    v = verdict(environ, url, stamp, settings=CUSTOM)
    assert v.level is level, v.reasons
    assert rules(v) == fired


def test_custom_allowed_host_glob_makes_a_service_host_local() -> None:
    settings = resolve({}, {}, {"safe_cleanup_allowed_hosts": "postgres"})
    url = "postgresql+psycopg://app@postgres:5432/app_test"
    assert verdict({"ENVIRONMENT": "test"}, url, settings=settings).level is Level.ALLOW
    assert verdict({"ENVIRONMENT": "test"}, url).level is Level.CONFIRM


# --- BLOCK wins over everything -------------------------------------------------------------

BLOCK_CASES = [
    # (id, environ, url, stamp, disposable target, deciding rules)
    (
        "name-beats-allowed-env-local-disposable-stamp",
        {"ENVIRONMENT": "test"},
        "sqlite:////tmp/prod.db",
        "disposable",
        False,
        {"name"},
    ),
    (
        "stamp-beats-disposable-provider-target",
        {"ENVIRONMENT": "test"},
        LOCAL,
        "production",
        True,
        {"stamp"},
    ),
    (
        "env-beats-disposable-provider-target",
        {"ENVIRONMENT": "live"},
        LOCAL,
        "test",
        True,
        {"environment"},
    ),
    (
        "all-three-fire",
        {"ENVIRONMENT": "prod"},
        "postgresql+psycopg://app@localhost/orders_prod",
        "staging",
        False,
        {"environment", "stamp", "name"},
    ),
    (
        "block-beats-confirm",
        {"ENVIRONMENT": "qa"},
        "postgresql+psycopg://app@db.example.com/app_stg",
        "uat",
        False,
        {"name"},
    ),
]


@pytest.mark.parametrize(
    ("environ", "url", "stamp", "disposable", "fired"),
    [c[1:] for c in BLOCK_CASES],
    ids=[c[0] for c in BLOCK_CASES],
)
def test_block_wins(
    environ: dict[str, str], url: str, stamp: str, disposable: bool, fired: set[str]
) -> None:
    environment = read_environment(DEFAULTS.env_vars, environ)
    tgt = dataclasses.replace(target.from_url(url, (), environ), disposable=disposable)
    v = guard.evaluate(environment, tgt, stamp, DEFAULTS)
    assert v.level is Level.BLOCK
    assert rules(v) == fired
    # every reason that contributed is kept, the passing ones too
    assert {r.rule for r in v.reasons} >= {"environment", "host"}
    assert all(r.text in v.explain() for r in v.deciding)


def test_evaluate_is_pure_and_repeatable() -> None:
    environment = read_environment(("ENVIRONMENT",), {"ENVIRONMENT": "qa"})
    tgt = target.from_url(REMOTE, (), {})
    first = guard.evaluate(environment, tgt, "uat", DEFAULTS)
    assert guard.evaluate(environment, tgt, "uat", DEFAULTS) == first
    assert tgt.disposable is False
    guard.evaluate(environment, tgt, "disposable", DEFAULTS)
    assert tgt.disposable is False  # a disposable stamp does not change the caller's target


# --- targets with no known local default ---------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Dprod%3BDATABASE%3Dx",
        "oracle+oracledb://u:p@/?dsn=prod.example.com/orcl",
    ],
    ids=["mssql-odbc_connect", "oracle-dsn"],
)
def test_hostless_url_of_another_backend_is_remote_and_asks(url: str) -> None:
    for environ in ({}, {"ENVIRONMENT": "test"}):
        v = verdict(environ, url)
        assert v.level is Level.CONFIRM, v.reasons
        assert "host" in rules(v)


# --- layer 2 decisions (pure logic) ----------------------------------------------------------


def confirm_verdict(tgt: target.Target) -> guard.Verdict:
    v = guard.evaluate(read_environment(("ENVIRONMENT",), {}), tgt, None, DEFAULTS)
    assert v.level is Level.CONFIRM
    return v


def test_prompt_confirms_only_the_typed_name() -> None:
    tgt = target.from_url(REMOTE, (), {})
    v = confirm_verdict(tgt)
    yes = IntentBook().decide(tgt, v, interactive=True, confirms=(), prompt=lambda _: " app_test\n")
    assert (yes.proceed, yes.status) == (True, "deleted")
    no = IntentBook().decide(tgt, v, interactive=True, confirms=(), prompt=lambda _: "")
    assert (no.proceed, no.status) == (False, "dry")


def test_empty_database_name_is_never_confirmed_by_pressing_enter() -> None:
    tgt = dataclasses.replace(target.from_url(REMOTE, (), {}), name="")
    v = confirm_verdict(tgt)
    asked: list[str] = []

    def enter(text: str) -> str:
        asked.append(text)
        return "\n"

    book = IntentBook()
    for _ in range(2):  # answered once per session, and still no
        decision = book.decide(tgt, v, interactive=True, confirms=(), prompt=enter)
        assert (decision.proceed, decision.status) == (False, "dry")
        assert "\n" not in decision.reason
    assert len(asked) == 1
    spaces = IntentBook().decide(tgt, v, interactive=True, confirms=(), prompt=lambda _: "   ")
    assert not spaces.proceed
