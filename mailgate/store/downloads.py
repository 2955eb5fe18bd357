"""The files people take away: an attachment's bytes and a message's raw .eml.

Input: an attachment or message id (an integer from the CLI or the admin endpoint), the
database and `data_dir` (trusted; the bytes are read where `store.filestore` keeps them).
Output: a `Download` with the stored filename (already made path-safe at parse time; still
untrusted text from mail), the stored content type (as the sender declared it: untrusted,
whoever serves it decides how) and the bytes — an attachment checked against its sha256, so a
damaged store is reported, never handed out. Raises NotFound for an id that does not exist (or
an attachment of another message, or a message of which no raw .eml was kept) and UserError when
the file behind a row is missing or damaged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from mailgate.errors import NotFound, UserError
from mailgate.store import files, filestore
from mailgate.store import outbound as outbox
from mailgate.store.tickets import get_attachment, get_message_source

EML_TYPE = "message/rfc822"


@dataclass(frozen=True)
class Download:
    filename: str
    content_type: str
    data: bytes
    info: dict[str, Any] = field(default_factory=dict)  # the attachment or message row


def attachment(db: sqlite_utils.Database, data_dir: Path, attachment_id: int,
               message_row: int | None = None) -> Download:
    row = get_attachment(db, attachment_id, message_row)
    relpath = files.blob_relpath(row["sha256"])
    path = filestore.where(db, data_dir, relpath)
    try:
        data = filestore.read(db, data_dir, relpath)
    except FileNotFoundError:
        raise UserError(f"the file of attachment #{attachment_id} is missing: {path}") from None
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise UserError(f"the file of attachment #{attachment_id} is damaged (its sha256 no"
                        f" longer matches): {path}")
    return Download(row["filename"] or f"attachment-{attachment_id}.bin",
                    row["content_type"] or "application/octet-stream", data, row)


def raw_message(db: sqlite_utils.Database, data_dir: Path, message_row: int) -> Download:
    """The message as it came in (with our Authentication-Results on top), or as we sent it."""
    row = get_message_source(db, message_row)
    name = f"message-{message_row}.eml"
    if row["raw_path"]:
        try:
            return Download(name, EML_TYPE, filestore.read(db, data_dir, row["raw_path"]), row)
        except FileNotFoundError:
            raise UserError(f"the raw file of message #{message_row} is missing:"
                            f" {filestore.where(db, data_dir, row['raw_path'])}") from None
    raw = outbox.get_raw(db, row["outbound_id"]) if row["outbound_id"] else None
    if not raw:
        raise NotFound(f"message #{message_row} has no raw .eml kept (a note, or mail never"
                       " rendered)")
    return Download(name, EML_TYPE, bytes(raw), row)
