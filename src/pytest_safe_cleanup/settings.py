"""One frozen Settings, resolved once from CLI > environment > ini > defaults.

Each value keeps the place it came from, so that errors and the report header can
say which flag, variable or ini key decided (a falsy CLI value never falls through).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

MODES = ("dry", "apply", "off")
BACKUPS = ("rows", "pg_dump", "none")
KEEPS = ("never", "failed")
UNGUARDED = ("warn", "error", "ignore")
WATCHES = ("plugin", "all")
TRIGGERS = ("refuse", "trust")
TRACKS = ("none", "sessions")

DEFAULT_BLOCKED = ("production", "prod", "prd", "live", "staging", "stage", "stg")
DEFAULT_ALLOWED = ("local", "test", "testing", "ci", "dev", "development")
#: always read, whatever ini safe_cleanup_env_vars names
ALWAYS_READ_ENV_VAR = "ENVIRONMENT"
#: variables other stacks use: read for blocked names only, never to allow or confirm
BLOCK_ONLY_ENV_VARS = ("APP_ENV", "ENV", "FLASK_ENV", "DJANGO_ENV", "PYTHON_ENV")

# Marks and invisible format characters are dropped, not split on: "pro\u200bd" is "prod".
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf"})


def normalise_name(text: str) -> str:
    """An environment, stamp or database name as the guard compares it.

    NFKC folds full-width and compatibility forms (a full-width PROD), case is folded, and
    accents, zero-width and other format characters are dropped, so that a name that
    reads as ``prod`` compares as ``prod``.
    """
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    kept = "".join(c for c in folded if unicodedata.category(c) not in _DROPPED_CATEGORIES)
    return unicodedata.normalize("NFKC", kept).strip()


# Cyrillic and Greek letters drawn like the Latin letters of the blocked names: a word
# typed with them (a Cyrillic "\u0440" in "prod") reads as the word it looks like.
_LOOKALIKES = str.maketrans("аеорсухіјѕԁɡԛνοραεικτӏ", "aeopcyxijsdgqvopaeiktl")


def name_tokens(text: str) -> tuple[str, ...]:
    """The words of a name: runs of letters of its normalised form.

    Every character that is not a letter splits, digits included, so a trailing (or
    leading) number never hides a word: ``production-eu``, ``prod1``, ``orders-prod2``
    and ``PROD_EU`` all hold ``prod``/``production``; ``product_catalog`` does not.
    """
    words: list[str] = []
    current: list[str] = []
    for char in normalise_name(text).translate(_LOOKALIKES):
        if char.isalpha():
            current.append(char)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return tuple(words)


def blocked_name(text: str, blocked: Iterable[str]) -> str | None:
    """The blocked name whose words appear, in a row, among ``text``'s words, if any."""
    words = name_tokens(text)
    for name in sorted(blocked):
        wanted = name_tokens(name)
        n = len(wanted)
        if n and any(words[i : i + n] == wanted for i in range(len(words) - n + 1)):
            return name
    return None


# name -> (cli option dest, environment variable, ini key, default)
_SPEC: dict[str, tuple[str | None, str | None, str | None, Any]] = {
    "mode": ("safe_cleanup", "SAFE_CLEANUP_MODE", "safe_cleanup_mode", "dry"),
    "url": ("safe_cleanup_url", "SAFE_CLEANUP_URL", "safe_cleanup_url", None),
    "env_vars": (None, None, "safe_cleanup_env_vars", ("ENVIRONMENT",)),
    "blocked_environments": (None, None, "safe_cleanup_blocked_environments", DEFAULT_BLOCKED),
    "allowed_environments": (None, None, "safe_cleanup_allowed_environments", DEFAULT_ALLOWED),
    "allowed_hosts": (None, None, "safe_cleanup_allowed_hosts", ()),
    "max_rows": (None, None, "safe_cleanup_max_rows", 10000),
    "backup": (None, None, "safe_cleanup_backup", "rows"),
    "backup_dir": ("safe_cleanup_backup_dir", None, "safe_cleanup_backup_dir", None),
    "backup_keep": (None, None, "safe_cleanup_backup_keep", 20),
    "keep": (None, None, "safe_cleanup_keep", "never"),
    "unguarded": (None, None, "safe_cleanup_unguarded", "warn"),
    "watch": (None, None, "safe_cleanup_watch", "plugin"),
    "postgres": (None, None, "safe_cleanup_postgres", "auto"),
    # None: the provider decides (SAFE_CLEANUP_POSTGRES_IMAGE, else providers.DEFAULT_IMAGE)
    "postgres_image": (None, None, "safe_cleanup_postgres_image", None),
    "report": ("safe_cleanup_report", None, None, None),
    "run_id": (None, "SAFE_CLEANUP_RUN_ID", None, None),
    "triggers": (None, None, "safe_cleanup_triggers", "refuse"),
    "track": (None, None, "safe_cleanup_track", "none"),
}

#: ini keys with their help text, declared by the plugin; the CLI reads the same keys.
INI_HELP: dict[str, str] = {
    "safe_cleanup_mode": "cleanup mode: dry (default), apply or off",
    "safe_cleanup_url": "database URL of the default safe_cleanup_engine",
    "safe_cleanup_env_vars": "variables that name the environment, first non-empty wins "
    "(ENVIRONMENT is always read too)",
    "safe_cleanup_blocked_environments": "more environment names that are never cleaned "
    "(added to production prod prd live staging stage stg, which always stay blocked)",
    "safe_cleanup_allowed_environments": "environment names that need no confirmation "
    "(never a blocked one)",
    "safe_cleanup_allowed_hosts": "host globs treated as local (CI service names)",
    "safe_cleanup_max_rows": "most rows one cleanup may delete (default 10000)",
    "safe_cleanup_backup": "backup strategy: rows (default), pg_dump or none",
    "safe_cleanup_backup_dir": "backup folder (default .safe-cleanup/backups under rootdir)",
    "safe_cleanup_backup_keep": "how many runs of backups to keep (default 20)",
    "safe_cleanup_keep": "never (default) or failed: keep the data of failed tests",
    "safe_cleanup_unguarded": "warn (default), error or ignore deletes that bypass the plugin",
    "safe_cleanup_watch": "plugin (default) or all: which engines are watched",
    "safe_cleanup_postgres": "disposable_postgres provider: auto, docker, local or a server URL",
    "safe_cleanup_postgres_image": "image of the docker provider (default "
    "SAFE_CLEANUP_POSTGRES_IMAGE, else postgres:16-alpine)",
    "safe_cleanup_triggers": "refuse (default) or trust what triggers delete or change "
    "outside the plan (listed in the summary)",
    "safe_cleanup_track": "none (default) or sessions: safe_cleanup deletes the rows every "
    "ORM session inserts during the test",
}
LIST_INI = {
    "safe_cleanup_env_vars",
    "safe_cleanup_blocked_environments",
    "safe_cleanup_allowed_environments",
    "safe_cleanup_allowed_hosts",
}


class SettingsError(ValueError):
    """A configuration value is invalid; the message names where it came from."""


@dataclass(frozen=True)
class Settings:
    """Resolved configuration; ``sources`` says where each value came from."""

    mode: str = "dry"
    url: str | None = None
    env_vars: tuple[str, ...] = ("ENVIRONMENT",)
    blocked_environments: frozenset[str] = frozenset(DEFAULT_BLOCKED)
    allowed_environments: frozenset[str] = frozenset(DEFAULT_ALLOWED)
    allowed_hosts: tuple[str, ...] = ()
    max_rows: int = 10000
    backup: str = "rows"
    backup_dir: Path | None = None
    backup_keep: int = 20
    keep: str = "never"
    unguarded: str = "warn"
    watch: str = "plugin"
    postgres: str = "auto"
    postgres_image: str | None = None
    report: Path | None = None
    run_id: str | None = None
    triggers: str = "refuse"
    track: str = "none"
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, name: str) -> str:
        """Where a value came from: an option, a variable, an ini key or ``default``."""
        return self.sources.get(name, "default")


def _choice(name: str, value: Any, choices: tuple[str, ...], where: str) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise SettingsError(
            f"{where}: invalid {name} {value!r}; choose one of: {', '.join(choices)}"
        )
    return text


def _positive_int(value: Any, where: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{where}: {value!r} is not a whole number") from None
    if number < 0:
        raise SettingsError(f"{where}: {number} must not be negative")
    return number


def _path(value: Any, where: str) -> Path | None:
    if value is None:
        return None
    if not str(value).strip():
        raise SettingsError(f"{where}: give a path, not an empty value")
    return Path(str(value).strip())


def _optional(value: Any) -> str | None:
    """A stripped string, or None where nothing (or only blanks) was given."""
    text = str(value).strip() if value is not None else ""
    return text or None


def _words(value: Any) -> tuple[str, ...]:
    """Split ini values given as one line, several lines or a TOML list."""
    items = [value] if isinstance(value, str) else list(value)
    return tuple(w for item in items for w in str(item).replace(",", " ").split())


def _is_set(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str | list | tuple):
        return len(value) > 0
    return True


def _blocked(value: Any, where: str) -> frozenset[str]:
    """The built-in blocked names plus the configured ones: configuration only adds."""
    names = set(DEFAULT_BLOCKED)
    for word in _words(value):
        if not name_tokens(word):
            raise SettingsError(
                f"{where}: {word!r} has no letters, so it names no environment; "
                "list environment names such as preprod"
            )
        names.add(normalise_name(word))
    return frozenset(names)


def _allowed(
    value: Any, blocked: frozenset[str], where: str, sources: dict[str, str]
) -> frozenset[str]:
    """The allowed names; a blocked name there is a usage error, never a way to allow it."""
    names = {normalise_name(w) for w in _words(value)}
    if sources["allowed_environments"] == "default":
        # A name the project blocks simply leaves the default allowed list.
        return frozenset(n for n in names if blocked_name(n, blocked) is None)
    for name in sorted(names):
        hit = blocked_name(name, blocked)
        if hit is not None:
            raise SettingsError(
                f"{where}: {name!r} holds the blocked environment name {hit!r}, which can "
                "never be allowed; remove it from safe_cleanup_allowed_environments"
            )
    return frozenset(names)


def _describe(kind: str, key: str) -> str:
    return {"cli": f"--{key.replace('_', '-')}", "env": key, "ini": f"ini {key}"}[kind]


def resolve(
    cli: Mapping[str, Any],
    env: Mapping[str, str],
    ini: Mapping[str, Any],
) -> Settings:
    """Resolve every setting from CLI > environment > ini > default, validating each."""
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (dest, var, key, default) in _SPEC.items():
        value, source = default, "default"
        for kind, k, mapping in (("cli", dest, cli), ("env", var, env), ("ini", key, ini)):
            if k is None:
                continue
            given = mapping.get(k)
            # An option given on the command line counts even when falsy (``--x=``).
            if (given is not None) if kind == "cli" else _is_set(given):
                value = mapping[k]
                source = _describe(kind, k)
                break
        raw[name] = value
        sources[name] = source

    def where(name: str) -> str:
        return sources[name]

    env_vars = _words(raw["env_vars"])
    if not env_vars:
        raise SettingsError(f"{where('env_vars')}: name at least one environment variable")
    postgres = str(raw["postgres"]).strip()
    if postgres.lower() in ("auto", "docker", "local"):
        postgres = postgres.lower()
    elif "://" not in postgres:
        raise SettingsError(
            f"{where('postgres')}: invalid value {postgres!r}; "
            "use auto, docker, local or a PostgreSQL server URL"
        )
    url = raw["url"]
    blocked = _blocked(raw["blocked_environments"], where("blocked_environments"))
    allowed = _allowed(raw["allowed_environments"], blocked, where("allowed_environments"), sources)
    return Settings(
        mode=_choice("mode", raw["mode"], MODES, where("mode")),
        url=str(url).strip() if url is not None else None,
        env_vars=env_vars,
        blocked_environments=blocked,
        allowed_environments=allowed,
        allowed_hosts=_words(raw["allowed_hosts"]),
        max_rows=_positive_int(raw["max_rows"], where("max_rows")),
        backup=_choice("backup", raw["backup"], BACKUPS, where("backup")),
        backup_dir=_path(raw["backup_dir"], where("backup_dir")),
        backup_keep=_positive_int(raw["backup_keep"], where("backup_keep")),
        keep=_choice("keep", raw["keep"], KEEPS, where("keep")),
        unguarded=_choice("unguarded", raw["unguarded"], UNGUARDED, where("unguarded")),
        watch=_choice("watch", raw["watch"], WATCHES, where("watch")),
        postgres=postgres,
        postgres_image=_optional(raw["postgres_image"]),
        report=_path(raw["report"], where("report")),
        run_id=str(raw["run_id"]).strip() if raw["run_id"] is not None else None,
        triggers=_choice("triggers", raw["triggers"], TRIGGERS, where("triggers")),
        track=_choice("track", raw["track"], TRACKS, where("track")),
        sources=MappingProxyType(sources),
    )
