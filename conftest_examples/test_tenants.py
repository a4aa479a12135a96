"""Tests that create demo tenants and register exactly what they created.

Per run they create 4 client accounts, 10 users and 5 assets, and register all
of it: the dry-run summary shows those counts, and apply removes exactly them.
"""

from __future__ import annotations

from demo_app import Asset, ClientAccount, User, create_tenant
from sqlalchemy import func, select


def test_tenant_with_users_and_assets(db, safe_cleanup):
    account = create_tenant(db, safe_cleanup.tag, users=3, assets=5)
    # Children and parents in any order: the plan deletes children first.
    safe_cleanup.delete(ClientAccount, id=account.id)
    safe_cleanup.delete(User, account_id=account.id)
    safe_cleanup.delete(Asset, account_id=account.id)
    assert db.scalar(select(func.count()).select_from(User).filter_by(account_id=account.id)) == 3


def test_registration_by_table_name(db, safe_cleanup):
    account = create_tenant(db, safe_cleanup.tag, users=2, assets=0)
    # Table names are reflected and quoted by SQLAlchemy, never formatted by hand.
    safe_cleanup.delete("users", account_id=account.id)
    safe_cleanup.delete("client_accounts", id=account.id)


def test_rows_reached_twice_are_counted_once(db, safe_cleanup):
    account = create_tenant(db, safe_cleanup.tag, users=4, assets=0)
    safe_cleanup.delete(User, account_id=account.id)
    safe_cleanup.delete(User, User.email.like(f"%-{safe_cleanup.tag}@example.test"))
    safe_cleanup.delete(ClientAccount, id=[account.id])


def test_shared_demo_account(db, safe_cleanup_session):
    # Made once, used by many tests, cleaned at session end.
    account = create_tenant(db, safe_cleanup_session.tag, users=1, assets=0)
    safe_cleanup_session.delete(User, account_id=account.id)
    safe_cleanup_session.delete(ClientAccount, id=account.id)
