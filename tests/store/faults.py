"""Real database faults for the write-failure tests, on SQLite and PostgreSQL alike.

- `fail_commit(store, marker)`: the COMMIT of any transaction that stored a step whose JSON
  holds `marker` fails, raised by the database itself. SQLite: a deferred foreign key (with
  `PRAGMA foreign_keys=ON`) that a trigger breaks; SQLite keeps the transaction open after
  such a failed COMMIT, as after a full disk. PostgreSQL: a deferred constraint trigger that
  raises at COMMIT (a real full disk: a tmpfs tablespace, in test_write_failures.py).
- `refuse_kind(store, kind)`: inserting a step of `kind` fails at once (a statement error).
- `refuse_status(store, status)`: recording `status` as a tape's status fails (a statement
  error), so a run's end can be refused while its steps are stored.
- `fill_disk_at(store, pages)`: SQLite only; the database file may grow by `pages` more pages,
  then every write fails with a real SQLITE_FULL ("database or disk is full").
- `clear(store)`: removes the faults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event, text

from tapeagents.store import TapeStore

_SQLITE_PRAGMAS: dict[int, list[Callable[[Any, Any], None]]] = {}


def _on_every_connection(store: TapeStore, pragma: str) -> None:
    """Run `pragma` on every new SQLite connection of the store (and drop the pooled ones)."""

    def apply(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(pragma)

    event.listen(store.engine, "connect", apply)
    _SQLITE_PRAGMAS.setdefault(id(store), []).append(apply)
    store.engine.dispose()


def fail_commit(store: TapeStore, marker: str) -> None:
    """Make a COMMIT fail when it would store a step whose JSON holds `marker`."""
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            connection.execute(text("CREATE TABLE fault_parent (id INTEGER PRIMARY KEY)"))
            connection.execute(
                text(
                    "CREATE TABLE fault_child (parent INTEGER REFERENCES fault_parent(id) "
                    "DEFERRABLE INITIALLY DEFERRED)"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER fault_commit AFTER INSERT ON steps "
                    f"WHEN instr(NEW.data, '{marker}') > 0 "
                    "BEGIN INSERT INTO fault_child VALUES (42); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION fault_commit() RETURNS trigger AS $$ BEGIN "
                    f"IF position('{marker}' in NEW.data) > 0 THEN "
                    "RAISE EXCEPTION 'injected COMMIT failure (deferred constraint trigger)'; "
                    "END IF; RETURN NULL; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER fault_commit AFTER INSERT ON steps "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_commit()"
                )
            )
    if store.engine.dialect.name == "sqlite":
        _on_every_connection(store, "PRAGMA foreign_keys=ON")


def refuse_kind(store: TapeStore, kind: str) -> None:
    """Make inserting a step of `kind` fail (the statement, not the COMMIT)."""
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            connection.execute(
                text(
                    f"CREATE TRIGGER fault_kind BEFORE INSERT ON steps WHEN NEW.kind = '{kind}' "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault: step refused'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION fault_kind() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'injected fault: step refused'; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER fault_kind BEFORE INSERT ON steps FOR EACH ROW "
                    f"WHEN (NEW.kind = '{kind}') EXECUTE FUNCTION fault_kind()"
                )
            )


def refuse_status(store: TapeStore, status: str) -> None:
    """Make setting a tape's status to `status` fail (the statement, not the COMMIT)."""
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER fault_status BEFORE UPDATE ON tapes "
                    f"WHEN NEW.status = '{status}' AND OLD.status <> '{status}' "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault: status refused'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION fault_status() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'injected fault: status refused'; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER fault_status BEFORE UPDATE ON tapes FOR EACH ROW "
                    f"WHEN (NEW.status = '{status}' AND OLD.status <> '{status}') "
                    "EXECUTE FUNCTION fault_status()"
                )
            )


def fill_disk_at(store: TapeStore, pages: int) -> None:
    """SQLite: let the database grow by `pages` pages, then fail writes with SQLITE_FULL."""
    assert store.engine.dialect.name == "sqlite"
    with store.engine.connect() as connection:
        used = connection.execute(text("PRAGMA page_count")).scalar_one()
    _on_every_connection(store, f"PRAGMA max_page_count={used + pages}")


def clear(store: TapeStore) -> None:
    """Remove every fault from the store."""
    for apply in _SQLITE_PRAGMAS.pop(id(store), []):
        event.remove(store.engine, "connect", apply)
    store.engine.dispose()
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            for name in ("fault_commit", "fault_kind", "fault_status"):
                connection.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
            connection.execute(text("DROP TABLE IF EXISTS fault_child"))
            connection.execute(text("DROP TABLE IF EXISTS fault_parent"))
        else:
            for name, table in (
                ("fault_commit", "steps"),
                ("fault_kind", "steps"),
                ("fault_status", "tapes"),
            ):
                connection.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
                connection.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))
