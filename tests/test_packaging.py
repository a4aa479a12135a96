"""Release hygiene: the lowest-versions constraints match the floors, the license file exists.

CI installs ``ci/lowest.txt`` for its lowest-versions run; a floor raised in
``pyproject.toml`` without its pin (or the other way round) would test versions the
package does not declare.
"""

from __future__ import annotations

import re
import tomllib

from conftest import ROOT
from packaging.version import Version

#: the packages whose oldest allowed release CI tests
FLOORED = ("psycopg", "asyncpg", "sqlalchemy", "pytest", "pytest-asyncio", "pytest-xdist")


def _name(requirement: str) -> tuple[str, str | None]:
    """A requirement's normalised name and its ``>=`` floor, if any."""
    match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(?:>=\s*([0-9][^,;\s]*))?", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(3)


def floors() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    found: dict[str, set[str]] = {}
    for requirement in requirements:
        name, floor = _name(requirement)
        if name in FLOORED and floor is not None:
            found.setdefault(name, set()).add(floor)
    return found


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"ci/lowest.txt: {line!r} is not an == pin"
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


def test_lowest_constraints_pin_every_floor_exactly() -> None:
    declared = floors()
    assert declared.keys() == set(FLOORED)
    for name, versions in declared.items():
        assert len(versions) == 1, f"{name} has several floors in pyproject.toml: {versions}"
    pinned = pins()
    assert {name: Version(pinned[name]) for name in FLOORED} == {
        name: Version(next(iter(versions))) for name, versions in declared.items()
    }
    # the binary wheels of psycopg[binary] are pinned to the same release
    assert pinned["psycopg-binary"] == pinned["psycopg"]


def test_license_file_is_the_mit_license_the_metadata_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 pytest-safe-cleanup developers" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
