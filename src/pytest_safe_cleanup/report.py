"""Layer 5: outcomes -> terminal summary, JSON report, GitHub summary and logging.

The report is built from plain records only, so a worker's outcomes can travel to
the controller and the same text comes out whichever process renders it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("dry", "deleted", "held", "refused", "failed", "kept")
logger = logging.getLogger("pytest_safe_cleanup")


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class Outcome:
    """What happened to one table of one test's cleanup (``table`` None: the whole cleanup)."""

    nodeid: str
    target: str
    table: str | None
    counted: int | None
    deleted: int | None
    status: str
    reason: str = ""
    backup: str | None = None
    #: rows the database changed (``ON DELETE SET NULL``/``SET DEFAULT``), backed up
    updated: int | None = None


@dataclass(frozen=True)
class TargetInfo:
    """A target as reported: masked URL, verdict level and reasons."""

    name: str
    url: str
    verdict: str
    reasons: tuple[str, ...]
    note: str = ""
    used: bool = False


@dataclass
class Report:
    """Everything the summary and the JSON report say about one run."""

    mode: str
    run_id: str
    mode_source: str = "default"
    targets: dict[str, TargetInfo] = field(default_factory=dict)
    cleanups: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def add_target(self, key: str, info: TargetInfo) -> None:
        """Record a target's verdict (computed once per session)."""
        if key not in self.targets:
            logger.info(
                "target %s (%s): %s: %s", info.name, info.url, info.verdict, "; ".join(info.reasons)
            )
        self.targets[key] = info

    def use_target(self, key: str) -> None:
        """Mark a target that a fixture or a cleanup used, so the summary lists it."""
        if key in self.targets:
            self.targets[key] = replace(self.targets[key], used=True)

    def shown_targets(self) -> list[TargetInfo]:
        """Targets the plugin used, and any other target that was not plainly allowed."""
        return [t for t in self.targets.values() if t.used or t.verdict != "ALLOW"]

    def add(self, outcomes: Iterable[Outcome]) -> None:
        """Record outcomes and log each one."""
        for o in outcomes:
            self.cleanups.append(o)
            log = logger.warning if o.status in ("held", "refused", "failed") else logger.info
            log(
                "%s %s %s: counted=%s deleted=%s %s",
                o.status,
                o.nodeid,
                o.table or o.target,
                o.counted,
                o.deleted,
                o.reason,
            )

    def totals(self) -> dict[str, Any]:
        """Counted and deleted rows per table, and cleanups per status.

        ``deleted`` stays None where nothing was applied, so a dry run never reads as
        "0 deleted" next to rows that are still there.
        """
        tables: dict[str, dict[str, int | None]] = {}
        statuses = dict.fromkeys(STATUSES, 0)
        for o in self.cleanups:
            statuses[o.status] = statuses.get(o.status, 0) + 1
            if o.table is None:
                continue
            row = tables.setdefault(f"{o.target}.{o.table}", {"counted": 0, "deleted": None})
            row["counted"] = (row["counted"] or 0) + (o.counted or 0)
            if o.deleted is not None:
                row["deleted"] = (row["deleted"] or 0) + o.deleted
            if o.updated is not None:
                row["updated"] = (row.get("updated") or 0) + o.updated
        deleted = [r["deleted"] for r in tables.values() if r["deleted"] is not None]
        return {
            "counted": sum(r["counted"] or 0 for r in tables.values()),
            "deleted": sum(deleted) if deleted else None,
            "tables": tables,
            "statuses": statuses,
        }

    def _cascaded(self) -> dict[str, str]:
        """Tables that foreign key actions or trusted triggers added, with why."""
        return {
            f"{o.target}.{o.table}": o.reason
            for o in self.cleanups
            if o.table is not None
            and o.status in ("deleted", "dry")
            and (o.reason.startswith("database ") or "trigger" in o.reason)
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON report's document."""
        return {
            "schema_version": SCHEMA_VERSION,
            "mode": self.mode,
            "run_id": self.run_id,
            "targets": [
                {
                    "name": t.name,
                    "url": t.url,
                    "verdict": t.verdict,
                    "reasons": list(t.reasons),
                    "note": t.note,
                }
                for t in self.shown_targets()
            ],
            "cleanups": [asdict(o) for o in self.cleanups],
            "notes": list(self.notes),
            "hints": list(self.hints),
            "totals": self.totals(),
            "warnings": list(self.warnings),
        }

    def to_wire(self) -> dict[str, Any]:
        """Plain data an xdist worker sends to the controller (JSON types only)."""
        wire = {
            "targets": {k: asdict(t) for k, t in self.targets.items()},
            "cleanups": [asdict(o) for o in self.cleanups],
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "hints": list(self.hints),
        }
        loaded: dict[str, Any] = json.loads(json.dumps(wire))
        return loaded

    def merge(self, wire: dict[str, Any]) -> None:
        """Take a worker's outcomes into this (the controller's) report."""
        for key, raw in wire.get("targets", {}).items():
            info = TargetInfo(**{**raw, "reasons": tuple(raw["reasons"])})
            known = self.targets.get(key)
            self.targets[key] = replace(info, used=info.used or (known is not None and known.used))
        self.cleanups.extend(Outcome(**o) for o in wire.get("cleanups", []))
        for kind in ("warnings", "notes", "hints"):
            mine = getattr(self, kind)
            mine.extend(w for w in wire.get(kind, []) if w not in mine)

    def write_json(self, path: Path) -> None:
        """Write the JSON report, creating its folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")

    def _problems(self) -> list[Outcome]:
        """Cleanups that did not run as asked, once per test, target and reason."""
        seen: dict[tuple[str, str, str, str], Outcome] = {}
        for o in self.cleanups:
            if o.status in ("held", "refused", "failed", "kept"):
                seen.setdefault((o.nodeid, o.target, o.status, o.reason), o)
        return list(seen.values())

    def terminal_lines(self, verbose: bool = False) -> list[str]:
        """The ``safe cleanup`` section of the terminal summary."""
        lines = [f"mode: {self.mode} ({self.mode_source}), run {self.run_id}"]
        if self.mode == "off":
            lines.append("safe cleanup is off: no teardown work was done")
        elif self.mode == "dry":
            lines.append("dry run: nothing was deleted; counts show what apply would delete")
        lines.extend(self.notes)
        for t in self.shown_targets():
            lines.append(f"target {t.name} {t.url}: {t.verdict}")
            lines.extend(f"  - {r}" for r in t.reasons)
            if t.note:
                lines.append(f"  ! {t.note}")
        totals = self.totals()
        if totals["tables"]:
            width = max(len(k) for k in totals["tables"])
            changed = any("updated" in row for row in totals["tables"].values())
            cascaded = self._cascaded()
            lines.append(
                f"{'table'.ljust(width)}  {'counted':>8}  {'deleted':>8}"
                + (f"  {'updated':>8}" if changed else "")
            )
            for key, row in totals["tables"].items():
                lines.append(
                    f"{key.ljust(width)}  {row['counted']:>8}  {_n(row['deleted']):>8}"
                    + (f"  {_n(row.get('updated')):>8}" if changed else "")
                    + (f"  ({cascaded[key]})" if key in cascaded else "")
                )
            lines.append(
                f"{'total'.ljust(width)}  {totals['counted']:>8}  {_n(totals['deleted']):>8}"
            )
        elif self.mode != "off":
            lines.append("no cleanup was registered")
        backups = sorted({o.backup for o in self.cleanups if o.backup})
        if backups:
            lines.append(f"backups written: {len(backups)}")
            lines.extend(f"  {b}" for b in backups)
        for o in self._problems():
            lines.append(f"{o.status.upper()} {o.nodeid} ({o.target}): {o.reason}")
        if verbose:
            for o in self.cleanups:
                if o.table is None:
                    continue
                lines.append(
                    f"  {o.nodeid}: {o.target}.{o.table} counted {o.counted} "
                    f"deleted {_n(o.deleted)} [{o.status}]"
                )
        lines.extend(f"hint: {h}" for h in self.hints)
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines

    def markdown(self) -> str:
        """A Markdown version of the summary for ``GITHUB_STEP_SUMMARY``."""
        out = [f"### safe cleanup: {self.mode}", ""]
        for t in self.shown_targets():
            out.append(f"- target `{t.name}` `{t.url}`: **{t.verdict}** ({'; '.join(t.reasons)})")
        totals = self.totals()
        if totals["tables"]:
            out += ["", "| table | counted | deleted |", "| --- | ---: | ---: |"]
            for key, row in totals["tables"].items():
                out.append(f"| `{key}` | {row['counted']} | {_n(row['deleted'])} |")
            out.append(f"| **total** | {totals['counted']} | {_n(totals['deleted'])} |")
        problems = self._problems()
        if problems:
            out += ["", "| status | test | reason |", "| --- | --- | --- |"]
            for o in problems:
                out.append(f"| {o.status} | `{o.nodeid}` | {o.reason.replace('|', '/')} |")
        out.extend(f"\n> hint: {h}" for h in self.hints)
        out.extend(f"\n> warning: {w}" for w in self.warnings)
        return "\n".join(out) + "\n"

    def append_github_summary(self, path: Path) -> None:
        """Append the Markdown summary (never rewrite what other steps wrote)."""
        with path.open("a", encoding="utf-8") as fh:
            fh.write(self.markdown())
