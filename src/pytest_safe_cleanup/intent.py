"""Layer 2: explicit intent before cleaning a target the guard asks about.

A person at a terminal types the database's name, once per session and target; a
run without a person (CI, an xdist worker, no TTY) proceeds only for tests whose
marker names that database. Nothing here imports pytest: the plugin passes in
what it saw (TTYs, markers) and a prompt function.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .guard import Level, Verdict

if TYPE_CHECKING:
    from .target import Target


class IntentError(ValueError):
    """A marker's ``confirm=`` value that cannot express intent."""


def is_interactive(
    stdin_tty: bool, stdout_tty: bool, environ: Mapping[str, str], is_worker: bool
) -> bool:
    """A person can answer: both ends are TTYs, ``CI`` is unset, not an xdist worker."""
    return stdin_tty and stdout_tty and not environ.get("CI") and not is_worker


def confirm_names(value: Any) -> frozenset[str]:
    """Database names from a marker's ``confirm=`` (a name or a list of names)."""
    if value is None:
        return frozenset()
    if value is True or value is False:
        raise IntentError(
            f"confirm={value!r} is not accepted: name the database you mean, "
            'e.g. @pytest.mark.safe_cleanup(confirm="app_test")'
        )
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise IntentError(f"confirm={value!r}: give a database name or a list of names")
    names = set()
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise IntentError(f"confirm={value!r}: every entry must be a non-empty database name")
        names.add(item.strip())
    return frozenset(names)


def run_names(name: str, environ: Mapping[str, str]) -> list[str]:
    """Every database name the run needs confirmed, where one name stands for several.

    A database per xdist worker (``app_test_gw1``) has siblings on the other workers:
    a marker that names only this worker's database would hold the others back.
    """
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    count = environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker or not count.isdigit():
        return [name]
    own = re.compile(rf"(?<![A-Za-z0-9]){re.escape(worker)}(?![0-9])")
    if not own.search(name):
        return [name]
    prefix = worker.rstrip("0123456789")
    return [own.sub(f"{prefix}{i}", name) for i in range(int(count))]


def marker_hint(target: Target, environ: Mapping[str, str] | None = None) -> str:
    """The exact marker that opts a test in for ``target`` (and its xdist siblings)."""
    names = run_names(target.name, os.environ if environ is None else environ)
    if len(names) == 1:
        return f'@pytest.mark.safe_cleanup(confirm="{names[0]}")'
    listed = ", ".join(f'"{n}"' for n in names)
    return f"@pytest.mark.safe_cleanup(confirm=[{listed}])"


def prompt_text(
    target: Target,
    verdict: Verdict,
    counts: Sequence[tuple[str, int]] = (),
    policy: Policy | None = None,
) -> str:
    """What the person is shown before typing the database name: target, verdict, counts."""
    policy = policy or Policy()
    lines = [
        "",
        f"safe-cleanup: about to delete {policy.subject} in {target.masked_url}",
        f"  verdict: {verdict.level.name}",
        *(f"  - {r.text}" for r in verdict.deciding),
    ]
    if counts:
        width = max(len(table) for table, _ in counts)
        lines.append("  rows to delete:")
        lines.extend(f"    {table.ljust(width)}  {n:>8}" for table, n in counts)
        lines.append(f"    {'total'.ljust(width)}  {sum(n for _, n in counts):>8}")
    lines.append(f"Type the database name ({target.name}) {policy.question}: ")
    return "\n".join(lines)


@dataclass(frozen=True)
class Policy:
    """How intent is asked for.

    The plugin asks only where the guard says CONFIRM, and opts tests in by marker; a
    cleanup script run by a person (the incident's case) asks whatever the verdict,
    and a run without a terminal names the database in ``how`` (``confirm=``).
    """

    always: bool = False
    subject: str = "test data"
    question: str = "to allow cleanup for this session, anything else to keep this target dry"
    #: how a run without a terminal names the database (None: the pytest marker)
    how: Callable[[Target], str] | None = None


@dataclass(frozen=True)
class Decision:
    """Whether the cleanup may delete, and why (or why not) in one line."""

    proceed: bool
    status: str  # "deleted" when it may proceed, "dry" (declined prompt) or "held"
    reason: str = ""


@dataclass
class IntentBook:
    """Answers already given this session, one per target: the prompt never repeats."""

    answers: dict[str, bool] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)

    def decide(
        self,
        target: Target,
        verdict: Verdict,
        *,
        interactive: bool,
        confirms: Iterable[str],
        prompt: Callable[[str], str] | None,
        preview: Callable[[], Sequence[tuple[str, int]]] | None = None,
    ) -> Decision:
        """Decide for one cleanup on ``target`` in apply mode.

        ``preview`` gives the per-table counts shown above the question; it is called
        only when the person is asked.
        """
        if verdict.level is Level.BLOCK:
            return Decision(False, "refused", f"refused: {verdict.explain()}")
        names = set(confirms)
        if not self.policy.always:
            if verdict.level is Level.ALLOW:
                return Decision(True, "deleted")
            if target.name in names:
                return Decision(True, "deleted", f"confirmed by marker for {target.name!r}")
        if interactive and prompt is not None:
            if target.key not in self.answers:
                counts = preview() if preview is not None else ()
                answer = prompt(prompt_text(target, verdict, counts, self.policy))
                # An empty name must not let a bare Enter confirm.
                self.answers[target.key] = bool(target.name) and answer.strip() == target.name
            if self.answers[target.key]:
                return Decision(True, "deleted", f"confirmed at the prompt for {target.name!r}")
            if self.policy.always:
                return Decision(
                    False,
                    "dry",
                    f"not confirmed at the prompt: nothing was deleted in {target.name!r}",
                )
            return Decision(
                False, "dry", f"not confirmed at the prompt: {target.name!r} stays dry this session"
            )
        if self.policy.always:
            if target.name and target.name in names:
                return Decision(True, "deleted", f"confirmed by name for {target.name!r}")
            how = self.policy.how(target) if self.policy.how is not None else marker_hint(target)
            given = (
                f"the confirmation {', '.join(sorted(names))!r} does not name this database"
                if names
                else "no confirmation was given"
            )
            return Decision(
                False,
                "held",
                f"apply on {target.masked_url} ({verdict.level.name}) needs the database name "
                f"{target.name!r} when no person is at a terminal, and {given}: nothing was "
                f"deleted; {how}",
            )
        return Decision(
            False,
            "held",
            f"{verdict.explain()}: cleanup needs explicit intent in a non-interactive run; "
            f"nothing was deleted. Add {marker_hint(target)} to the test, class or module",
        )
