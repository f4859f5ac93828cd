//! Persistence of automerge documents: snapshot + later changes, compaction,
//! and a small in-memory cache of loaded documents.

use std::collections::HashMap;

use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use rusqlite::{params, Connection, OptionalExtension};

use crate::derive::FoldedTask;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::model::Timestamp;

/// Fold a document's changes into its snapshot once it has this many.
pub const COMPACT_AFTER: i64 = 32;

pub const TEAM_DOC: &str = "team";

/// A document from the cache, or else from the database (`None`: the
/// store does not have it). Give it back with [`DocCache::put`].
pub(crate) fn take_or_load(
    cache: &mut DocCache,
    conn: &Connection,
    doc_id: &str,
    actor: &ActorId,
) -> Result<Option<AutoCommit>> {
    match cache.take(doc_id) {
        Some(doc) => Ok(Some(doc)),
        None => load(conn, doc_id, actor),
    }
}

pub(crate) fn load(conn: &Connection, doc_id: &str, actor: &ActorId) -> Result<Option<AutoCommit>> {
    let snapshot: Option<Option<Vec<u8>>> = conn
        .prepare_cached(
            "SELECT s.bytes FROM documents d LEFT JOIN snapshots s ON s.doc_id = d.doc_id
             WHERE d.doc_id = ?1",
        )?
        .query_row([doc_id], |r| r.get(0))
        .optional()?;
    let Some(snapshot) = snapshot else {
        return Ok(None);
    };
    let mut doc = match snapshot {
        Some(bytes) => AutoCommit::load(&bytes)?,
        None => AutoCommit::new(),
    };
    let read = |sql: &str| -> Result<Vec<Change>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([doc_id], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|bytes| {
            Change::from_bytes(bytes?)
                .map_err(|_| Error::Corrupt("a stored change does not decode"))
        })
        .collect()
    };
    doc.apply_changes(read("SELECT bytes FROM changes WHERE doc_id = ?1")?)?;
    // This device's own changes not yet sent, kept only in the outbox until
    // the relay has them (see `commit_local`), oldest first. One whose
    // document lost what it builds on (set aside after a refusal, see
    // `set_aside`) waits there to be refused in turn: it is not part of the
    // document. A change in both tables (sent since, or queued by an older
    // version) is applied once.
    for change in
        read("SELECT bytes FROM outbox WHERE doc_id = ?1 AND refused_code IS NULL ORDER BY id")?
    {
        if change
            .deps()
            .iter()
            .all(|d| doc.get_change_by_hash(d).is_some())
        {
            doc.apply_changes([change])?;
        }
    }
    doc.set_actor(actor.clone());
    Ok(Some(doc))
}

pub(crate) fn insert_document(
    conn: &Connection,
    doc_id: &str,
    kind: &str,
    task_id: Option<&str>,
    generation: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO documents (doc_id, kind, task_id, generation) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (doc_id) DO UPDATE SET
           task_id = coalesce(documents.task_id, excluded.task_id),
           generation = max(documents.generation, excluded.generation)",
    )?
    .execute(params![doc_id, kind, task_id, generation])?;
    Ok(())
}

/// Keep a change that came from elsewhere. Returns false when it was
/// already stored, so re-delivery is harmless.
pub(crate) fn store_change(conn: &Connection, doc_id: &str, change: &Change) -> Result<bool> {
    let n = conn
        .prepare_cached("INSERT OR IGNORE INTO changes (doc_id, hash, bytes) VALUES (?1, ?2, ?3)")?
        .execute(params![doc_id, change.hash().as_ref(), change.raw_bytes()])?;
    Ok(n == 1)
}

/// Queue a change this device wrote for the relay.
pub(crate) fn enqueue(
    conn: &Connection,
    doc_id: &str,
    change: &Change,
    now: Timestamp,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox (doc_id, hash, bytes, queued_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        doc_id,
        change.hash().as_ref(),
        change.raw_bytes(),
        now
    ])?;
    Ok(())
}

/// Commit the document's pending ops as one change, and queue it for the
/// relay. The outbox row is where the change is kept until the relay has
/// it ([`keep_sent`] then moves it to `changes`): one copy, one page fewer
/// in the commit than keeping it in both.
pub(crate) fn commit_local(
    conn: &Connection,
    doc_id: &str,
    doc: &mut AutoCommit,
    now: Timestamp,
) -> Result<Option<ChangeHash>> {
    if doc.commit().is_none() {
        return Ok(None);
    }
    let Some(change) = doc.get_last_local_change() else {
        return Ok(None);
    };
    enqueue(conn, doc_id, &change, now)?;
    Ok(Some(change.hash()))
}

/// An outbox row is about to stop being unsent (the relay took it, or
/// refused it): keep its change with the document's other changes, where
/// loading and compaction find it. Not for a document this device no
/// longer holds.
pub(crate) fn keep_sent(conn: &Connection, outbox_id: i64, bytes: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO changes (doc_id, hash, bytes)
         SELECT o.doc_id, o.hash, o.bytes FROM outbox o
         WHERE o.id = ?1 AND o.bytes = ?2 AND o.refused_code IS NULL
           AND EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = o.doc_id)",
    )?
    .execute(params![outbox_id, bytes])?;
    Ok(())
}

/// Replace many small changes by one snapshot, so opening stays fast as
/// history grows. Changes still waiting for missing dependencies stay.
pub(crate) fn maybe_compact(conn: &Connection, doc_id: &str, doc: &mut AutoCommit) -> Result<()> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM changes WHERE doc_id = ?1")?
        .query_row([doc_id], |r| r.get(0))?;
    if n < COMPACT_AFTER {
        return Ok(());
    }
    compact(conn, doc_id, doc)
}

pub(crate) fn compact(conn: &Connection, doc_id: &str, doc: &mut AutoCommit) -> Result<()> {
    let hashes: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT hash FROM changes WHERE doc_id = ?1")?
        .query_map([doc_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    // Uncompressed: task documents are small, and inflating them on every
    // load cost more than the bytes saved.
    let snapshot = doc.save_nocompress();
    conn.prepare_cached("INSERT OR REPLACE INTO snapshots (doc_id, bytes) VALUES (?1, ?2)")?
        .execute(params![doc_id, snapshot])?;
    let mut delete = conn.prepare_cached("DELETE FROM changes WHERE doc_id = ?1 AND hash = ?2")?;
    for h in hashes {
        let Ok(hash) = ChangeHash::try_from(h.as_slice()) else {
            continue;
        };
        if doc.get_change_by_hash(&hash).is_some() {
            delete.execute(params![doc_id, h])?;
        }
    }
    Ok(())
}

pub(crate) fn delete_document(conn: &Connection, doc_id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM changes WHERE doc_id = ?1")?
        .execute([doc_id])?;
    conn.prepare_cached("DELETE FROM snapshots WHERE doc_id = ?1")?
        .execute([doc_id])?;
    conn.prepare_cached("DELETE FROM documents WHERE doc_id = ?1")?
        .execute([doc_id])?;
    Ok(())
}

/// A task document's events, and how many of its list entries did not
/// parse as one (left out, counted so the detail view can say so).
pub(crate) struct ParsedEvents {
    pub events: Vec<Event>,
    pub unreadable: usize,
    /// The task folded over `events` under the team as it is now, once a
    /// write has needed it. Forgotten when the team changes.
    pub folded: Option<FoldedTask>,
}

/// Loaded documents, least recently used dropped first.
pub(crate) struct DocCache {
    docs: HashMap<String, (AutoCommit, u64)>,
    /// Parsed events of a task document, valid at these heads only.
    events: HashMap<String, (Vec<ChangeHash>, ParsedEvents)>,
    tick: u64,
    capacity: usize,
}

impl DocCache {
    pub fn with_capacity(capacity: usize) -> Self {
        DocCache {
            docs: HashMap::new(),
            events: HashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn take(&mut self, doc_id: &str) -> Option<AutoCommit> {
        self.docs.remove(doc_id).map(|(d, _)| d)
    }

    pub fn put(&mut self, doc_id: &str, doc: AutoCommit) {
        self.tick += 1;
        if self.docs.len() >= self.capacity && !self.docs.contains_key(doc_id) {
            if let Some(oldest) = self
                .docs
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.docs.remove(&oldest);
                self.events.remove(&oldest);
            }
        }
        self.docs.insert(doc_id.to_owned(), (doc, self.tick));
    }

    pub fn remove(&mut self, doc_id: &str) {
        self.docs.remove(doc_id);
        self.events.remove(doc_id);
    }

    pub fn clear(&mut self) {
        self.docs.clear();
        self.events.clear();
    }

    /// The document's events as parsed at `heads`: from the cache if still
    /// current (taken out, not copied; put back with
    /// [`DocCache::put_events`]), else parsed from `doc`.
    pub fn take_events(
        &mut self,
        doc_id: &str,
        doc: &AutoCommit,
        heads: &[ChangeHash],
    ) -> ParsedEvents {
        match self.events.remove(doc_id) {
            Some((at, parsed)) if at.as_slice() == heads => parsed,
            _ => {
                let (events, unreadable) = crate::task_doc::events(doc);
                ParsedEvents {
                    events,
                    unreadable,
                    folded: None,
                }
            }
        }
    }

    /// The team changed: a fold made under the old one may not be what
    /// the new one gives.
    pub fn forget_folds(&mut self) {
        for (_, parsed) in self.events.values_mut() {
            parsed.folded = None;
        }
    }

    pub fn put_events(&mut self, doc_id: &str, heads: Vec<ChangeHash>, events: ParsedEvents) {
        if self.docs.contains_key(doc_id) {
            self.events.insert(doc_id.to_owned(), (heads, events));
        }
    }
}
