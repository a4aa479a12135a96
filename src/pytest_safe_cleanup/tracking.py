"""Rows that any ORM session in the process inserts, kept with the engine they went to.

``track_sessions()`` exists for applications whose tests never see the sessions that
write: a FastAPI or Flask dependency, a global ``sessionmaker``, a service layer. One
listener on the ``Session`` class (sync sessions and the sync side of every
``AsyncSession``) notes each object that a flush made persistent, with the session's
bind for its mapper: teardown deletes the row on that database, whatever engine the
fixture is bound to. The objects themselves are kept (not their keys) so that rows
rolled back or deleted through the ORM are skipped at teardown, as ``track_session``
skips them.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session


class Collector:
    """The rows one ``track_sessions()`` call claims, per engine, in insertion order."""

    def __init__(self, tracker: SessionTracker) -> None:
        self._tracker = tracker
        self._lock = threading.Lock()
        self.inserted: dict[Engine, list[object]] = {}
        self.active = True

    def add(self, engine: Engine, instance: object) -> None:
        """One object a flush made persistent (called on the flushing thread)."""
        with self._lock:
            self.inserted.setdefault(engine, []).append(instance)

    def stop(self) -> dict[Engine, list[object]]:
        """Stop collecting; the objects noted so far, per engine."""
        if self.active:
            self.active = False
            self._tracker.remove(self)
        with self._lock:
            return {engine: list(objs) for engine, objs in self.inserted.items()}


class SessionTracker:
    """The one process-wide listener; the most recently started collector claims each row.

    A test's ``safe_cleanup.track_sessions()`` inside a run-wide
    ``safe_cleanup_session.track_sessions()`` takes the test's rows: they are deleted at
    the test's teardown, once, not again at the session's end.
    """

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()

    def start(self) -> Collector:
        """A new collector, innermost from now on; the listener is installed with the first."""
        collector = Collector(self)
        with self._lock:
            if not self._collectors:
                event.listen(Session, "pending_to_persistent", self._persistent)
            self._collectors.append(collector)
        return collector

    def remove(self, collector: Collector) -> None:
        """Forget a collector; the listener goes with the last one."""
        with self._lock:
            if collector in self._collectors:
                self._collectors.remove(collector)
            if not self._collectors and event.contains(
                Session, "pending_to_persistent", self._persistent
            ):
                event.remove(Session, "pending_to_persistent", self._persistent)

    def _persistent(self, session: Session, instance: Any) -> None:
        collectors = self._collectors
        if not collectors:
            return
        bind = session.get_bind(mapper=inspect(instance).mapper)
        engine = bind.engine if isinstance(bind, Connection) else bind
        if isinstance(engine, Engine):
            collectors[-1].add(engine, instance)


TRACKER = SessionTracker()
