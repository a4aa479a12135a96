"""The same API for async code: ``async_safe_cleanup`` with an AsyncSession.

Creates 1 client account, 2 users and 1 asset; the cleanup takes the account and,
through the foreign keys (``cascade=True``), its users and asset.
"""

from __future__ import annotations

import pytest
from demo_app import Asset, ClientAccount, User
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


@pytest.mark.asyncio
async def test_async_tenant(safe_cleanup_async_engine, async_safe_cleanup):
    tag = async_safe_cleanup.tag
    async with AsyncSession(safe_cleanup_async_engine, expire_on_commit=False) as session:
        account = ClientAccount(name=f"demo-{tag}")
        account.users.extend(User(email=f"user{i}-{tag}@example.test") for i in range(2))
        account.assets.append(Asset(name=f"asset-{tag}", owner_id=None))
        session.add(account)
        await session.commit()
        users = select(func.count()).select_from(User).filter_by(account_id=account.id)
        assert await session.scalar(users) == 2
    await async_safe_cleanup.delete(ClientAccount, id=account.id, cascade=True)
