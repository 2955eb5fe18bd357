"""Every message of ../shared/corpus/ goes through the real pipeline (spool → parse → classify
→ thread → store) without an exception and ends as its label says: a customer's mail as a
ticket message, a bounce as a bounce record with no ticket, an auto-reply or feedback report as
a deliberate ignore with its reason — or a held message with its error."""

from __future__ import annotations

import time

import pytest
from conftest import CORPUS, crlf

from mailgate.model import Envelope, new_queue_id
from mailgate.pipeline.process import Pipeline
from mailgate.spool import Spool, SpoolWriter
from mailgate.store.db import open_db

LABELS = [
    line.split("\t") for line in (CORPUS / "labels.tsv").read_text().splitlines()[1:] if line
]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("corpus-data")
    writer = SpoolWriter(data / "spool.db")
    spool = Spool(data / "spool.db")
    db = open_db(data / "mailgate.db")
    yield Pipeline(db, spool, data), writer
    writer.close()
    spool.close()


def test_labels_cover_the_corpus() -> None:
    on_disk = {
        str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*")
        if p.is_file() and p.name != "SOURCE.md" and p.parent != CORPUS
        and not str(p.relative_to(CORPUS)).startswith("bodies/")
    }
    labelled = {path for path, _ in LABELS}
    assert labelled <= on_disk
    assert len(labelled) >= 650


@pytest.mark.parametrize(("path", "label"), LABELS, ids=[p for p, _ in LABELS])
def test_corpus_message_is_ingested(pipeline, path: str, label: str) -> None:
    pipe, writer = pipeline
    raw = crlf((CORPUS / path).read_bytes())
    env = Envelope(new_queue_id(), time.time(), "127.0.0.1", "corpus.test",
                   "sender@corpus.test", ("support@example.com",), len(raw))
    writer.submit(env, raw).result(timeout=30)
    outcomes = []
    while not any(o.queue_id == env.queue_id for o in outcomes):
        batch = pipe.run_once()
        assert batch, "the entry was not claimed"
        outcomes += batch
    (outcome,) = [o for o in outcomes if o.queue_id == env.queue_id]
    row = pipe.db.execute(
        "SELECT action, reason, ticket_id, message_row FROM audit_incoming WHERE queue_id=?",
        [env.queue_id]).fetchone()
    assert row is not None, "no audit row"
    action, reason, ticket_id, message_row = row
    assert action == outcome.action
    expected = {
        "customer": {"created_ticket", "appended", "duplicate"},
        "bounce": {"bounce"},
        "feedback_report": {"ignored"},
        "auto_reply": {"ignored", "appended"},  # appended only as an internal note
    }[label]
    assert action in expected, (action, reason)
    if action in ("created_ticket", "appended"):
        stored = pipe.db.execute(
            "SELECT ticket_id, raw_path, internal FROM messages WHERE id=?", [message_row]
        ).fetchone()
        assert stored[0] == ticket_id
        assert (pipe.data_dir / stored[1]).read_bytes() == raw
        assert bool(stored[2]) == (label == "auto_reply")
    else:
        # corpus fixtures are anonymised copies: some share a Message-ID (duplicate)
        assert ticket_id is None or action == "duplicate"
        assert reason
    assert pipe.spool.get(env.queue_id).state in ("done", "hold")
