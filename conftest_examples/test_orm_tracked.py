"""Register the ORM session, not the rows: every row it inserts is cleaned up.

Creates 1 client account, 2 users and 1 asset, and registers only the session.
"""

from __future__ import annotations

from demo_app import Asset, ClientAccount, User


def test_tracked_session(db, safe_cleanup):
    safe_cleanup.track_session(db)  # before the inserts: it records what the session flushes
    account = ClientAccount(name=f"demo-{safe_cleanup.tag}")
    account.users.extend(User(email=f"user{i}-{safe_cleanup.tag}@example.test") for i in range(2))
    db.add(account)
    db.flush()
    db.add(Asset(name=f"asset-{safe_cleanup.tag}", account_id=account.id, owner_id=None))
    db.commit()
    assert len(account.users) == 2
