-- The relay database as schema 1 made it (frozen: the upgrade test starts here).
CREATE TABLE teams (
    team_id     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- The relay's own automerge actor for this team's document: it alone
    -- writes members' devices into it.
    relay_actor TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- One-time enrolment codes, stored only hashed.
CREATE TABLE invites (
    code_hash   BLOB PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams(team_id),
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    redeemed_at INTEGER,
    redeemed_by TEXT
);
CREATE INDEX invites_team ON invites(team_id);

-- Enrolled devices: the actor id is bound to one user of one team. The
-- token is stored only as its SHA-256.
CREATE TABLE devices (
    actor       TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams(team_id),
    user_id     TEXT NOT NULL,
    role        TEXT NOT NULL,
    token_hash  BLOB NOT NULL UNIQUE,
    enrolled_at INTEGER NOT NULL,
    revoked_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX devices_team ON devices(team_id);

-- Each team's append-only feed of automerge changes, in causal order.
CREATE TABLE feed (
    team_id TEXT NOT NULL REFERENCES teams(team_id),
    seq     INTEGER NOT NULL,
    doc_id  TEXT NOT NULL,
    hash    BLOB NOT NULL,
    bytes   BLOB NOT NULL,
    PRIMARY KEY (team_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX feed_hash ON feed(team_id, hash);
CREATE INDEX feed_doc ON feed(team_id, doc_id, seq);
