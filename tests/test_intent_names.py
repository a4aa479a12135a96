"""Which names a held cleanup's marker hint asks for (one per xdist worker where it applies)."""

from __future__ import annotations

import pytest

from pytest_safe_cleanup.intent import marker_hint, run_names
from pytest_safe_cleanup.target import from_url

XDIST = {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "3"}


@pytest.mark.parametrize(
    ("name", "environ", "expected"),
    [
        ("app_test_gw1", XDIST, ["app_test_gw0", "app_test_gw1", "app_test_gw2"]),
        ("gw1_app", XDIST, ["gw0_app", "gw1_app", "gw2_app"]),
        ("app_test_gw10", XDIST, ["app_test_gw10"]),  # another worker's number, not ours
        ("app_test", XDIST, ["app_test"]),
        ("app_test_gw1", {}, ["app_test_gw1"]),  # not under xdist
        ("app_test_gw1", {"PYTEST_XDIST_WORKER": "gw1"}, ["app_test_gw1"]),
    ],
)
def test_run_names(name: str, environ: dict[str, str], expected: list[str]) -> None:
    assert run_names(name, environ) == expected


def test_marker_hint_lists_every_worker_database() -> None:
    target = from_url("postgresql://u@db.example/app_test_gw1")
    assert marker_hint(target, XDIST) == (
        '@pytest.mark.safe_cleanup(confirm=["app_test_gw0", "app_test_gw1", "app_test_gw2"])'
    )
    assert marker_hint(target, {}) == '@pytest.mark.safe_cleanup(confirm="app_test_gw1")'
