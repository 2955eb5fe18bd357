"""Copy a whole installation's database to another database (SQLite → PostgreSQL), verified.

Input: two database URLs (`mailgate.store.engine.make_engine` syntax). The source is trusted to
be a mailgate database at the head revision (checked; refused otherwise) but not to hold only
values its column types allow: old SQLite files can hold NULL in a text primary key, text in
an INTEGER column, bytes in a TEXT column, NUL characters in text — each value is checked
against its column's type before it is inserted. The target is upgraded to the head revision
and must hold no row in any table of the store.

Output: a `CopyReport` (per table: rows copied, checksum, seconds; totals; how many raw-mail
and attachment files the rows refer to — copied from `data_dir` into the target's
`stored_files` when a SQLite installation moves to PostgreSQL, with its reply-token secret —),
or UserError with one line —
naming the table (and the row and column, for a value the target would refuse). The copy is
one transaction on the target: after any failure the target holds no row.

How: the tables of `schema.metadata` in dependency order, each streamed from the source in
primary-key order in batches of `batch_rows` (never a whole table in memory: message text and
`outbound.raw` can be large), under one read snapshot of the source. Primary-key values are
kept; PostgreSQL's sequences are then set past each table's largest id. Before the commit,
every table is read back from the target through SQLAlchemy: its row count and a sha256 over
a canonical encoding of every row, in primary-key order (text keys in byte order on both
engines: PostgreSQL's "C" collation is SQLite's BINARY), must equal the source's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from mailgate.errors import UserError
from mailgate.store import shared
from mailgate.store.db import now_iso
from mailgate.store.engine import make_engine, shown
from mailgate.store.schema import metadata
from mailgate.store.upgrade import schema_state, upgrade

Progress = Callable[[str, int, int], None]  # (table, rows copied so far, rows in the table)

# pg_advisory_xact_lock key held by a copy: two copies into one database take turns, and the
# second finds the target not empty. b"mgcopy" as a big-endian integer.
PG_COPY_LOCK = int.from_bytes(b"mgcopy", "big")
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
EXACT_FLOAT = 2**53  # integers up to this are exact as a double


@dataclass(frozen=True)
class TableCopy:
    name: str
    rows: int
    checksum: str  # sha256 hex of the table's rows, equal on both sides
    seconds: float


@dataclass(frozen=True)
class CopyReport:
    source: str  # URLs as they may be shown (no password)
    target: str
    tables: tuple[TableCopy, ...]
    seconds: float
    raw_files: int  # distinct raw-mail files (messages, quarantine) the rows refer to
    attachment_files: int  # distinct attachment files (by sha256) the rows refer to
    files_copied: int = 0  # of those, copied from data_dir into the target's stored_files
    files_missing: tuple[str, ...] = ()  # paths the rows name that data_dir does not hold
    secret_copied: bool = False  # data_dir/secret.key became the shared reply-token secret

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def table(self, name: str) -> TableCopy:
        return next(t for t in self.tables if t.name == name)

    def lines(self) -> list[str]:
        out = [f"{t.name}: {t.rows} rows, sha256 {t.checksum[:16]}…, {t.seconds:.2f} s"
               for t in self.tables]
        out.append(f"copied {self.rows} rows in {len(self.tables)} tables from {self.source}"
                   f" to {self.target} in {self.seconds:.2f} s ({self.rows_per_second:.0f}"
                   " rows/s), verified by counts and checksums")
        where = ("copied into the database (stored_files)" if self.files_copied
                 or self.files_missing else "which stay on disk")
        out.append(f"the rows refer to {self.raw_files} raw mail files and"
                   f" {self.attachment_files} attachment files, {where}")
        if self.files_missing:
            out.append(f"{len(self.files_missing)} of them were not in data_dir (their rows"
                       f" are copied; downloading them says the file is missing), first:"
                       f" {self.files_missing[0]}")
        if self.secret_copied:
            out.append("data_dir/secret.key is now the reply-token secret every node shares:"
                       " the reply addresses sent before keep working")
        return out


class _Refused(Exception):
    """A value the target would refuse, and why (caught, reported as UserError with the row
    and the column)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


# --- the column types, as the copy sees them -------------------------------------------------

def _kind(column: sa.Column[Any]) -> str:
    t = column.type
    if isinstance(t, sa.BigInteger):
        return "int64"
    if isinstance(t, sa.Integer):
        return "int32"
    if isinstance(t, sa.Float):
        return "float"
    if isinstance(t, sa.LargeBinary):
        return "bytes"
    if isinstance(t, sa.String):
        return "text"
    raise AssertionError(f"copy: no rule for {column.table.name}.{column.name} ({t!r})")


def _what(value: Any) -> str:
    shown_value = repr(value)
    if len(shown_value) > 40:
        shown_value = shown_value[:37] + "…"
    kind = {str: "text", bytes: "bytes", int: "an integer", float: "a real number"}
    return f"{kind.get(type(value), type(value).__name__)} {shown_value}"


def _checked(kind: str, value: Any) -> Any:
    """`value` as the target column of `kind` takes it, or _Refused (column filled in later)."""
    if value is None:
        return None
    if isinstance(value, memoryview):
        value = bytes(value)
    if kind in ("int32", "int64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Refused(f"holds {_what(value)} where an integer belongs")
        low, high = INT32 if kind == "int32" else INT64
        if not low <= value <= high:
            raise _Refused(f"holds {value}, outside the column's range {low}…{high}")
        return value
    if kind == "float":
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > EXACT_FLOAT:
                raise _Refused(f"holds the integer {value}, not exact as a real number")
            return float(value)
        if not isinstance(value, float):
            raise _Refused(f"holds {_what(value)} where a real number belongs")
        return value
    if kind == "text":
        if not isinstance(value, str):
            raise _Refused(f"holds {_what(value)} where text belongs")
        if "\x00" in value:
            raise _Refused("holds text with a NUL character, which PostgreSQL text"
                               " cannot store")
        return value
    if not isinstance(value, bytes):
        raise _Refused(f"holds {_what(value)} where bytes belong")
    return value


def _encoded(kind: str, value: Any) -> bytes:
    """One value, canonically: equal values read from either engine encode equally."""
    if value is None:
        return b"N"
    if isinstance(value, memoryview):
        value = bytes(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        tag, payload = b"i", str(value).encode()
    elif isinstance(value, float):
        tag, payload = b"f", repr(value).encode()
    elif isinstance(value, str):
        tag, payload = b"s", value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        tag, payload = b"b", value
    else:
        tag, payload = b"?", repr(value).encode()
    return tag + len(payload).to_bytes(8, "big") + payload


class _Checksum:
    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = kinds
        self.hash = hashlib.sha256()
        self.rows = 0

    def add(self, row: Sequence[Any]) -> None:
        self.hash.update(b"R" + b"".join(_encoded(k, v) for k, v in zip(self.kinds, row,
                                                                         strict=True)))
        self.rows += 1

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


# --- the copy --------------------------------------------------------------------------------

def copy_database(source_url: str, target_url: str, *, batch_rows: int = 1000,
                  progress: Progress | None = None, data_dir: Path | None = None
                  ) -> CopyReport:
    """Copy every row of the store at `source_url` into the empty store at `target_url`.
    `data_dir`: the source installation's (SQLite → PostgreSQL): its raw mail and attachment
    files go into the target's `stored_files` (an attachment checked against its sha256) and
    its `secret.key` becomes the target's shared reply-token secret, in the same transaction."""
    if batch_rows < 1:
        raise UserError(f"batch_rows must be at least 1, not {batch_rows}")
    source = _open_source(source_url)
    try:
        target = _open_target(target_url, source)
        try:
            files_dir = (data_dir if data_dir is not None and source.dialect.name == "sqlite"
                         and target.dialect.name == "postgresql" else None)
            return _copy(source, target, (shown(source_url), shown(target_url)), batch_rows,
                         progress, files_dir)
        finally:
            target.dispose()
    finally:
        source.dispose()


def _open_source(url: str) -> Engine:
    engine = make_engine(url)
    where = shown(url)
    if engine.dialect.name == "sqlite" and not Path(str(engine.url.database)).is_file():
        engine.dispose()
        raise UserError(f"source database {where}: no such file")
    try:
        state = schema_state(engine)
    except DBAPIError as e:
        engine.dispose()
        raise UserError(f"source database {where}: {_first_line(e)}") from None
    if not state.at_head:  # an unstamped legacy v11 file is the baseline's schema
        engine.dispose()
        raise UserError(f"source database {where} is at {state}; upgrade it first:"
                        " mailgate db upgrade")
    return engine


def _open_target(url: str, source: Engine) -> Engine:
    engine = make_engine(url)
    if engine.url == source.url:
        engine.dispose()
        raise UserError(f"source and target are the same database: {shown(url)}")
    try:
        upgrade(engine)
    except DBAPIError as e:
        engine.dispose()
        raise UserError(f"target database {shown(url)}: {_first_line(e)}") from None
    except BaseException:
        engine.dispose()
        raise
    return engine


def _copy(source: Engine, target: Engine, names: tuple[str, str], batch_rows: int,
          progress: Progress | None, data_dir: Path | None) -> CopyReport:
    started = time.monotonic()
    copied: list[TableCopy] = []
    with source.connect() as sconn, target.connect() as tconn:
        sconn = sconn.execution_options(yield_per=batch_rows)
        with sconn.begin(), tconn.begin():  # one snapshot of the source; one target commit
            if target.dialect.name == "postgresql":
                tconn.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_COPY_LOCK)))
            _refuse_unless_empty(tconn, names[1])
            sums: dict[str, tuple[int, str]] = {}
            for table in metadata.sorted_tables:
                t0 = time.monotonic()
                rows, digest = _copy_table(sconn, tconn, table, batch_rows, progress)
                sums[table.name] = (rows, digest)
                copied.append(TableCopy(table.name, rows, digest, time.monotonic() - t0))
            if target.dialect.name == "postgresql":
                _advance_sequences(tconn)
            _verify(tconn, target, sums, batch_rows)
            raw_files, attachment_files = _file_references(sconn)
            copied_files, missing, secret = 0, (), False
            if data_dir is not None:
                copied_files, missing = _copy_files(sconn, tconn, data_dir)
                secret = _copy_secret(tconn, data_dir)
    return CopyReport(names[0], names[1], tuple(copied), time.monotonic() - started,
                      raw_files, attachment_files, copied_files, missing, secret)


def _refuse_unless_empty(conn: Connection, target: str) -> None:
    for table in metadata.sorted_tables:
        if conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first():
            raise UserError(f"target database {target} is not empty (table"
                            f" {table.name} has rows): copy only into an empty database,"
                            " never over another installation")


def _order(table: sa.Table, dialect: str) -> list[Any]:
    """Primary-key order, the same on both engines (text in byte order)."""
    order: list[Any] = []
    for column in table.primary_key.columns:
        if _kind(column) == "text" and dialect == "postgresql":
            order.append(column.collate("C"))
        else:
            order.append(column)
    return order


def _key_of(table: sa.Table, row: Sequence[Any]) -> str:
    names = [c.name for c in table.columns]
    parts = []
    for column in table.primary_key.columns:
        value = row[names.index(column.name)]
        parts.append(f"{column.name}={'NULL' if value is None else repr(value)}")
    return ", ".join(parts)


def _copy_table(sconn: Connection, tconn: Connection, table: sa.Table, batch_rows: int,
                progress: Progress | None) -> tuple[int, str]:
    columns = list(table.columns)
    kinds = [_kind(c) for c in columns]
    required = [c.primary_key or not c.nullable for c in columns]
    names = [c.name for c in columns]
    total = sconn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    checksum = _Checksum(kinds)
    insert = table.insert()
    last_key = "the first row"
    result = sconn.execute(sa.select(*columns).order_by(*_order(table, sconn.dialect.name)))
    while True:
        try:
            batch = result.fetchmany(batch_rows)
        except DBAPIError as e:
            raise UserError(f"cannot read table {table.name} of the source after"
                            f" {last_key}: {_first_line(e)}; nothing was copied") from None
        if not batch:
            break
        values = []
        for row in batch:
            values.append(_checked_row(table, names, kinds, required, row))
            checksum.add(row)
        last_key = _key_of(table, batch[-1])
        try:
            tconn.execute(insert, values)
        except DBAPIError as e:
            first = _key_of(table, batch[0])
            raise UserError(f"cannot copy table {table.name}: the target refused the rows"
                            f" from {first} to {last_key}: {_first_line(e)}; the target was"
                            " left empty") from None
        if progress is not None:
            progress(table.name, checksum.rows, total)
    return checksum.rows, checksum.hexdigest()


def _checked_row(table: sa.Table, names: list[str], kinds: list[str], required: list[bool],
                 row: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for name, kind, needed, value in zip(names, kinds, required, row, strict=True):
        try:
            if value is None and needed:
                raise _Refused("is NULL, which its primary key or NOT NULL forbids")
            out[name] = _checked(kind, value)
        except _Refused as refused:
            raise UserError(f"cannot copy table {table.name}, row {_key_of(table, row)}:"
                            f" column {name} {refused.why}; fix that row in the source and"
                            " copy again (the target was left empty)") from None
    return out


def _advance_sequences(conn: Connection) -> None:
    """Each id sequence past the table's largest id, so the next insert gets a new one."""
    quote = conn.dialect.identifier_preparer.quote
    for table in metadata.sorted_tables:
        column = table.autoincrement_column
        if column is None:
            continue
        conn.execute(sa.text(
            f"SELECT setval(pg_get_serial_sequence(:table, :column),"
            f" COALESCE(MAX({quote(column.name)}), 0) + 1, false) FROM {quote(table.name)}"),
            {"table": quote(table.name), "column": column.name})


def _verify(conn: Connection, engine: Engine, sums: dict[str, tuple[int, str]],
            batch_rows: int) -> None:
    """Read every table back from the target: counts and checksums equal the source's, or
    UserError (raised inside the transaction: nothing is committed)."""
    for table in metadata.sorted_tables:
        rows, digest = sums[table.name]
        count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        checksum = _Checksum([_kind(c) for c in table.columns])
        result = conn.execute(sa.select(*table.columns)  # streamed: this statement only
                              .order_by(*_order(table, engine.dialect.name))
                              .execution_options(yield_per=batch_rows))
        for part in result.partitions():
            for row in part:
                checksum.add(row)
        if count != rows or checksum.rows != rows:
            raise UserError(f"verification failed: table {table.name} has {count} rows in"
                            f" the target, {rows} in the source; the target was left empty")
        if checksum.hexdigest() != digest:
            raise UserError(f"verification failed: table {table.name} reads back"
                            " differently from the target than from the source (checksums"
                            " differ); the target was left empty")


def _raw_paths() -> sa.CompoundSelect:
    """The raw-mail files the rows name (messages and quarantined spam), each once."""
    tables = metadata.tables
    return sa.union(
        sa.select(tables["messages"].c.raw_path.label("path"))
        .where(tables["messages"].c.raw_path.is_not(None)),
        sa.select(tables["spam"].c.raw_path.label("path"))
        .where(tables["spam"].c.raw_path.is_not(None)),
    )


def _file_references(conn: Connection) -> tuple[int, int]:
    raw_files = conn.execute(
        sa.select(sa.func.count()).select_from(_raw_paths().subquery())).scalar_one()
    sha = metadata.tables["attachments"].c.sha256
    attachment_files = conn.execute(
        sa.select(sa.func.count(sa.distinct(sha))).where(sha.is_not(None))).scalar_one()
    return int(raw_files), int(attachment_files)


def _referenced_paths(conn: Connection) -> list[str]:
    """Every file the rows name, as its path under data_dir (files.raw_relpath/blob_relpath)."""
    from mailgate.store.files import blob_relpath

    tables = metadata.tables
    raw = _raw_paths()
    paths = [row[0] for row in conn.execute(raw)]
    sha = tables["attachments"].c.sha256
    paths += [blob_relpath(row[0]) for row in conn.execute(
        sa.select(sha).where(sha.is_not(None)).distinct())]
    return paths


def _copy_files(sconn: Connection, tconn: Connection, data_dir: Path
                ) -> tuple[int, tuple[str, ...]]:
    """The source's files into the target's stored_files, one at a time (a raw message can be
    tens of megabytes). An attachment whose bytes no longer match its sha256 stops the copy."""
    stored = metadata.tables["stored_files"]
    copied, missing = 0, []
    now = now_iso()
    for relpath in _referenced_paths(sconn):
        try:
            data = (data_dir / relpath).read_bytes()
        except FileNotFoundError:
            missing.append(relpath)
            continue
        if relpath.startswith("attachments/") and hashlib.sha256(data).hexdigest() != (
                relpath.rsplit("/", 1)[1]):
            raise UserError(f"the attachment file {data_dir / relpath} is damaged (its sha256"
                            " no longer matches); the target was left empty")
        tconn.execute(stored.insert().values(path=relpath, data=data, size=len(data),
                                             created_at=now))
        copied += 1
    return copied, tuple(missing)


def _copy_secret(tconn: Connection, data_dir: Path) -> bool:
    path = data_dir / shared.SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        return False
    if len(secret) < shared.MIN_BYTES:
        raise UserError(f"{path}: secret file is truncated; restore it from backup (the"
                        " target was left empty)")
    secrets = metadata.tables["shared_secrets"]
    tconn.execute(secrets.insert().values(name=shared.REPLY_TOKENS, value=secret,
                                          created_at=now_iso()))
    return True


def _first_line(error: DBAPIError) -> str:
    orig: Any = error.orig
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        detail = getattr(diag, "message_detail", None)
        return f"{primary}" + (f" ({detail})" if detail else "")
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
