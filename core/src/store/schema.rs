//! The local database schema and its upgrades.
//!
//! `PRAGMA user_version` holds the version. A store from a newer app is
//! refused, never "upgraded" downwards.

use rusqlite::Connection;

use crate::error::{Error, Result};

pub const VERSION: i64 = 7;

const V1: &str = "
-- Who this device is: its automerge actor id and, once enrolled, its user.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per automerge document: the team's and each task's. A document
-- is its snapshot (automerge save, if any) plus its rows in `changes`.
-- Rows here stay small: every change insert looks its document up here.
CREATE TABLE documents (
    doc_id     TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('team', 'task')),
    task_id    TEXT,
    generation INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX documents_task ON documents(task_id);

CREATE TABLE snapshots (
    doc_id TEXT PRIMARY KEY REFERENCES documents(doc_id) ON DELETE CASCADE,
    bytes  BLOB NOT NULL
);

-- Changes not yet folded into the snapshot, including ones still waiting for
-- their dependencies to arrive. (v3 makes this a rowid table: see V3.)
CREATE TABLE changes (
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    hash   BLOB NOT NULL,
    bytes  BLOB NOT NULL,
    PRIMARY KEY (doc_id, hash)
) WITHOUT ROWID;

-- What this device wrote and the relay has not taken yet. A change the relay
-- refused stays here with the reason, is not retried, and shows in
-- 'needs attention'.
CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY,
    doc_id         TEXT NOT NULL,
    hash           BLOB NOT NULL,
    bytes          BLOB NOT NULL,
    queued_at      INTEGER NOT NULL,
    refused_code   TEXT,
    refused_reason TEXT
);
-- No index on the outbox beyond its rowid: it holds only unsent changes,
-- and every B-tree here is an encrypted page written on every write.

-- The index the views read: one row per task, derived from its document in
-- the same transaction as every change to it.
CREATE TABLE tasks (
    task_id             TEXT PRIMARY KEY,
    doc_id              TEXT NOT NULL,
    title               TEXT NOT NULL,
    status              TEXT NOT NULL,
    level               TEXT NOT NULL,
    priority            INTEGER NOT NULL,
    category            TEXT NOT NULL,
    pool_role           TEXT,
    assignee            TEXT,
    created_by          TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    due_at              INTEGER,
    submitted_at        INTEGER,
    completed_at        INTEGER,
    reviewed_by         TEXT,
    reviewed_at         INTEGER,
    review_submitted_at INTEGER,
    review_stale        INTEGER NOT NULL DEFAULT 0,
    next_call_due_at    INTEGER,
    call_attempts       INTEGER NOT NULL DEFAULT 0,
    first_reached_at    INTEGER,
    escalations         INTEGER NOT NULL DEFAULT 0,
    archived            INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX tasks_assignee ON tasks(assignee, status);
CREATE INDEX tasks_pool ON tasks(pool_role, status);
CREATE INDEX tasks_status ON tasks(status);
CREATE INDEX tasks_doc ON tasks(doc_id);

-- Actions that did not take effect (lost a race, refused), per author.
CREATE TABLE attention (
    task_id  TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    action   TEXT NOT NULL,
    code     TEXT NOT NULL,
    reason   TEXT NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (task_id, event_id)
) WITHOUT ROWID;
CREATE INDEX attention_user ON attention(user_id);

-- Attention items the user has seen and put away, by their key (since v2:
-- '<task id>/<event id>', or 'outbox:<change hash>').
CREATE TABLE dismissed (
    event_id TEXT PRIMARY KEY
) WITHOUT ROWID;
";

/// v2 changes no table: the keys of dismissed attention items. Event ids
/// repeat across tasks (each task counts its events per device), and outbox
/// ids are reused once the rows above them are delivered, so a v1 key could
/// hide a later item that merely shared it. Each v1 key becomes the keys of
/// the items it hid then, and nothing else.
const V2: &str = "
CREATE TEMP TABLE dismissed_v1 AS SELECT event_id FROM dismissed;
DELETE FROM dismissed;
INSERT OR IGNORE INTO dismissed (event_id)
    SELECT a.task_id || '/' || a.event_id
    FROM attention a JOIN dismissed_v1 d ON d.event_id = a.event_id;
INSERT OR IGNORE INTO dismissed (event_id)
    SELECT 'outbox:' || lower(hex(o.hash))
    FROM outbox o JOIN dismissed_v1 d ON d.event_id = 'outbox:' || o.id;
DROP TABLE temp.dismissed_v1;
";

/// v3 keeps changes in the order they were written (a rowid table) instead of
/// clustered by document. A change is ~400 bytes: clustered, every write
/// landed in a random leaf of a table that outgrew the page cache (one page
/// read and decrypted, and frequent splits, in every write), where now it
/// lands on the last page, already in the cache; only the small entry of
/// the unique index lands at random. The store benchmark's logged call
/// went from ~255 to ~200 µs (mean per write) with this alone.
const V3: &str = "
ALTER TABLE changes RENAME TO changes_v2;
CREATE TABLE changes (
    id     INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    hash   BLOB NOT NULL,
    bytes  BLOB NOT NULL,
    UNIQUE (doc_id, hash)
);
INSERT INTO changes (doc_id, hash, bytes) SELECT doc_id, hash, bytes FROM changes_v2;
DROP TABLE changes_v2;
";

/// v4 keeps this device's own changes only in the outbox until the relay
/// has them (then in `changes`), instead of in both: a logged call writes
/// its ~400 bytes once, and its commit three pages instead of four (the
/// last page of `outbox`, this index, the task's row). A document is read
/// from its snapshot, its rows in `changes` and its unsent outbox rows,
/// found by this index. Nothing moves: a v3 store's unsent changes are in
/// both tables, which reads the same.
const V4: &str = "
CREATE INDEX outbox_doc ON outbox(doc_id);
";

/// v5 remembers which documents this device must offer the relay again:
/// a relay restored from a backup lost changes it had acknowledged, which
/// this device no longer queues (`Store::relay_restarted`). `attempts`
/// counts offers that were refused for what the changes build on (another
/// device's lost change, offered again later). An outbox row refused as
/// `missing_dependencies` marks its document once: `offered_again` says it
/// was queued again after its document was offered, and is not marked twice.
const V5: &str = "
CREATE TABLE offer_again (
    doc_id   TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
ALTER TABLE outbox ADD COLUMN offered_again INTEGER NOT NULL DEFAULT 0;
";

/// v6 holds an outbox row the relay refused for what its team document
/// says (`not_permitted`, `forbidden`) instead of setting it aside at
/// once: a relay restored from a backup may have lost the team change
/// that allowed it (a member added, a promotion), which another device
/// offers again (`Store::outbox_refused`, `Store::release_held`). `held`
/// marks such a row: still in its document, not yet set aside.
const V6: &str = "
ALTER TABLE outbox ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
";

/// v7 keeps a re-read of the feed going across sync rounds. When this
/// device's user's sight changes, the feed is read again from its start,
/// and at its end the tasks the relay sent nothing of are dropped (the
/// user may no longer read them). `reread` lists the documents the relay
/// sent since the re-read began, page by page as each is taken, so that a
/// re-read cut short (no signal, the app killed) still ends in that drop;
/// before, only one that got through in a single round did.
const V7: &str = "
CREATE TABLE reread (
    doc_id TEXT PRIMARY KEY
) WITHOUT ROWID;
";

/// Bring a database to [`VERSION`].
pub fn upgrade(conn: &Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(Error::SchemaTooNew(current));
    }
    let tx = conn.unchecked_transaction()?;
    for from in current..VERSION {
        upgrade_from(&tx, from)?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}

fn upgrade_from(conn: &Connection, from: i64) -> Result<()> {
    match from {
        0 => conn.execute_batch(V1)?,
        1 => conn.execute_batch(V2)?,
        2 => conn.execute_batch(V3)?,
        3 => conn.execute_batch(V4)?,
        4 => conn.execute_batch(V5)?,
        5 => conn.execute_batch(V6)?,
        6 => conn.execute_batch(V7)?,
        _ => return Err(Error::Corrupt("unknown schema version")),
    }
    Ok(())
}
