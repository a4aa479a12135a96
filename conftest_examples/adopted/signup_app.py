"""A small application as it is before adopting the plugin: its own engine, its own sessions.

Its request handlers (a FastAPI or Flask dependency in a real application) open sessions
from the global ``SessionLocal``; the tests only call the handlers and never see a session.
``start(url)`` is what the application runs at startup.
"""

from __future__ import annotations

from collections.abc import Iterator

from demo_app import Asset, ClientAccount, User
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

SessionLocal = sessionmaker(expire_on_commit=False)


def start(url) -> None:
    """Application startup: the application's own engine, not the test suite's."""
    SessionLocal.configure(bind=create_engine(url))


def get_session() -> Iterator[Session]:
    """The request-scoped session, as a FastAPI dependency hands it out."""
    with SessionLocal() as session:
        yield session


def sign_up(company: str, emails: list[str]) -> int:
    """POST /signup: an account, its first users and a welcome asset."""
    session = next(dependency := get_session())
    account = ClientAccount(name=company, users=[User(email=e) for e in emails])
    account.assets.append(Asset(name=f"welcome-{company}", owner_id=None))
    session.add(account)
    session.commit()
    dependency.close()
    return account.id


def remove_user(email: str) -> None:
    """DELETE /users/{email}: the application deletes a row itself."""
    with SessionLocal() as session:
        user = session.query(User).filter_by(email=email).one()
        session.delete(user)
        session.commit()
