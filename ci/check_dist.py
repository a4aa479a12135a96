"""Check the built sdist and wheel as a user adopting the package would look at them.

Run after ``python -m build`` and ``twine check``: ``python ci/check_dist.py dist``. Exits
non-zero with one line per problem: the license the metadata declares must ship in both,
and the wheel must carry the pytest plugin, the command and the type marker.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path


def problems(folder: Path) -> list[str]:
    """Every problem found in the one wheel and one sdist under ``folder``."""
    wheels = sorted(folder.glob("pytest_safe_cleanup-*.whl"))
    sdists = sorted(folder.glob("pytest_safe_cleanup-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist in {folder}, found {wheels + sdists}"]
    found = []
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        if f"{info}/licenses/LICENSE" not in names:
            found.append("wheel: LICENSE is missing")
        if "pytest_safe_cleanup/py.typed" not in names:
            found.append("wheel: py.typed is missing")
        if "safe_cleanup = pytest_safe_cleanup.plugin" not in entry_points:
            found.append("wheel: the pytest11 entry point is missing")
        if "safe-cleanup = pytest_safe_cleanup.cli:main" not in entry_points:
            found.append("wheel: the safe-cleanup command is missing")
        if any(n.startswith(("tests/", "conftest_examples/")) for n in names):
            found.append("wheel: carries the test suite")
    with tarfile.open(sdists[0]) as sdist:
        members = sdist.getnames()
        root = members[0].split("/", 1)[0]
        pkg_info = sdist.extractfile(f"{root}/PKG-INFO")
        assert pkg_info is not None
        sdist_meta = Parser().parsestr(pkg_info.read().decode())
        if f"{root}/LICENSE" not in members:
            found.append("sdist: LICENSE is missing")
        if any("/.venv" in m for m in members):
            found.append("sdist: carries a virtual environment")
    for where, m in (("wheel", meta), ("sdist", sdist_meta)):
        if m["Name"] != "pytest-safe-cleanup":
            found.append(f"{where}: Name is {m['Name']!r}")
        if m["License-Expression"] != "MIT" or m["License-File"] != "LICENSE":
            found.append(
                f"{where}: license metadata {m['License-Expression']!r}, {m['License-File']!r}"
            )
        if m["Requires-Python"] != ">=3.11":
            found.append(f"{where}: Requires-Python is {m['Requires-Python']!r}")
        if m["Description-Content-Type"] != "text/markdown":
            found.append(f"{where}: the README is not declared as Markdown")
    if meta["Version"] != sdist_meta["Version"]:
        found.append(f"wheel {meta['Version']} and sdist {sdist_meta['Version']} differ")
    return found


def main() -> int:
    """Print the problems (or one line that all is well); non-zero when there are any."""
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "dist")
    found = problems(folder)
    for problem in found:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not found:
        print(f"check_dist: {folder}: wheel and sdist metadata, license and entry points ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
