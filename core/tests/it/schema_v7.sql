-- user_version 7
CREATE INDEX attention_user ON attention(user_id);
CREATE INDEX documents_task ON documents(task_id);
CREATE INDEX outbox_doc ON outbox(doc_id);
CREATE INDEX tasks_assignee ON tasks(assignee, status);
CREATE INDEX tasks_doc ON tasks(doc_id);
CREATE INDEX tasks_pool ON tasks(pool_role, status);
CREATE INDEX tasks_status ON tasks(status);
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
CREATE TABLE changes (
    id     INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    hash   BLOB NOT NULL,
    bytes  BLOB NOT NULL,
    UNIQUE (doc_id, hash)
);
CREATE TABLE dismissed (
    event_id TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE documents (
    doc_id     TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('team', 'task')),
    task_id    TEXT,
    generation INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE offer_again (
    doc_id   TEXT PRIMARY KEY,
    attempts INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY,
    doc_id         TEXT NOT NULL,
    hash           BLOB NOT NULL,
    bytes          BLOB NOT NULL,
    queued_at      INTEGER NOT NULL,
    refused_code   TEXT,
    refused_reason TEXT
, offered_again INTEGER NOT NULL DEFAULT 0, held INTEGER NOT NULL DEFAULT 0);
CREATE TABLE reread (
    doc_id TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE snapshots (
    doc_id TEXT PRIMARY KEY REFERENCES documents(doc_id) ON DELETE CASCADE,
    bytes  BLOB NOT NULL
);
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
