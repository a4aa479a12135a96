"""An application's suite adopting the plugin with one autouse fixture.

The tests call the application (``signup_app``), which writes through its own engine and
global sessionmaker. ``track_sessions()`` finds every row any ORM session inserts during
the test and deletes it at teardown on the database it went to (``safe_cleanup_track =
sessions`` in the ini does the same without the call). Per run: 2 client accounts, 3 users
(a fourth is deleted by the application itself) and 2 assets.
"""

from __future__ import annotations

import pytest
import signup_app


@pytest.fixture(scope="module", autouse=True)
def application(safe_cleanup_engine):
    """The application starts on the test database, with an engine of its own."""
    signup_app.start(safe_cleanup_engine.url)


@pytest.fixture(autouse=True)
def clean_what_the_application_inserts(safe_cleanup):
    """The whole adoption: every row the application inserts is cleaned at teardown."""
    safe_cleanup.track_sessions()
    return safe_cleanup


def test_sign_up(clean_what_the_application_inserts):
    tag = clean_what_the_application_inserts.tag
    assert signup_app.sign_up(f"acme-{tag}", [f"a-{tag}@acme.test", f"b-{tag}@acme.test"])


def test_the_application_deletes_a_user_itself(clean_what_the_application_inserts):
    tag = clean_what_the_application_inserts.tag
    signup_app.sign_up(f"globex-{tag}", [f"c-{tag}@globex.test", f"d-{tag}@globex.test"])
    signup_app.remove_user(f"c-{tag}@globex.test")  # looked for at teardown, counted 0
