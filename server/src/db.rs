//! The relay's SQLite file: teams, invites, devices and each team's feed.
//! One writer connection, a small pool of readers (WAL lets them read while
//! the writer writes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use handoff_core::event::EventId;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::team_state::legacy_chain;

pub const VERSION: i64 = 5;

const SCHEMA: &str = "
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
-- Only the primary key is indexed: a commit then appends to the end of one
-- b-tree. The relay finds a change by hash, and a document's changes, in
-- the index it rebuilds in memory from this table.
CREATE TABLE feed (
    team_id TEXT NOT NULL REFERENCES teams(team_id),
    seq     INTEGER NOT NULL,
    doc_id  TEXT NOT NULL,
    hash    BLOB NOT NULL,
    bytes   BLOB NOT NULL,
    PRIMARY KEY (team_id, seq)
) WITHOUT ROWID;
";

/// Added in schema 3.
const RETIRED_EVENTS: &str = "
-- The events of redacted tasks' older documents, whose changes were
-- deleted from the feed: their ids and the SHA-256 of their scrubbed JSON
-- (no content). A device moving its copy of such a task to the newer
-- document may bring these events along, scrubbed.
CREATE TABLE retired_events (
    team_id  TEXT NOT NULL REFERENCES teams(team_id),
    task_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    digest   BLOB NOT NULL,
    PRIMARY KEY (team_id, task_id, event_id)
) WITHOUT ROWID;
";

/// Added in schema 4.
const EXITS: &str = "
-- Members who lost sight of a task's document (it was reassigned, or
-- claimed from their pool by another): the seq of the change that took it
-- from them. They are still sent its feed entries up to that one, so their
-- phones learn where it went. Written with that change's feed row.
CREATE TABLE exits (
    team_id TEXT NOT NULL REFERENCES teams(team_id),
    doc_id  TEXT NOT NULL,
    user_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (team_id, doc_id, user_id)
) WITHOUT ROWID;
";

/// Added in schema 5.
const FEED_CHAIN: &str = "
-- Each row's place in its feed: a digest of its change's hash and the
-- chain of the row before (see `team_state::chain_after`), which phones'
-- cursors name. Rows written before schema 5 have none: their chain is
-- their hash's first bytes, as their tag was.
ALTER TABLE feed ADD COLUMN chain INTEGER;
";

/// Schema upgrades, one step per version.
fn upgrade_from(tx: &Connection, version: i64) -> Result<()> {
    match version {
        // v1 indexed the feed by hash and by document: each commit wrote to
        // three b-trees, two of them at random places.
        1 => tx.execute_batch("DROP INDEX feed_hash; DROP INDEX feed_doc;")?,
        2 => tx.execute_batch(RETIRED_EVENTS)?,
        // Tasks moved before schema 4 keep no exits: phones that lost
        // sight of them then were not told then either.
        3 => tx.execute_batch(EXITS)?,
        4 => tx.execute_batch(FEED_CHAIN)?,
        _ => return Err(Error::Storage(format!("no upgrade from schema {version}"))),
    }
    Ok(())
}

pub struct Db {
    path: PathBuf,
    /// Beside the database: the admin command appends to it at every
    /// revocation ([`Db::revocation_stamp`]).
    revocations: PathBuf,
    /// Beside the database: the relay appends to it a line `<team> <hash>`
    /// for each change it took that carries copies of other devices'
    /// events into a redacted task, and `<team> <hash> relay <actor>` for
    /// each of its own that carries over events a redaction missed
    /// ([`Db::note_vouched`]).
    vouched: PathBuf,
    /// What that file lists, by team: read once, at the first team's load
    /// (it grows with every redaction, and every team load asks for its
    /// own lines), and kept up with what this relay notes since.
    noted: Mutex<Option<HashMap<String, Vec<Vouched>>>>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Feed transactions committed, and the changes in them (for /metrics).
    pub feed_commits: AtomicU64,
    pub feed_changes: AtomicU64,
    /// Rows were deleted: the next checkpoint also empties the WAL, which
    /// still holds their old pages.
    truncate_wal: AtomicBool,
    /// The WAL has grown past `restart_frames`: the feed writer
    /// checkpoints it after its next commit (see [`Db::checkpoint`]).
    restart_wal: AtomicBool,
    /// [`WAL_RESTART_FRAMES`]; smaller in tests.
    restart_frames: i64,
}

/// How long the WAL may grow (frames of one page, ~4 KiB each) before the
/// feed writer itself finishes a checkpoint so that the log starts over.
pub const WAL_RESTART_FRAMES: i64 = 2048;

/// What the WAL is cut back to when it starts over after a burst.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The revocations file's length, time and identity: see
/// [`Db::revocation_stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevocationStamp(u64, Option<std::time::SystemTime>, u64);

/// A file replaced by another of the same length within one tick of the
/// clock is still told apart.
#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> u64 {
    0
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRow {
    pub team_id: String,
    pub name: String,
    pub relay_actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub actor: String,
    pub team_id: String,
    pub user_id: String,
    pub role: String,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRow {
    pub team_id: String,
    pub user_id: String,
    pub name: String,
    pub role: String,
    pub expires_at: i64,
    pub redeemed_at: Option<i64>,
    /// The device (actor) that redeemed it.
    pub redeemed_by: Option<String>,
}

/// A redacted task's older document, to delete from the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredDoc {
    pub doc_id: String,
    pub task_id: String,
    pub seqs: Vec<u64>,
    /// Event id, and the SHA-256 of the event's scrubbed JSON.
    pub events: Vec<(String, [u8; 32])>,
}

/// An automerge actor id as the relay makes one (16 random bytes, in
/// lowercase hex): a note cut short in it is passed over.
fn is_relay_actor(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A change noted beside the database ([`Db::note_vouched`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    pub hash: [u8; 32],
    /// The relay's own change, carrying over events a redaction missed, by
    /// the actor (hex) the relay wrote it with; otherwise (`None`) a
    /// device's.
    pub by_relay: Option<String>,
}

/// One row of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub seq: u64,
    pub doc_id: String,
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
    /// Members who lose sight of the task with this change (see `exits`).
    pub exits: Vec<String>,
    /// Its place in the feed: it names this change and every row before
    /// it (`team_state::chain_after`).
    pub chain: u64,
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Files the relay creates are its own: read and written by its user only
/// (the feed holds patient details in the clear). SQLite gives the WAL and
/// shared-memory files the database's mode.
fn owner_only(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// The file named as the database with `suffix` added (`relay.db-wal`).
fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut file = db.as_os_str().to_owned();
    file.push(suffix);
    PathBuf::from(file)
}

/// Append `lines` to a file beside the database (made owner-only if new)
/// and sync it, and its folder when it was new. The lines go after a line
/// break of their own, so a line cut short by a crash before them stays a
/// line of its own that readers pass over, and does not swallow the first.
fn append_lines(path: &Path, lines: &str) -> std::io::Result<()> {
    let new = !path.exists();
    let mut f = owner_only(std::fs::OpenOptions::new().create(true).append(true)).open(path)?;
    std::io::Write::write_all(&mut f, format!("\n{lines}\n").as_bytes())?;
    f.sync_all()?;
    if new {
        if let Some(folder) = path.parent() {
            std::fs::File::open(folder)?.sync_all()?;
        }
    }
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection> {
    // Made here, not by SQLite (which would make it readable by everyone
    // under the usual umask). An existing file keeps the mode its
    // operator gave it.
    owner_only(std::fs::OpenOptions::new().create(true).append(true))
        .open(path)
        .map_err(|e| Error::Storage(format!("cannot open the database file: {e}")))?;
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// An existing database is opened only by the user who owns it: files the
/// relay or an admin command makes beside it (the WAL, its shared memory,
/// the revocations and vouched files) are its user's alone, so an admin command run as
/// root on the relay's database would leave files the relay cannot open,
/// and it would stop (or not start) on them.
/// The files beside it are checked too: one left by an earlier run as
/// another user would stop this one.
#[cfg(unix)]
fn check_owner(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    for suffix in ["", "-wal", "-shm", "-revocations", "-vouched"] {
        let file = beside(path, suffix);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.uid() != me {
            return Err(Error::Storage(format!(
                "{} belongs to user id {}, and this runs as user id {me}: run it as the \
                 relay's user (e.g. `sudo -u <that user> handoff-server ...`), or files \
                 made beside the database would be unreadable by the relay",
                file.display(),
                meta.uid()
            )));
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner(_: &Path) -> Result<()> {
    Ok(())
}

impl Db {
    pub fn open(path: impl AsRef<Path>) -> Result<Db> {
        let path = path.as_ref().to_path_buf();
        check_owner(&path)?;
        let conn = open_conn(&path)?;
        // One name for the file however it was reached (a link, a relative
        // path): the relay and the admin command must find the same
        // revocations file beside it.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > VERSION {
            return Err(Error::Storage(format!(
                "the database was written by a newer relay (schema {version})"
            )));
        }
        if version < VERSION {
            let tx = conn.unchecked_transaction()?;
            if version == 0 {
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(RETIRED_EVENTS)?;
                tx.execute_batch(EXITS)?;
                tx.execute_batch(FEED_CHAIN)?;
            } else {
                for v in version..VERSION {
                    upgrade_from(&tx, v)?;
                }
            }
            tx.pragma_update(None, "user_version", VERSION)?;
            tx.commit()?;
        }
        // A push is acknowledged only once it would survive a power cut: the
        // writer syncs the WAL at every commit (the feed writer batches
        // concurrent pushes into one commit, so one sync serves them all).
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Deleted rows (a redacted task's older document) are overwritten,
        // not left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        Ok(Db {
            revocations: beside(&path, "-revocations"),
            vouched: beside(&path, "-vouched"),
            noted: Mutex::new(None),
            path,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            feed_commits: AtomicU64::new(0),
            feed_changes: AtomicU64::new(0),
            truncate_wal: AtomicBool::new(false),
            restart_wal: AtomicBool::new(false),
            restart_frames: WAL_RESTART_FRAMES,
        })
    }

    /// Copy the WAL back into the database file, off the write path: the
    /// relay runs this on a timer and turns off checkpoints inside commits.
    ///
    /// Under steady pushes this alone never lets the WAL start over: the
    /// log starts again from its beginning only at a commit that finds
    /// every frame copied back, and another commit always lands while a
    /// checkpoint runs. The WAL grew without end (~40 MB/s at one edit per
    /// push), every commit extended the file, and each sync then also
    /// wrote the file's inode. So past [`WAL_RESTART_FRAMES`] this asks
    /// the feed writer to finish the checkpoint after its next commit,
    /// when no commit can land in between
    /// ([`Db::finish_checkpoint_if_asked`]).
    pub fn checkpoint(&self) -> Result<()> {
        if self.truncate_wal.swap(false, Ordering::AcqRel) {
            // Does not wait for readers to move on: waiting, it holds the
            // write lock, and every team's commits would wait with it (a
            // long reader, such as a team loading its feed, would fail
            // them). If one is in the way, the next tick tries again.
            let busy: i64 = self.read(|c| {
                c.busy_timeout(Duration::ZERO)?;
                let busy = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
                c.busy_timeout(BUSY_TIMEOUT)?;
                Ok(busy?)
            })?;
            if busy != 0 {
                self.truncate_wal.store(true, Ordering::Release);
            }
            return Ok(());
        }
        let log: i64 =
            self.read(|c| Ok(c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?))?;
        if log >= self.restart_frames {
            self.restart_wal.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Copy the whole WAL into the database file and empty it (at
    /// shutdown), so that no page of a deleted (redacted) document is left
    /// in it. A reader or the checkpoint timer may hold it for a moment:
    /// then it is tried again, for up to ten seconds.
    pub fn checkpoint_truncate(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let busy: i64 = self
                .write()
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy == 0 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Storage(
                    "the write-ahead log could not be emptied".into(),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Leave checkpoints to [`Db::checkpoint`] (the relay's timer thread).
    pub fn checkpoint_in_background(&self) -> Result<()> {
        self.write().pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    pub fn write(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on a reader connection.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = {
            let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }

    // ---- queries (each takes the connection, so callers choose a reader
    // or the writer's transaction) ------------------------------------------

    pub fn team(conn: &Connection, team_id: &str) -> Result<Option<TeamRow>> {
        Ok(conn
            .prepare_cached("SELECT team_id, name, relay_actor FROM teams WHERE team_id = ?1")?
            .query_row([team_id], |r| {
                Ok(TeamRow {
                    team_id: r.get(0)?,
                    name: r.get(1)?,
                    relay_actor: r.get(2)?,
                })
            })
            .optional()?)
    }

    pub fn teams(conn: &Connection) -> Result<Vec<TeamRow>> {
        let mut stmt =
            conn.prepare("SELECT team_id, name, relay_actor FROM teams ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(TeamRow {
                team_id: r.get(0)?,
                name: r.get(1)?,
                relay_actor: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each team's feed length as stored: its last seq (one index lookup a
    /// team; rows of retired documents are gone, their seqs still count).
    pub fn feed_heads(conn: &Connection) -> Result<Vec<(String, u64)>> {
        let mut stmt = conn.prepare(
            "SELECT team_id, (SELECT COALESCE(MAX(seq), 0) FROM feed f WHERE f.team_id = t.team_id)
             FROM teams t",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_team(conn: &Connection, team: &TeamRow, now: i64) -> Result<()> {
        conn.execute(
            "INSERT INTO teams (team_id, name, relay_actor, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![team.team_id, team.name, team.relay_actor, now],
        )?;
        Ok(())
    }

    pub fn insert_invite(
        conn: &Connection,
        code_hash: &[u8],
        invite: &InviteRow,
        now: i64,
    ) -> Result<()> {
        conn.execute(
            "INSERT INTO invites (code_hash, team_id, user_id, name, role, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                code_hash,
                invite.team_id,
                invite.user_id,
                invite.name,
                invite.role,
                now,
                invite.expires_at
            ],
        )?;
        Ok(())
    }

    pub fn invite(conn: &Connection, code_hash: &[u8]) -> Result<Option<InviteRow>> {
        Ok(conn
            .prepare_cached(
                "SELECT team_id, user_id, name, role, expires_at, redeemed_at, redeemed_by
                 FROM invites WHERE code_hash = ?1",
            )?
            .query_row([code_hash], |r| {
                Ok(InviteRow {
                    team_id: r.get(0)?,
                    user_id: r.get(1)?,
                    name: r.get(2)?,
                    role: r.get(3)?,
                    expires_at: r.get(4)?,
                    redeemed_at: r.get(5)?,
                    redeemed_by: r.get(6)?,
                })
            })
            .optional()?)
    }

    /// Mark an invite used; false if someone else redeemed it first.
    pub fn redeem_invite(
        conn: &Connection,
        code_hash: &[u8],
        actor: &str,
        now: i64,
    ) -> Result<bool> {
        let n = conn.execute(
            "UPDATE invites SET redeemed_at = ?2, redeemed_by = ?3
             WHERE code_hash = ?1 AND redeemed_at IS NULL",
            params![code_hash, now, actor],
        )?;
        Ok(n == 1)
    }

    /// Whether the device, not revoked, has this token.
    pub fn device_token_is(
        conn: &Connection,
        team_id: &str,
        actor: &str,
        token_hash: &[u8],
    ) -> Result<bool> {
        let found = conn
            .query_row(
                "SELECT 1 FROM devices
                 WHERE team_id = ?1 AND actor = ?2 AND token_hash = ?3 AND revoked_at IS NULL",
                params![team_id, actor, token_hash],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    pub fn insert_device(conn: &Connection, d: &DeviceRow, token_hash: &[u8]) -> Result<()> {
        conn.execute(
            "INSERT INTO devices (actor, team_id, user_id, role, token_hash, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                d.actor,
                d.team_id,
                d.user_id,
                d.role,
                token_hash,
                d.enrolled_at
            ],
        )?;
        Ok(())
    }

    pub fn device_by_token(conn: &Connection, token_hash: &[u8]) -> Result<Option<DeviceRow>> {
        Ok(conn
            .prepare_cached(
                "SELECT actor, team_id, user_id, role, enrolled_at, revoked_at
                 FROM devices WHERE token_hash = ?1",
            )?
            .query_row([token_hash], device_row)
            .optional()?)
    }

    pub fn device(conn: &Connection, actor: &str) -> Result<Option<DeviceRow>> {
        Ok(conn
            .prepare_cached(
                "SELECT actor, team_id, user_id, role, enrolled_at, revoked_at
                 FROM devices WHERE actor = ?1",
            )?
            .query_row([actor], device_row)
            .optional()?)
    }

    pub fn devices(conn: &Connection, team_id: &str) -> Result<Vec<DeviceRow>> {
        let mut stmt = conn.prepare(
            "SELECT actor, team_id, user_id, role, enrolled_at, revoked_at
             FROM devices WHERE team_id = ?1 ORDER BY enrolled_at, actor",
        )?;
        let rows = stmt.query_map([team_id], device_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The actors of a team's revoked devices.
    pub fn revoked_devices(conn: &Connection, team_id: &str) -> Result<Vec<String>> {
        let mut stmt = conn.prepare_cached(
            "SELECT actor FROM devices WHERE team_id = ?1 AND revoked_at IS NOT NULL",
        )?;
        let rows = stmt.query_map([team_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke a device (the admin command, beside a live relay or not).
    /// A relay serving this database remembers the tokens it has checked:
    /// once the revocation is committed, the device's actor is appended to
    /// the revocations file beside the database, and a relay that finds
    /// that file changed ([`Db::revocation_stamp`]) checks every token
    /// again. The file also outlives the database: a database restored
    /// from a backup taken before the revocation has the device revoked
    /// again when it is served ([`Db::revoke_again`]).
    pub fn revoke_device(&self, actor: &str, now: i64) -> Result<bool> {
        let n = self.write().execute(
            "UPDATE devices SET revoked_at = ?2 WHERE actor = ?1 AND revoked_at IS NULL",
            params![actor, now],
        )?;
        if n == 1 {
            // On disk before the admin is told: a restore from an older
            // backup revokes again what this file lists, and a power cut
            // must not take the line with it.
            let noted = append_lines(&self.revocations, actor);
            if let Err(e) = noted {
                return Err(Error::Storage(format!(
                    "the device is revoked, but a running relay could not be told at once \
                     ({e}); it will notice within a second"
                )));
            }
        }
        Ok(n == 1)
    }

    /// Revoke again every device the revocations file lists that the
    /// database has as active: it was restored from a backup taken before
    /// those revocations (a stolen phone must not come back with it).
    /// Returns how many. Lines that name no device (a relay before this
    /// one appended a byte per revocation; a line cut short) are passed
    /// over.
    pub fn revoke_again(&self, now: i64) -> Result<usize> {
        let listed = match std::fs::read(&self.revocations) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::Storage(format!("reading the revocations file: {e}"))),
        };
        let conn = self.write();
        let tx = conn.unchecked_transaction()?;
        let mut again = 0;
        let listed = String::from_utf8_lossy(&listed);
        for actor in listed.lines().filter(|l| !l.trim().is_empty()) {
            again += tx
                .prepare_cached(
                    "UPDATE devices SET revoked_at = ?2 WHERE actor = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![actor.trim(), now])?;
        }
        tx.commit()?;
        Ok(again)
    }

    /// Changes whenever a revocation is noted beside the database (see
    /// [`Db::revoke_device`]): one `stat`, where checking a token is a read.
    pub fn revocation_stamp(&self) -> RevocationStamp {
        match std::fs::metadata(&self.revocations) {
            Ok(m) => RevocationStamp(m.len(), m.modified().ok(), file_id(&m)),
            Err(_) => RevocationStamp::default(),
        }
    }

    /// Note beside the database that the relay took these changes of
    /// `team_id`'s redacted tasks: each carries copies of other devices'
    /// events it had checked against the older document, or is the relay's
    /// own change carrying over events a redaction missed. The file
    /// outlives the database, as the revocations file does: a database
    /// restored from a backup taken before has lost what those copies were
    /// checked against (and the relay's own change), and takes the changes
    /// again when phones offer them ([`Db::vouched`]).
    pub fn note_vouched(&self, team_id: &str, changes: &[Vouched]) -> Result<()> {
        let lines: Vec<String> = changes
            .iter()
            .map(|v| match &v.by_relay {
                Some(actor) => format!("{team_id} {} relay {actor}", hex::encode(v.hash)),
                None => format!("{team_id} {}", hex::encode(v.hash)),
            })
            .collect();
        append_lines(&self.vouched, &lines.join("\n"))
            .map_err(|e| Error::Storage(format!("noting a redaction beside the database: {e}")))?;
        if let Some(noted) = self
            .noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            noted
                .entry(team_id.to_owned())
                .or_default()
                .extend_from_slice(changes);
        }
        Ok(())
    }

    /// The changes of `team_id` noted by [`Db::note_vouched`]. Lines that
    /// do not parse (a write cut short) are passed over.
    pub fn vouched(&self, team_id: &str) -> Result<Vec<Vouched>> {
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        if noted.is_none() {
            *noted = Some(self.read_vouched()?);
        }
        Ok(noted
            .as_ref()
            .and_then(|n| n.get(team_id))
            .cloned()
            .unwrap_or_default())
    }

    /// Every line of the file of [`Db::note_vouched`], by team.
    fn read_vouched(&self) -> Result<HashMap<String, Vec<Vouched>>> {
        let listed = match std::fs::read(&self.vouched) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(Error::Storage(format!("reading the redactions noted: {e}"))),
        };
        let mut noted: HashMap<String, Vec<Vouched>> = HashMap::new();
        for line in String::from_utf8_lossy(&listed).lines() {
            let parsed = (|| {
                let mut fields = line.split_whitespace();
                let (team, hash) = (fields.next()?, fields.next()?);
                let hash: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
                let by_relay = match (fields.next(), fields.next(), fields.next()) {
                    (None, None, None) => None,
                    (Some("relay"), Some(actor), None) if is_relay_actor(actor) => {
                        Some(actor.to_owned())
                    }
                    _ => return None,
                };
                Some((team, Vouched { hash, by_relay }))
            })();
            if let Some((team, v)) = parsed {
                noted.entry(team.to_owned()).or_default().push(v);
            }
        }
        Ok(noted)
    }

    pub fn append_feed(conn: &Connection, team_id: &str, row: &FeedRow) -> Result<()> {
        conn.prepare_cached(
            "INSERT INTO feed (team_id, seq, doc_id, hash, bytes, chain)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            team_id,
            row.seq as i64,
            row.doc_id,
            &row.hash[..],
            row.bytes,
            row.chain as i64
        ])?;
        for user in &row.exits {
            conn.prepare_cached(
                "INSERT INTO exits (team_id, doc_id, user_id, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (team_id, doc_id, user_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![team_id, row.doc_id, user, row.seq as i64])?;
        }
        Ok(())
    }

    /// Every exit of a team: document, member, seq.
    pub fn exits(conn: &Connection, team_id: &str) -> Result<Vec<(String, String, u64)>> {
        let mut stmt = conn.prepare("SELECT doc_id, user_id, seq FROM exits WHERE team_id = ?1")?;
        let rows = stmt.query_map([team_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Append rows to a team's feed in one transaction.
    pub fn append_feed_batch<'a>(
        &self,
        team_id: &str,
        rows: impl ExactSizeIterator<Item = &'a FeedRow>,
    ) -> Result<()> {
        let n = rows.len() as u64;
        let conn = self.write();
        let tx = conn.unchecked_transaction()?;
        for r in rows {
            Db::append_feed(&tx, team_id, r)?;
        }
        tx.commit()?;
        self.feed_commits.fetch_add(1, Ordering::Relaxed);
        self.feed_changes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Finish the checkpoint [`Db::checkpoint`] asked for, if it did: the
    /// feed writer calls this once a commit's pushes are answered and its
    /// long-polls woken. Holding the writer, nothing is appended meanwhile,
    /// so this copies back every frame no reader still reads, and the next
    /// commit starts the log over (the timer copied most already). A
    /// failure costs only the restart.
    pub fn finish_checkpoint_if_asked(&self) {
        if self.restart_wal.swap(false, Ordering::AcqRel) {
            let conn = self.write();
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!("checkpoint after a commit failed: {e}");
            }
        }
    }

    /// The WAL file's length in bytes (0 when there is none).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(beside(&self.path, "-wal")).map_or(0, |m| m.len())
    }

    /// Delete retired documents' rows from a team's feed and keep their
    /// event ids, in one transaction; the deleted rows' hashes.
    pub fn retire_docs(&self, team_id: &str, docs: &[RetiredDoc]) -> Result<Vec<[u8; 32]>> {
        let conn = self.write();
        let tx = conn.unchecked_transaction()?;
        let mut hashes = Vec::new();
        {
            let mut delete = tx.prepare_cached(
                "DELETE FROM feed WHERE team_id = ?1 AND seq = ?2 RETURNING hash",
            )?;
            let mut keep = tx.prepare_cached(
                "INSERT OR IGNORE INTO retired_events (team_id, task_id, event_id, digest)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for doc in docs {
                for &seq in &doc.seqs {
                    let hash: Option<Vec<u8>> = delete
                        .query_row(params![team_id, seq as i64], |r| r.get(0))
                        .optional()?;
                    if let Some(h) = hash.and_then(|h| <[u8; 32]>::try_from(h).ok()) {
                        hashes.push(h);
                    }
                }
                for (id, digest) in &doc.events {
                    keep.execute(params![team_id, doc.task_id, id, &digest[..]])?;
                }
                tx.prepare_cached("DELETE FROM exits WHERE team_id = ?1 AND doc_id = ?2")?
                    .execute(params![team_id, doc.doc_id])?;
            }
        }
        tx.commit()?;
        self.truncate_wal.store(true, Ordering::Release);
        Ok(hashes)
    }

    /// Retired documents' events (id → digest), by task.
    pub fn retired_events(
        conn: &Connection,
        team_id: &str,
    ) -> Result<HashMap<String, HashMap<EventId, [u8; 32]>>> {
        let mut stmt = conn
            .prepare("SELECT task_id, event_id, digest FROM retired_events WHERE team_id = ?1")?;
        let mut rows = stmt.query([team_id])?;
        let mut out: HashMap<String, HashMap<EventId, [u8; 32]>> = HashMap::new();
        while let Some(r) = rows.next()? {
            let id: String = r.get(1)?;
            let digest: Vec<u8> = r.get(2)?;
            if let (Ok(id), Ok(digest)) = (id.parse(), <[u8; 32]>::try_from(digest)) {
                out.entry(r.get(0)?).or_default().insert(id, digest);
            }
        }
        Ok(out)
    }

    /// The whole feed of a team, oldest first (to rebuild its state).
    pub fn feed(conn: &Connection, team_id: &str, mut each: impl FnMut(FeedRow)) -> Result<()> {
        let mut stmt = conn.prepare(
            "SELECT seq, doc_id, hash, bytes, chain FROM feed WHERE team_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([team_id])?;
        while let Some(r) = rows.next()? {
            each(feed_row(r)?);
        }
        Ok(())
    }

    pub fn feed_at(conn: &Connection, team_id: &str, seq: u64) -> Result<Option<FeedRow>> {
        Ok(conn
            .prepare_cached(
                "SELECT seq, doc_id, hash, bytes, chain FROM feed WHERE team_id = ?1 AND seq = ?2",
            )?
            .query_row(params![team_id, seq as i64], feed_row)
            .optional()?)
    }

    /// The bytes of the changes at these seqs.
    pub fn changes_at(conn: &Connection, team_id: &str, seqs: &[u64]) -> Result<Vec<Vec<u8>>> {
        let mut stmt =
            conn.prepare_cached("SELECT bytes FROM feed WHERE team_id = ?1 AND seq = ?2")?;
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            if let Some(bytes) = stmt
                .query_row(params![team_id, seq as i64], |r| r.get(0))
                .optional()?
            {
                out.push(bytes);
            }
        }
        Ok(out)
    }
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        actor: r.get(0)?,
        team_id: r.get(1)?,
        user_id: r.get(2)?,
        role: r.get(3)?,
        enrolled_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn feed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeedRow> {
    let hash: Vec<u8> = r.get(2)?;
    let mut h = [0u8; 32];
    if hash.len() == 32 {
        h.copy_from_slice(&hash);
    }
    let chain: Option<i64> = r.get(4)?;
    Ok(FeedRow {
        seq: r.get::<_, i64>(0)? as u64,
        doc_id: r.get(1)?,
        hash: h,
        bytes: r.get(3)?,
        exits: Vec::new(),
        chain: chain.map_or_else(|| legacy_chain(&h), |c| c as u64),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Under steady pushes a commit always lands while the timer's
    /// checkpoint runs, so no commit ever finds the whole WAL copied back
    /// and the log never starts over. Here a reader's snapshot stands in
    /// for that commit, step by step: it keeps the timer's checkpoint
    /// from copying the commit made after it. The WAL still starts over
    /// (the writer finishes the checkpoint after its next commit) instead
    /// of growing for as long as the commits go on.
    #[test]
    fn the_wal_starts_over_under_steady_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let mut db = Db::open(&path).unwrap();
        db.restart_frames = 64;
        db.checkpoint_in_background().unwrap();
        let team = crate::relay::create_team(&db, "Clinic", false)
            .unwrap()
            .team_id;
        let reader = open_conn(&path).unwrap();
        let mut seq = db
            .write()
            .query_row("SELECT count(*) FROM feed", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64;
        let mut commit = |i: u64| {
            seq += 1;
            let row = FeedRow {
                seq,
                doc_id: format!("task-{}", i % 50),
                hash: crate::relay::sha256(&i.to_le_bytes()),
                bytes: vec![7; 1500],
                exits: Vec::new(),
                chain: i,
            };
            db.append_feed_batch(&team, std::iter::once(&row)).unwrap();
            db.finish_checkpoint_if_asked();
        };
        let mut largest = 0;
        for i in 0..400 {
            reader.execute_batch("BEGIN").unwrap();
            reader
                .query_row("SELECT count(*) FROM feed", [], |r| r.get::<_, i64>(0))
                .unwrap();
            commit(2 * i);
            db.checkpoint().unwrap();
            reader.execute_batch("COMMIT").unwrap();
            commit(2 * i + 1);
            largest = largest.max(db.wal_bytes());
        }
        // 64 frames and two commits; without the restart the 800 commits
        // leave ~14 MB of WAL.
        assert!(largest < 1 << 20, "the WAL reached {largest} bytes");
    }

    /// A note cut short by a crash (the relay stopped mid-write) loses only
    /// itself: the next note, and the other team's, still read back.
    #[test]
    fn a_note_cut_short_loses_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("relay.db")).unwrap();
        let device = |b| Vouched {
            hash: [b; 32],
            by_relay: None,
        };
        let relay = |b| Vouched {
            hash: [b; 32],
            by_relay: Some("0a".repeat(16)),
        };
        db.note_vouched("t1", &[device(1)]).unwrap();
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&db.vouched)
            .unwrap();
        std::io::Write::write_all(&mut torn, b"t1 0202").unwrap();
        db.note_vouched("t1", &[device(3), relay(4)]).unwrap();
        // The relay's own, cut short in its last word.
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&db.vouched)
            .unwrap();
        let cut = format!("t1 {} relay 0a", hex::encode([6; 32]));
        std::io::Write::write_all(&mut torn, cut.as_bytes()).unwrap();
        db.note_vouched("t2", &[device(5)]).unwrap();
        assert_eq!(
            db.vouched("t1").unwrap(),
            vec![device(1), device(3), relay(4)]
        );
        assert_eq!(db.vouched("t2").unwrap(), vec![device(5)]);
        assert!(db.vouched("t3").unwrap().is_empty());
        // Read once, then kept up with what this relay notes.
        db.note_vouched("t3", &[device(7)]).unwrap();
        assert_eq!(db.vouched("t3").unwrap(), vec![device(7)]);
        // As a relay started again reads them.
        let again = Db::open(dir.path().join("relay.db")).unwrap();
        assert_eq!(again.vouched("t1").unwrap(), db.vouched("t1").unwrap());
        assert_eq!(again.vouched("t3").unwrap(), vec![device(7)]);
    }
}
