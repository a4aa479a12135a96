"""Settings: CLI > environment > ini > default, each value knowing where it came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pytest_safe_cleanup.settings import DEFAULT_BLOCKED, Settings, SettingsError, resolve

CLI_MODE, ENV_MODE, INI_MODE = "safe_cleanup", "SAFE_CLEANUP_MODE", "safe_cleanup_mode"
CLI_URL, ENV_URL, INI_URL = "safe_cleanup_url", "SAFE_CLEANUP_URL", "safe_cleanup_url"


def wide(text: str) -> str:
    """The full-width form of ASCII text (NFKC folds it back)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


MODE_CASES = [
    # (id, cli, env, ini, mode, source)
    (
        "cli-beats-all",
        {CLI_MODE: "off"},
        {ENV_MODE: "apply"},
        {INI_MODE: "dry"},
        "off",
        "--safe-cleanup",
    ),
    (
        "env-beats-ini",
        {CLI_MODE: None},
        {ENV_MODE: "off"},
        {INI_MODE: "apply"},
        "off",
        "SAFE_CLEANUP_MODE",
    ),
    ("ini-beats-default", {}, {}, {INI_MODE: "off"}, "off", "ini safe_cleanup_mode"),
    ("default", {CLI_MODE: None}, {}, {INI_MODE: None}, "dry", "default"),
    (
        "empty-env-is-unset",
        {},
        {ENV_MODE: ""},
        {INI_MODE: "apply"},
        "apply",
        "ini safe_cleanup_mode",
    ),
    ("empty-ini-is-unset", {}, {}, {INI_MODE: ""}, "dry", "default"),
    ("value-normalised", {CLI_MODE: " APPLY "}, {}, {}, "apply", "--safe-cleanup"),
]


@pytest.mark.parametrize(
    ("cli", "env", "ini", "mode", "source"),
    [c[1:] for c in MODE_CASES],
    ids=[c[0] for c in MODE_CASES],
)
def test_mode_precedence(
    cli: dict[str, Any], env: dict[str, str], ini: dict[str, Any], mode: str, source: str
) -> None:
    settings = resolve(cli, env, ini)
    assert settings.mode == mode
    assert settings.source("mode") == source
    assert settings.sources["mode"] == source


A, B, C = "sqlite:////tmp/a.db", "sqlite:////tmp/b.db", "sqlite:////tmp/c.db"
URL_CASES = [
    ("cli-beats-all", {CLI_URL: A}, {ENV_URL: B}, {INI_URL: C}, A, "--safe-cleanup-url"),
    ("env-beats-ini", {}, {ENV_URL: B}, {INI_URL: C}, B, "SAFE_CLEANUP_URL"),
    ("ini-beats-default", {}, {}, {INI_URL: C}, C, "ini safe_cleanup_url"),
    ("default-none", {}, {}, {}, None, "default"),
    ("stripped", {}, {ENV_URL: f"  {B}\n"}, {}, B, "SAFE_CLEANUP_URL"),
]


@pytest.mark.parametrize(
    ("cli", "env", "ini", "url", "source"),
    [c[1:] for c in URL_CASES],
    ids=[c[0] for c in URL_CASES],
)
def test_url_precedence(
    cli: dict[str, Any], env: dict[str, str], ini: dict[str, Any], url: str | None, source: str
) -> None:
    settings = resolve(cli, env, ini)
    assert settings.url == url
    assert settings.source("url") == source


FALSY_CASES = [
    # (id, cli, env, ini, attribute, expected value, source)
    (
        "empty-url-not-overridden-by-ini",
        {CLI_URL: ""},
        {},
        {INI_URL: C},
        "url",
        "",
        "--safe-cleanup-url",
    ),
    (
        "empty-url-not-overridden-by-env",
        {CLI_URL: ""},
        {ENV_URL: B},
        {},
        "url",
        "",
        "--safe-cleanup-url",
    ),
]


@pytest.mark.parametrize(
    ("cli", "env", "ini", "attribute", "value", "source"),
    [c[1:] for c in FALSY_CASES],
    ids=[c[0] for c in FALSY_CASES],
)
def test_falsy_but_set_cli_value_is_not_overridden(
    cli: dict[str, Any],
    env: dict[str, str],
    ini: dict[str, Any],
    attribute: str,
    value: Any,
    source: str,
) -> None:
    settings = resolve(cli, env, ini)
    assert getattr(settings, attribute) == value
    assert settings.source(attribute) == source


FALSY_ERRORS = [
    # a falsy CLI value is judged, not replaced by the ini's (valid) value
    ("empty-mode", {CLI_MODE: ""}, {INI_MODE: "apply"}, "--safe-cleanup: invalid mode ''"),
    ("zero-mode", {CLI_MODE: 0}, {INI_MODE: "apply"}, "--safe-cleanup: invalid mode 0"),
    ("empty-report", {"safe_cleanup_report": ""}, {}, "--safe-cleanup-report: give a path"),
    (
        "empty-backup-dir",
        {"safe_cleanup_backup_dir": " "},
        {"safe_cleanup_backup_dir": "bk"},
        "--safe-cleanup-backup-dir: give a path",
    ),
]


@pytest.mark.parametrize(
    ("cli", "ini", "message"), [c[1:] for c in FALSY_ERRORS], ids=[c[0] for c in FALSY_ERRORS]
)
def test_falsy_cli_value_is_judged_not_replaced(
    cli: dict[str, Any], ini: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(cli, {}, ini)
    assert str(info.value).startswith(message)


INVALID_MODE = [
    ("cli", {CLI_MODE: "bogus"}, {}, {}, "--safe-cleanup"),
    ("env", {}, {ENV_MODE: "bogus"}, {}, "SAFE_CLEANUP_MODE"),
    ("ini", {}, {}, {INI_MODE: "bogus"}, "ini safe_cleanup_mode"),
    (
        "env-invalid-although-ini-valid",
        {},
        {ENV_MODE: "delete"},
        {INI_MODE: "dry"},
        "SAFE_CLEANUP_MODE",
    ),
]


@pytest.mark.parametrize(
    ("cli", "env", "ini", "where"),
    [c[1:] for c in INVALID_MODE],
    ids=[c[0] for c in INVALID_MODE],
)
def test_invalid_mode_names_its_source_and_the_choices(
    cli: dict[str, Any], env: dict[str, str], ini: dict[str, Any], where: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(cli, env, ini)
    message = str(info.value)
    assert message.startswith(f"{where}: invalid mode ")
    assert message.endswith("choose one of: dry, apply, off")


LIST_CASES = [
    ("one-line-spaces", "APP_ENV  ENVIRONMENT", ("APP_ENV", "ENVIRONMENT")),
    ("newlines", "\nAPP_ENV\n  ENVIRONMENT\n", ("APP_ENV", "ENVIRONMENT")),
    ("commas", "APP_ENV, ENVIRONMENT", ("APP_ENV", "ENVIRONMENT")),
    ("list", ["APP_ENV", "ENVIRONMENT"], ("APP_ENV", "ENVIRONMENT")),
    ("linelist-one-line", ["APP_ENV ENVIRONMENT"], ("APP_ENV", "ENVIRONMENT")),
    ("tuple", ("DEPLOY_ENV",), ("DEPLOY_ENV",)),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in LIST_CASES], ids=[c[0] for c in LIST_CASES]
)
def test_list_ini_values(value: Any, expected: tuple[str, ...]) -> None:
    settings = resolve({}, {}, {"safe_cleanup_env_vars": value})
    assert settings.env_vars == expected
    assert settings.source("env_vars") == "ini safe_cleanup_env_vars"


@pytest.mark.parametrize(
    "value",
    ["Production\n  QA-Stage", ["Production", "QA-Stage"], "production qa-stage"],
    ids=["newlines-mixed-case", "list", "one-line"],
)
def test_environment_lists_are_lower_cased_sets(value: Any) -> None:
    settings = resolve(
        {},
        {},
        {"safe_cleanup_blocked_environments": value, "safe_cleanup_allowed_hosts": "postgres"},
    )
    assert settings.blocked_environments == frozenset({*DEFAULT_BLOCKED, "qa-stage"})
    assert settings.allowed_hosts == ("postgres",)


# --- configuration adds blocked names, never removes them --------------------------------

BLOCKED_LISTS = [
    # (id, ini value of safe_cleanup_blocked_environments, names added to the built-in ones)
    ("none", "none", {"none"}),
    ("empty-list", [], set()),
    ("blank", "  ", set()),
    ("only-one-other", "preprod", {"preprod"}),
    ("full-width-and-case", wide("PreProd"), {"preprod"}),
]


@pytest.mark.parametrize(
    ("value", "added"), [c[1:] for c in BLOCKED_LISTS], ids=[c[0] for c in BLOCKED_LISTS]
)
def test_configured_blocked_names_add_to_the_built_in_ones(value: Any, added: set[str]) -> None:
    settings = resolve({}, {}, {"safe_cleanup_blocked_environments": value})
    assert settings.blocked_environments == frozenset(DEFAULT_BLOCKED) | added


def test_a_blocked_name_without_letters_is_a_usage_error() -> None:
    with pytest.raises(SettingsError, match=r"safe_cleanup_blocked_environments: '42' has no"):
        resolve({}, {}, {"safe_cleanup_blocked_environments": "preprod 42"})


ALLOWED_BLOCKED = [
    # (id, ini blocked, ini allowed, blocked name named in the error)
    ("built-in", "none", "production", "production"),
    ("built-in-upper-case", "", "test PROD", "prod"),
    ("built-in-full-width", "", wide("staging"), "staging"),
    ("token-of-a-value", "", "qa prod-eu", "prod"),
    ("trailing-digit", "", "stage2", "stage"),
    ("configured", "preprod", "qa preprod", "preprod"),
    ("configured-inside-a-value", "uat", "uat-1", "uat"),
]


@pytest.mark.parametrize(
    ("blocked", "allowed", "name"),
    [c[1:] for c in ALLOWED_BLOCKED],
    ids=[c[0] for c in ALLOWED_BLOCKED],
)
def test_allowing_a_blocked_name_is_a_usage_error(blocked: str, allowed: str, name: str) -> None:
    ini = {
        "safe_cleanup_blocked_environments": blocked,
        "safe_cleanup_allowed_environments": allowed,
    }
    with pytest.raises(SettingsError) as info:
        resolve({}, {}, ini)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("ini safe_cleanup_allowed_environments: ")
    assert f"blocked environment name {name!r}" in message
    assert "remove it from safe_cleanup_allowed_environments" in message


def test_a_project_blocked_name_leaves_the_default_allowed_list() -> None:
    settings = resolve({}, {}, {"safe_cleanup_blocked_environments": "dev"})
    assert "dev" in settings.blocked_environments
    assert "dev" not in settings.allowed_environments
    assert "test" in settings.allowed_environments


def test_allowed_names_are_normalised() -> None:
    settings = resolve({}, {}, {"safe_cleanup_allowed_environments": wide("QA Review")})
    assert settings.allowed_environments == frozenset({"qa", "review"})


def test_list_defaults() -> None:
    settings = resolve({}, {}, {"safe_cleanup_env_vars": [], "safe_cleanup_allowed_hosts": ""})
    assert settings.env_vars == ("ENVIRONMENT",)
    assert settings.blocked_environments == frozenset(DEFAULT_BLOCKED)
    assert settings.allowed_hosts == ()
    assert settings.source("env_vars") == "default"


def test_blank_env_vars_is_an_error() -> None:
    with pytest.raises(SettingsError, match="ini safe_cleanup_env_vars: name at least one"):
        resolve({}, {}, {"safe_cleanup_env_vars": [" ", ","]})


MAX_ROWS = [
    ("word", "lots", "ini safe_cleanup_max_rows: 'lots' is not a whole number"),
    ("float", "1.5", "ini safe_cleanup_max_rows: '1.5' is not a whole number"),
    ("negative", "-1", "ini safe_cleanup_max_rows: -1 must not be negative"),
]


@pytest.mark.parametrize(
    ("value", "message"), [c[1:] for c in MAX_ROWS], ids=[c[0] for c in MAX_ROWS]
)
def test_max_rows_must_be_a_number(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        resolve({}, {}, {"safe_cleanup_max_rows": value})
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "expected"), [(" 25 ", 25), ("0", 0), (None, 10000)], ids=["spaces", "zero", "unset"]
)
def test_max_rows_values(value: str | None, expected: int) -> None:
    assert resolve({}, {}, {"safe_cleanup_max_rows": value}).max_rows == expected


def test_settings_is_frozen() -> None:
    settings = resolve({}, {}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.mode = "apply"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_rows = 1  # type: ignore[misc]
    assert settings.mode == "dry"


def test_defaults_match_the_dataclass_defaults() -> None:
    resolved = resolve({}, {}, {})
    plain = Settings()
    for f in dataclasses.fields(Settings):
        if f.name != "sources":
            assert getattr(resolved, f.name) == getattr(plain, f.name), f.name
    assert set(resolved.sources.values()) == {"default"}


def test_paths_from_cli_and_env() -> None:
    settings = resolve(
        {"safe_cleanup_report": "out/report.json"},
        {"SAFE_CLEANUP_RUN_ID": " run-7 "},
        {"safe_cleanup_backup_dir": "bk"},
    )
    assert settings.report == Path("out/report.json")
    assert settings.backup_dir == Path("bk")
    assert settings.run_id == "run-7"
    assert settings.source("backup_dir") == "ini safe_cleanup_backup_dir"


@pytest.mark.parametrize(
    ("ini", "expected", "source"),
    [
        ({}, None, "default"),
        ({"safe_cleanup_postgres_image": "  "}, None, "ini safe_cleanup_postgres_image"),
        (
            {"safe_cleanup_postgres_image": " mirror/postgres:17 "},
            "mirror/postgres:17",
            "ini safe_cleanup_postgres_image",
        ),
    ],
)
def test_postgres_image_has_no_default_of_its_own(
    ini: dict[str, Any], expected: str | None, source: str
) -> None:
    """Unset, the provider picks: SAFE_CLEANUP_POSTGRES_IMAGE, else its DEFAULT_IMAGE."""
    settings = resolve({}, {"SAFE_CLEANUP_POSTGRES_IMAGE": "from/env:1"}, ini)
    assert settings.postgres_image == expected
    assert settings.source("postgres_image") == source


# --- as users see it: pytest runs -----------------------------------------------------------

#: the docker provider replaced by one that only says which image it was asked to run
IMAGE_PROBE_CONFTEST = """
import pytest_safe_cleanup.providers.docker as docker
from pytest_safe_cleanup.providers import ProviderUnavailable


class ImageProbe:
    def __init__(self, image, environ=None):
        self.image = image

    def start(self):
        raise ProviderUnavailable(f"asked for image {self.image}")

    def stop(self):
        pass


docker.DockerPostgres = ImageProbe
"""


@pytest.mark.parametrize(
    ("env_image", "ini_image", "used"),
    [
        ("from/env:1", None, "from/env:1"),
        ("from/env:1", "from/ini:2", "from/ini:2"),
        (None, None, "postgres:16-alpine"),
    ],
    ids=["env-applies-without-ini", "ini-beats-env", "provider-default"],
)
def test_postgres_image_from_the_environment_applies_when_no_ini_is_set(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    env_image: str | None,
    ini_image: str | None,
    used: str,
) -> None:
    if env_image is None:
        monkeypatch.delenv("SAFE_CLEANUP_POSTGRES_IMAGE", raising=False)
    else:
        monkeypatch.setenv("SAFE_CLEANUP_POSTGRES_IMAGE", env_image)
    monkeypatch.delenv("SAFE_CLEANUP_REQUIRE_POSTGRES", raising=False)
    ini = "[pytest]\nsafe_cleanup_postgres = docker\n"
    if ini_image is not None:
        ini += f"safe_cleanup_postgres_image = {ini_image}\n"
    pytester.makeini(ini)
    pytester.makeconftest(IMAGE_PROBE_CONFTEST)
    pytester.makepyfile("def test_db(disposable_postgres):\n    pass\n")
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [f"SKIPPED * safe-cleanup: no disposable PostgreSQL: docker: asked for image {used}"]
    )


def test_unknown_mode_on_the_command_line_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--safe-cleanup=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--safe-cleanup*invalid choice*bogus*dry*apply*off*"])
    assert "passed" not in result.stdout.str()


def test_unknown_mode_in_the_environment_names_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nsafe_cleanup_mode = dry\n")
    monkeypatch.setenv("SAFE_CLEANUP_MODE", "bogus")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: safe-cleanup: SAFE_CLEANUP_MODE: invalid mode 'bogus'; "
            "choose one of: dry, apply, off"
        ]
    )
    assert "passed" not in result.stdout.str()


def test_header_and_summary_show_mode_and_its_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    # ini asks for apply (which would need safe_cleanup_backup = none): the variable wins
    pytester.makeini("[pytest]\nsafe_cleanup_mode = apply\n")
    monkeypatch.setenv("SAFE_CLEANUP_MODE", "off")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "safe-cleanup: mode=off (SAFE_CLEANUP_MODE), target=* (default), run *",
            "*= safe cleanup =*",
            "mode: off (SAFE_CLEANUP_MODE)*",
        ]
    )
    result.stdout.no_fnmatch_line("*mode=apply*")


def test_triggers_is_refuse_unless_the_ini_trusts_them() -> None:
    assert resolve({}, {}, {}).triggers == "refuse"
    assert resolve({}, {}, {"safe_cleanup_triggers": " Trust "}).triggers == "trust"
    with pytest.raises(SettingsError) as info:
        resolve({}, {}, {"safe_cleanup_triggers": "ignore"})
    assert str(info.value) == (
        "ini safe_cleanup_triggers: invalid triggers 'ignore'; choose one of: refuse, trust"
    )
