"""A small multi-tenant product: client accounts own users and assets."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class ClientAccount(Base):
    __tablename__ = "client_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    users: Mapped[list[User]] = relationship(back_populates="account")
    assets: Mapped[list[Asset]] = relationship(back_populates="account")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("client_accounts.id"), index=True)
    email: Mapped[str] = mapped_column(String(200))
    account: Mapped[ClientAccount] = relationship(back_populates="users")


class Asset(Base):
    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("client_accounts.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    account: Mapped[ClientAccount] = relationship(back_populates="assets")


def create_tenant(session, tag: str, users: int, assets: int) -> ClientAccount:
    """A demo account with its users and assets, every name carrying the test's tag."""
    account = ClientAccount(name=f"demo-{tag}")
    people = [User(email=f"user{i}-{tag}@example.test") for i in range(users)]
    account.users.extend(people)
    for i in range(assets):
        account.assets.append(Asset(name=f"asset{i}-{tag}", owner_id=None))
    session.add(account)
    session.commit()
    return account
