"""Rows without the ORM's per-row machinery: the INSERTs of a group commit, the counters it moves,
and instances of what they wrote.

bulk_create builds a model instance per row, compiles its INSERT anew and runs every value of
every field through get_db_prep_save: most of the CPU time of a group commit. These rows have
the same shape every time, so each table's statement is built once and only the values whose
field needs it (JSON, datetimes) are adapted for the database.

The statements go to the driver's own cursor, in its own placeholder style, not through
Django's CursorWrapper: its layers (async_unsafe, the connection proxy's thread-local lookups,
the debug-cursor check, SQLite's rewriting of every %s into ?) are paid again on every message
besides the commit. Errors are still wrapped into Django's DatabaseError, which
`inbound.commit_staged` relies on; these statements do not appear in `connection.queries`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.utils import timezone

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

ModelT = TypeVar("ModelT", bound=models.Model)

# Fields whose Python values (str, int, bool, float, None) every database driver takes as they are.
_PLAIN_FIELDS = (models.CharField, models.TextField, models.BooleanField, models.IntegerField, models.FloatField)
# The placeholder of each DB-API paramstyle (PEP 249): sqlite3 uses qmark, psycopg pyformat.
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


class _Insert:
    """`INSERT INTO table (every column but the key) VALUES (...), (...)` for one model and database."""

    def __init__(self, model: type[models.Model], db: BaseDatabaseWrapper):
        opts = model._meta
        quote = db.ops.quote_name
        self.fields = [f for f in opts.concrete_fields if not f.primary_key]
        self.attnames = [f.attname for f in self.fields]
        self.table, self.pk_column = opts.db_table, opts.pk.column
        self.sql = f"INSERT INTO {quote(self.table)} ({', '.join(quote(f.column) for f in self.fields)}) VALUES "
        self.placeholders = f"({', '.join([_PLACEHOLDERS[db.Database.paramstyle]] * len(self.fields))})"
        self.returning = {f.attname: f" RETURNING {quote(self.pk_column)}, {quote(f.column)}" for f in self.fields if f.unique}
        # Rows per statement within the database's limit on parameters (SQLite's 999); 0: none.
        self.batch_size = db.ops.bulk_batch_size(self.fields, ())
        # What a row that leaves a field out gets, as from Model.save: the time for auto_now(_add)
        # fields, else the field's default.
        self.timestamps = [f.attname for f in self.fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)]
        self.defaults = {f.attname: f.get_default for f in self.fields if f.attname not in self.timestamps}
        self.adapted = [
            (index, f) for index, f in enumerate(self.fields) if not isinstance(f.target_field if f.is_relation else f, _PLAIN_FIELDS)
        ]

    def params(self, row: dict, now: datetime, adapted_now: dict, db: BaseDatabaseWrapper) -> list:
        """The row's values in column order; fills the row's missing fields with their defaults."""
        for attname in self.timestamps:
            row.setdefault(attname, now)
        for attname, default in self.defaults.items():
            if attname not in row:
                row[attname] = default()
        values = [row[attname] for attname in self.attnames]
        for index, f in self.adapted:
            value = values[index]
            if value is None:  # NULL to every database
                continue
            if value is now:  # the one timestamp of a batch is adapted once, not once per row and field
                if type(f) not in adapted_now:
                    adapted_now[type(f)] = f.get_db_prep_save(now, db)
                values[index] = adapted_now[type(f)]
            else:
                values[index] = f.get_db_prep_save(value, db)
        return values

    def execute(self, db: BaseDatabaseWrapper, rows: list[dict], key: str | None, now: datetime) -> list[int] | None:
        """Insert `rows`; with `key` (a unique field), returns their ids in the order of `rows`."""
        ids: dict = {}
        adapted_now: dict = {}
        db.ensure_connection()
        cursor = db.connection.cursor()
        try:
            with db.wrap_database_errors:
                if key is not None and not db.features.can_return_rows_from_bulk_insert:
                    for row in rows:  # no RETURNING (SQLite before 3.35): one statement per row
                        cursor.execute(self.sql + self.placeholders, self.params(row, now, adapted_now, db))
                        ids[row[key]] = db.ops.last_insert_id(cursor, self.table, self.pk_column)
                    return [ids[row[key]] for row in rows]
                size = self.batch_size or len(rows)
                for start in range(0, len(rows), size):
                    part = rows[start : start + size]
                    sql = self.sql + ", ".join([self.placeholders] * len(part))
                    params = [value for row in part for value in self.params(row, now, adapted_now, db)]
                    if key is None:
                        cursor.execute(sql, params)
                        continue
                    # RETURNING makes no promise about order (SQLite says so): rows are matched by key.
                    cursor.execute(sql + self.returning[key], params)
                    ids.update((k, i) for i, k in cursor.fetchall())
        finally:
            cursor.close()
        return None if key is None else [ids[row[key]] for row in rows]


_INSERTS: dict[tuple[str, type[models.Model]], _Insert] = {}


def insert_rows(model: type[models.Model], rows: list[dict], key: str | None = None, now: datetime | None = None) -> list[int] | None:
    """Insert rows of `model` (dicts by attname; missing fields get their defaults, filled into the dicts).

    With `key`, a unique field given in every row, returns the rows' ids in order. Every
    auto_now(_add) field of every row gets `now` (by default the time of the call): rows that
    one transaction commits become visible at one instant.
    """
    if not rows:
        return [] if key else None
    db = connections[DEFAULT_DB_ALIAS]
    insert = _INSERTS.get((db.vendor, model))
    if insert is None:
        insert = _INSERTS[db.vendor, model] = _Insert(model, db)
    return insert.execute(db, rows, key, now or timezone.now())


class _CounterUpdate:
    """`UPDATE table SET column = max(column + delta, 0) WHERE key = id` for one model, column and database.

    A counter moved in every delivering transaction (a mailbox's usage) otherwise costs the
    compilation of an UPDATE with F() and Greatest() per message, more CPU than the statement.
    """

    # The two-argument maximum of each database: Django's Greatest compiles to these.
    _GREATEST = {"sqlite": "MAX", "postgresql": "GREATEST"}

    def __init__(self, model: type[models.Model], attname: str, db: BaseDatabaseWrapper):
        opts = model._meta
        quote, mark = db.ops.quote_name, _PLACEHOLDERS[db.Database.paramstyle]
        column = quote(opts.get_field(attname).column)
        self.sql = (
            f"UPDATE {quote(opts.db_table)} SET {column} = {self._GREATEST[db.vendor]}({column} + {mark}, 0)"
            f" WHERE {quote(opts.pk.column)} = {mark}"
        )

    def execute(self, db: BaseDatabaseWrapper, changes: list[tuple[int, int]]) -> None:
        db.ensure_connection()
        cursor = db.connection.cursor()
        try:
            with db.wrap_database_errors:
                cursor.executemany(self.sql, [(delta, pk) for pk, delta in changes])
        finally:
            cursor.close()


_COUNTER_UPDATES: dict[tuple[str, type[models.Model], str], _CounterUpdate] = {}


def add_to_counters(model: type[models.Model], attname: str, changes: list[tuple[int, int]]) -> None:
    """Add each (primary key, delta) of `changes` to the integer field `attname` of that row, never below 0.

    The rows are updated in the order given: callers that may run concurrently give one order
    (by key), so that two transactions never wait for each other's rows.
    """
    if not changes:
        return
    db = connections[DEFAULT_DB_ALIAS]
    update = _COUNTER_UPDATES.get((db.vendor, model, attname))
    if update is None:
        update = _COUNTER_UPDATES[db.vendor, model, attname] = _CounterUpdate(model, attname, db)
    update.execute(db, changes)


def inserted_instance(model: type[ModelT], pk: int, row: dict) -> ModelT:
    """The instance of a row that `insert_rows` wrote (`row` as it filled it in), as if loaded from the database."""
    instance = model(pk=pk, **row)
    instance._state.adding, instance._state.db = False, DEFAULT_DB_ALIAS
    return instance
