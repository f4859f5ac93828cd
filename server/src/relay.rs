//! The relay's logic, without HTTP: per-team state rebuilt from the feed,
//! what a push may store, what a device may pull, enrolment.
//!
//! Each loaded team has its state behind a mutex and a two-stage feed
//! writer. Pushes queue for its first thread, which takes every push
//! waiting as one batch and validates each change against the team's state
//! (the core's own derivation decides who may read and write what). The
//! second thread appends the accepted changes of every batch waiting to the
//! feed in one SQLite transaction, synced to disk, then takes them into the
//! feed in memory, wakes the long-polls that may read them and answers the
//! pushes. So concurrent pushes share one commit, and the next batch is
//! validated while the last one is being synced.

use axum::body::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use handoff_core::access::{losing_sight, may_act, may_change_team, may_read_task};
use handoff_core::derive::{derive_outcomes, TaskState};
use handoff_core::event::{Event, EventId};
use handoff_core::store::TEAM_DOC;
use handoff_core::sync::wire::{self, DocChange, RefusalCode, Verdict, MAX_CHANGE, MAX_NEW_EVENTS};
use handoff_core::task_doc::{
    self, doc_id_of, events_in_change, read_change, split_doc_id, ChangeRead, Shape,
};
use handoff_core::team::{self, Team, TeamWriter};
use handoff_core::{is_valid_id, Device, Member, Role};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::db::{Db, DeviceRow, FeedRow, InviteRow, RetiredDoc, TeamRow};
use crate::error::{Error, Result};

/// Changes per pull page, and bytes.
pub const PAGE_CHANGES: usize = 1000;
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Feed entries one pull looks at before answering (most may be invisible).
const PAGE_SCAN: usize = 20_000;
/// Bytes of each team's newest changes kept in memory: live devices pull
/// only these, without touching SQLite.
const RECENT_BYTES: usize = 4 * 1024 * 1024;
/// Most pushes one feed write takes together.
const MAX_BATCH: usize = 256;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Invite codes are read aloud and typed: dashes and case do not matter.
pub fn normalize_invite(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// An authenticated device, as a request sees it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: String,
    pub team_id: String,
    pub user_id: String,
}

/// What the relay knows of one task document.
struct DocEntry {
    events: Vec<Event>,
    state: Option<TaskState>,
    /// The lists its layouts made for events: every later change may only
    /// append to one of them (`task_doc::Shape`). One, but for a redacted
    /// generation laid out by two delegators at the same time.
    events_lists: Vec<String>,
    /// Each device's last automerge sequence number in this document. A
    /// device's next change must take the next one: two changes with one
    /// number would make automerge refuse the second on every phone, and
    /// with it every sync round that pulled it.
    seqs: HashMap<Arc<str>, u64>,
    /// Members who lost sight of the task (reassigned, claimed by someone
    /// else), each with the seq of the change that took it from them: they
    /// are still sent every entry up to it, so their phones learn where it
    /// went (`access::losing_sight`).
    exits: Vec<(Arc<str>, u64)>,
}

impl DocEntry {
    fn new() -> DocEntry {
        DocEntry {
            events: Vec::new(),
            state: None,
            events_lists: Vec::new(),
            seqs: HashMap::new(),
            exits: Vec::new(),
        }
    }

    /// These members lost sight of the task with the change at `seq`.
    fn lost_sight(&mut self, users: Vec<String>, seq: u64) {
        for user in users {
            match self.exits.iter_mut().find(|(u, _)| **u == *user) {
                Some((_, at)) => *at = (*at).max(seq),
                None => self.exits.push((Arc::from(user), seq)),
            }
        }
    }

    /// The seq up to which `user`, who lost sight of the task, is sent it.
    fn exit_of(&self, user: &str) -> Option<u64> {
        self.exits
            .iter()
            .find_map(|(u, seq)| (**u == *user).then_some(*seq))
    }

    /// Take a layout's events list as one the document's events go to.
    fn laid_out(&mut self, shape: &Shape) {
        if let Shape::Layout { events_list } = shape {
            if !self.events_lists.contains(events_list) {
                self.events_lists.push(events_list.clone());
            }
        }
    }

    /// Take a change's sequence number as its device's last.
    fn count(&mut self, actor: Arc<str>, seq: u64) {
        let last = self.seqs.entry(actor).or_insert(0);
        *last = (*last).max(seq);
    }
}

struct FeedEntry {
    doc: Arc<str>,
    size: u32,
    /// The device that wrote it: it is not sent back to that device.
    actor: Arc<str>,
}

/// One team, rebuilt from its feed when first needed.
pub struct TeamState {
    team_doc: AutoCommit,
    team: Team,
    docs: HashMap<Arc<str>, DocEntry>,
    /// Each feed entry's document, size and author; index = seq - 1.
    feed: Vec<FeedEntry>,
    /// Changes admitted and given seqs after `head`, not yet committed.
    uncommitted: u64,
    /// Each document's feed entries, oldest first (for repair).
    seqs_by_doc: HashMap<Arc<str>, Vec<u64>>,
    actors: HashMap<String, Arc<str>>,
    /// Every change in the feed, with its document: a change may only
    /// build on changes of its own document.
    hashes: HashMap<ChangeHash, Arc<str>>,
    /// The bytes of the newest changes, seqs `head - len + 1 ..= head`.
    recent: VecDeque<Arc<[u8]>>,
    recent_bytes: usize,
    /// Devices waiting in a long-poll, by actor: each is woken only by
    /// changes it may read.
    waiters: HashMap<Arc<str>, Waiter>,
    /// Each task's newest document generation. A redaction re-creates a
    /// task as `<task>.<generation>`; older generations are retired.
    generations: HashMap<String, i64>,
    /// The events of retired generations, by task, as digests of their
    /// scrubbed form: a device moving its copy to the newer document may
    /// bring them along, unchanged but for the scrubbing.
    retired_events: HashMap<String, HashMap<EventId, [u8; 32]>>,
    /// Set by admitting the first change of a task's newer generation: the
    /// relay's own change carrying over the events that generation lacks,
    /// and the older documents to delete once it is committed.
    carry_over: Vec<(String, Change)>,
    retiring: Vec<Arc<str>>,
    /// Set by admitting a change that takes a task from some members: who,
    /// for the feed row that change is given next.
    exiting: Vec<String>,
}

struct Waiter {
    user: String,
    wake: watch::Sender<u64>,
}

fn refuse(code: RefusalCode, reason: &str) -> Verdict {
    Verdict::Refused {
        code,
        reason: reason.to_owned(),
    }
}

/// A pushed change, checked for form and decoded before it queues for the
/// feed writer (so that this work runs on the request's own thread).
pub struct Incoming {
    doc: String,
    /// The change and what it does to its document (a team change: no
    /// events), or why it cannot be stored.
    decoded: std::result::Result<(Change, ChangeRead), Verdict>,
}

impl Incoming {
    pub fn decode(change: DocChange) -> Incoming {
        let decoded = if change.bytes.len() > MAX_CHANGE {
            Err(refuse(RefusalCode::TooLarge, "the change is too large"))
        } else if !is_valid_id(&change.doc) {
            Err(refuse(RefusalCode::InvalidChange, "bad document id"))
        } else {
            match wire::decode_change(change.bytes).ok_or(()) {
                Ok(c) if change.doc == TEAM_DOC => Ok((
                    c,
                    ChangeRead {
                        events: Vec::new(),
                        task_id: None,
                        generation: None,
                        shape: Shape::Appends { list: None },
                    },
                )),
                Ok(c) => {
                    let read = read_change(&c);
                    Ok((c, read))
                }
                Err(()) => Err(refuse(
                    RefusalCode::InvalidChange,
                    "not a plain automerge change",
                )),
            }
        };
        Incoming {
            doc: change.doc,
            decoded,
        }
    }
}

/// One feed entry as a pull sends it: the bytes when they are in memory.
pub struct PageEntry {
    pub seq: u64,
    pub doc: Arc<str>,
    pub bytes: Option<Arc<[u8]>>,
}

impl TeamState {
    fn load(db: &Db, row: &TeamRow) -> Result<TeamState> {
        let relay_actor = ActorId::from(
            hex::decode(&row.relay_actor)
                .map_err(|_| Error::Storage("relay actor is not hex".into()))?,
        );
        let mut st = TeamState {
            team_doc: AutoCommit::new(),
            team: Team::default(),
            docs: HashMap::new(),
            feed: Vec::new(),
            uncommitted: 0,
            seqs_by_doc: HashMap::new(),
            actors: HashMap::new(),
            hashes: HashMap::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            waiters: HashMap::new(),
            generations: HashMap::new(),
            retired_events: HashMap::new(),
            carry_over: Vec::new(),
            retiring: Vec::new(),
            exiting: Vec::new(),
        };
        st.retired_events = db.read(|conn| Db::retired_events(conn, &row.team_id))?;
        let mut team_changes = Vec::new();
        let mut failed = None;
        db.read(|conn| {
            Db::feed(conn, &row.team_id, |r| {
                // Rows of retired documents are gone: keep their seqs.
                while (st.feed.len() as u64) + 1 < r.seq {
                    st.push_retired_entry();
                }
                let doc: Arc<str> = st.doc_key(&r.doc_id);
                let size = r.bytes.len() as u32;
                st.hashes.insert(ChangeHash(r.hash), doc.clone());
                st.remember(Arc::from(r.bytes.as_slice()));
                let change = Change::from_bytes(r.bytes);
                let actor = match &change {
                    Ok(c) => st.actor_key(&c.actor_id().to_hex_string()),
                    Err(_) => st.actor_key(""),
                };
                st.feed.push(FeedEntry {
                    doc: doc.clone(),
                    size,
                    actor: actor.clone(),
                });
                st.seqs_by_doc.entry(doc.clone()).or_default().push(r.seq);
                match change {
                    Ok(c) if &*doc == TEAM_DOC => team_changes.push(c),
                    Ok(c) => {
                        let (task, generation) = split_doc_id(&doc);
                        let newest = st.generations.entry(task.to_owned()).or_insert(0);
                        *newest = (*newest).max(generation);
                        let entry = st.docs.entry(doc.clone()).or_insert_with(DocEntry::new);
                        entry.count(actor, c.seq());
                        let read = read_change(&c);
                        entry.laid_out(&read.shape);
                        entry.events.extend(read.events);
                    }
                    Err(_) => failed = Some(r.seq),
                }
            })
        })?;
        if let Some(seq) = failed {
            return Err(Error::Storage(format!("feed entry {seq} does not decode")));
        }
        st.team_doc.apply_changes(team_changes)?;
        st.team_doc.set_actor(relay_actor);
        st.team = Team::read(&st.team_doc);
        st.rederive_all();
        // Who lost sight of which task, as admitting each change found.
        for (doc, user, seq) in db.read(|conn| Db::exits(conn, &row.team_id))? {
            if let Some(entry) = st.docs.get_mut(doc.as_str()) {
                entry.lost_sight(vec![user], seq);
            }
        }
        // The relay stopped between committing a newer generation and
        // deleting the older: delete it now.
        let superseded: Vec<Arc<str>> = st
            .docs
            .keys()
            .filter(|doc| {
                let (task, generation) = split_doc_id(doc);
                st.generations.get(task).is_some_and(|&g| g > generation)
            })
            .cloned()
            .collect();
        if !superseded.is_empty() {
            let plan = st.retirement_plan(&superseded);
            let hashes = db.retire_docs(&row.team_id, &plan)?;
            st.forget_retired(&superseded, &hashes);
        }
        Ok(st)
    }

    /// A feed entry whose document was retired: nobody reads it.
    fn push_retired_entry(&mut self) {
        let none = self.actor_key("");
        self.feed.push(FeedEntry {
            doc: Arc::from(""),
            size: 0,
            actor: none,
        });
        self.remember(Arc::from(&[][..]));
    }

    /// What the database must delete and keep for these documents.
    fn retirement_plan(&self, docs: &[Arc<str>]) -> Vec<RetiredDoc> {
        docs.iter()
            .map(|doc| RetiredDoc {
                doc_id: doc.to_string(),
                task_id: split_doc_id(doc).0.to_owned(),
                seqs: self.seqs_by_doc.get(doc).cloned().unwrap_or_default(),
                events: self
                    .docs
                    .get(doc)
                    .map(|e| {
                        e.events
                            .iter()
                            .map(|e| (e.id.to_string(), scrubbed_digest(e)))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Drop retired documents from memory once their rows are deleted:
    /// their events (patient text included), their bytes, their hashes.
    /// Their event ids stay, for devices that still carry them over.
    fn forget_retired(&mut self, docs: &[Arc<str>], hashes: &[[u8; 32]]) {
        let first_recent = self.head() + 1 - self.recent.len() as u64;
        let none = self.actor_key("");
        let retired: Arc<str> = Arc::from("");
        for doc in docs {
            let task = split_doc_id(doc).0.to_owned();
            if let Some(entry) = self.docs.remove(doc) {
                let digests = entry.events.iter().map(scrubbed_digest);
                self.retired_events
                    .entry(task)
                    .or_default()
                    .extend(entry.events.iter().map(|e| e.id.clone()).zip(digests));
            }
            for seq in self.seqs_by_doc.remove(doc).unwrap_or_default() {
                if let Some(entry) = self.feed.get_mut(seq as usize - 1) {
                    *entry = FeedEntry {
                        doc: retired.clone(),
                        size: 0,
                        actor: none.clone(),
                    };
                }
                if let Some(bytes) = seq
                    .checked_sub(first_recent)
                    .and_then(|i| self.recent.get_mut(i as usize))
                {
                    self.recent_bytes -= bytes.len();
                    *bytes = Arc::from(&[][..]);
                }
            }
        }
        for h in hashes {
            self.hashes.remove(&ChangeHash(*h));
        }
    }

    /// Share one allocation per document id.
    fn doc_key(&self, doc: &str) -> Arc<str> {
        match self.seqs_by_doc.get_key_value(doc) {
            Some((k, _)) => k.clone(),
            None => Arc::from(doc),
        }
    }

    fn actor_key(&mut self, actor: &str) -> Arc<str> {
        self.actors
            .entry(actor.to_owned())
            .or_insert_with(|| Arc::from(actor))
            .clone()
    }

    fn rederive_all(&mut self) {
        for (doc, entry) in &mut self.docs {
            entry.state = derive(doc, &entry.events, &self.team);
        }
    }

    pub fn head(&self) -> u64 {
        self.feed.len() as u64
    }

    pub fn is_active_member(&self, user: &str) -> bool {
        self.team.member(user).is_some_and(|m| m.active)
    }

    /// Keep the newest change's bytes, forgetting the oldest beyond the budget.
    fn remember(&mut self, bytes: Arc<[u8]>) {
        self.recent_bytes += bytes.len();
        self.recent.push_back(bytes);
        while self.recent_bytes > RECENT_BYTES && self.recent.len() > 1 {
            if let Some(old) = self.recent.pop_front() {
                self.recent_bytes -= old.len();
            }
        }
    }

    /// The feed entries at `seqs`, with their bytes where they are in memory.
    pub fn page(&self, seqs: &[u64]) -> Vec<PageEntry> {
        let first_recent = self.head() + 1 - self.recent.len() as u64;
        seqs.iter()
            .filter_map(|&seq| {
                let entry = self.feed.get(usize::try_from(seq).ok()?.checked_sub(1)?)?;
                let bytes = seq
                    .checked_sub(first_recent)
                    .and_then(|i| self.recent.get(i as usize))
                    .cloned();
                Some(PageEntry {
                    seq,
                    doc: entry.doc.clone(),
                    bytes,
                })
            })
            .collect()
    }

    /// Wait for news for this device: the receiver changes when a change
    /// it may read (and did not write) enters the feed.
    pub fn wait(&mut self, caller: &Caller) -> watch::Receiver<u64> {
        let head = self.head();
        let actor = self.actor_key(&caller.actor);
        self.waiters
            .entry(actor)
            .or_insert_with(|| Waiter {
                user: caller.user_id.clone(),
                wake: watch::channel(head).0,
            })
            .wake
            .subscribe()
    }

    /// May this user read this document now?
    fn visible(&self, doc: &str, user: &str) -> bool {
        doc == TEAM_DOC || self.current(doc).is_some_and(|e| self.reads(e, user))
    }

    /// May this user be sent the feed entry `seq` of `doc`: they may read
    /// the document now, or the entry came before (or is) the change that
    /// took the task from them.
    fn delivers(&self, seq: u64, doc: &str, user: &str) -> bool {
        doc == TEAM_DOC
            || self.current(doc).is_some_and(|e| {
                self.reads(e, user)
                    || (e.exit_of(user).is_some_and(|exit| seq <= exit)
                        && self.team.member(user).is_some_and(|m| m.active))
            })
    }

    /// A task document, unless a newer generation replaced it: a redacted
    /// task's older document is hidden from the moment its newer one is
    /// admitted (it is deleted once that is committed).
    fn current(&self, doc: &str) -> Option<&DocEntry> {
        let (task, generation) = split_doc_id(doc);
        if self.generations.get(task).is_some_and(|&g| g > generation) {
            return None;
        }
        self.docs.get(doc)
    }

    fn reads(&self, entry: &DocEntry, user: &str) -> bool {
        entry
            .state
            .as_ref()
            .is_some_and(|state| may_read_task(&self.team, user, state))
    }

    /// The feed entries after `cursor` this user may read: their seqs, and
    /// the cursor to continue from.
    pub fn visible_since(&self, cursor: u64, caller: &Caller) -> (Vec<u64>, u64, bool) {
        let head = self.head();
        let mut seqs = Vec::new();
        let mut bytes = 0usize;
        let mut seq = cursor;
        let mut scanned = 0;
        while seq < head {
            if seqs.len() >= PAGE_CHANGES || bytes >= PAGE_BYTES || scanned >= PAGE_SCAN {
                break;
            }
            let entry = &self.feed[seq as usize];
            seq += 1;
            scanned += 1;
            // A device has what it wrote itself.
            if *entry.actor != *caller.actor && self.delivers(seq, &entry.doc, &caller.user_id) {
                seqs.push(seq);
                bytes += entry.size as usize;
            }
        }
        (seqs, seq, seq < head)
    }

    /// Check one pushed change against the team's rules; on success, take
    /// it into the state (`Ok(true)`; the caller writes its feed row).
    /// `Ok(false)`: the relay already has it.
    fn admit(&mut self, caller: &Caller, change: &Incoming) -> std::result::Result<bool, Verdict> {
        // Tests of the panic path set this on a debug build: no input is
        // known to make admission panic.
        #[cfg(debug_assertions)]
        if std::env::var("HANDOFF_TEST_PANIC_ON_DOC").is_ok_and(|d| d == change.doc) {
            #[allow(clippy::panic)]
            {
                panic!("admission panic injected by a test");
            }
        }
        let (c, read) = change.decoded.as_ref().map_err(Clone::clone)?;
        let new_events = &read.events;
        let hash = c.hash();
        if self.hashes.contains_key(&hash) {
            return Ok(false);
        }
        if c.actor_id().to_hex_string() != caller.actor {
            return Err(refuse(
                RefusalCode::ActorMismatch,
                "the change was written by another device",
            ));
        }
        let (task, generation) = split_doc_id(&change.doc);
        let newest = match change.doc == TEAM_DOC {
            true => None,
            false => self.generations.get(task).copied(),
        };
        if newest.is_some_and(|newest| generation < newest) {
            return Err(refuse(
                RefusalCode::Retired,
                "the task's patient details were removed and it moved to a new document",
            ));
        }
        if change.doc != TEAM_DOC && generation > newest.map_or(0, |n| n + 1) {
            return Err(refuse(
                RefusalCode::InvalidChange,
                "no such generation of this task",
            ));
        }
        if let Shape::Malformed(why) = &read.shape {
            return Err(refuse(RefusalCode::InvalidChange, why));
        }
        // A document's first change must lay out what its id says, once;
        // a redacted generation's may come twice: two delegators removed
        // the patient's details at the same time, each laying it out.
        let laid_out_again = change.doc != TEAM_DOC
            && c.deps().is_empty()
            && self.docs.contains_key(change.doc.as_str());
        if change.doc != TEAM_DOC && c.deps().is_empty() {
            let laid_out = (read.task_id.as_deref(), read.generation);
            if (laid_out_again && generation == 0) || laid_out != (Some(task), Some(generation)) {
                return Err(refuse(
                    RefusalCode::InvalidChange,
                    "a task document starts once, with its own id and generation",
                ));
            }
        }
        // A newer generation of a known task is a redaction: only someone
        // who may delegate, and may see the task, re-creates it. Laying out
        // the current generation again is one too.
        let redaction = newest.filter(|&newest| generation > newest);
        let redacting = match redaction {
            Some(newest) => Some(newest),
            None if laid_out_again => Some(generation),
            None => None,
        };
        if let Some(newest) = redacting {
            let current = self
                .docs
                .get(doc_id_of(task, newest).as_str())
                .and_then(|e| e.state.as_ref());
            let allowed = self.team.permissions(&caller.user_id).may_delegate
                && current.is_some_and(|s| may_read_task(&self.team, &caller.user_id, s));
            if !allowed {
                return Err(refuse(
                    RefusalCode::Forbidden,
                    "only a delegator who sees the task may remove its patient details",
                ));
            }
        }
        if c.deps().iter().any(|d| !self.hashes.contains_key(d)) {
            return Err(refuse(
                RefusalCode::MissingDependencies,
                "it builds on a change the relay does not have",
            ));
        }
        if c.deps()
            .iter()
            .any(|d| self.hashes.get(d).is_some_and(|of| **of != *change.doc))
        {
            return Err(refuse(
                RefusalCode::InvalidChange,
                "it builds on a change of another document",
            ));
        }
        if change.doc == TEAM_DOC {
            if !may_change_team(&self.team, &caller.user_id) {
                return Err(refuse(
                    RefusalCode::Forbidden,
                    "your role may not change the team",
                ));
            }
            if !team::change_fits(c, &self.team_doc) {
                return Err(refuse(
                    RefusalCode::InvalidChange,
                    "a change to the team only sets its name, members, roles, templates or policy",
                ));
            }
            let mut doc = self.team_doc.clone();
            if doc.apply_changes([c.clone()]).is_err() {
                return Err(refuse(
                    RefusalCode::InvalidChange,
                    "the change does not apply",
                ));
            }
            let team = Team::read(&doc);
            if team.devices != self.team.devices {
                return Err(refuse(
                    RefusalCode::Forbidden,
                    "only the relay enrols devices",
                ));
            }
            self.team_doc = doc;
            self.team = team;
            self.rederive_all();
        } else {
            // After its first change, a task document only grows by events
            // appended to the list that change made; nothing but a first
            // change starts one (not even a change with no operations).
            if let Shape::Appends { list } = &read.shape {
                let own = self
                    .docs
                    .get(change.doc.as_str())
                    .map_or(&[][..], |e| e.events_lists.as_slice());
                let fits = match list {
                    _ if own.is_empty() => false,
                    Some(list) => own.contains(list),
                    None => true,
                };
                if !fits {
                    return Err(refuse(
                        RefusalCode::InvalidChange,
                        "a change to a task document only appends events to its list",
                    ));
                }
            }
            let device = self.actor_key(&caller.actor);
            let last = self
                .docs
                .get(change.doc.as_str())
                .and_then(|e| e.seqs.get(&device))
                .copied()
                .unwrap_or(0);
            if c.seq() != last + 1 {
                return Err(refuse(
                    RefusalCode::InvalidChange,
                    "it does not follow the device's last change to this document",
                ));
            }
            // Events from other devices come only as copies into a redacted
            // task's next generation, of events the relay already has.
            if new_events.iter().any(|e| {
                e.id.actor != caller.actor && !self.known_in_earlier_generation(&change.doc, e)
            }) {
                return Err(refuse(
                    RefusalCode::ActorMismatch,
                    "an event in it names another device",
                ));
            }
            let key = self.doc_key(&change.doc);
            {
                let entry = self.docs.get(&key);
                let events: &[Event] = entry.map_or(&[], |e| e.events.as_slice());
                let prior = entry.and_then(|e| e.state.as_ref());
                // Write access is judged on the task as its author saw it (the
                // events the new ones build on): a claim that lost a race to
                // another claim is still the front desk's to make, and is kept
                // so that both phones derive who won. Usually the author had
                // seen every event, and that task is the one already derived.
                let past = causal_past(events, new_events);
                let derived;
                let seen = if new_events.is_empty() || past.len() == events.len() {
                    prior
                } else {
                    let past: Vec<Event> = past.iter().map(|&i| events[i].clone()).collect();
                    derived = derive(&change.doc, &past, &self.team);
                    derived.as_ref()
                };
                let may_write = match (seen, prior) {
                    // Laying out a redacted generation: judged above.
                    _ if redacting.is_some() => true,
                    (Some(seen), _) => may_read_task(&self.team, &caller.user_id, seen),
                    // A new task: its own `created` event decides below.
                    (None, None) => true,
                    (None, Some(_)) => false,
                };
                if !may_write {
                    return Err(refuse(
                        RefusalCode::Forbidden,
                        "this task is not yours to change",
                    ));
                }
                // The door: what people typed fits the limits a phone keeps,
                // and the author's role allows the action, judged once, here,
                // with the team as it is now. Copies of events the relay
                // already took in (a redacted task's next generation) passed it.
                let fresh: Vec<&Event> = new_events
                    .iter()
                    .filter(|e| !self.known_in_earlier_generation(&change.doc, e))
                    .collect();
                if fresh.len() > MAX_NEW_EVENTS {
                    return Err(refuse(
                        RefusalCode::InvalidChange,
                        "a change carries at most 16 new events",
                    ));
                }
                for e in &fresh {
                    if let Err(e) = e.action.check_input() {
                        return Err(refuse(RefusalCode::InvalidChange, &e.to_string()));
                    }
                    // The fold puts an event after what it builds on only if
                    // its Lamport time is higher; the door judges it on those.
                    let before = |d: &EventId| {
                        events
                            .iter()
                            .chain(new_events)
                            .find(|x| x.id == *d)
                            .is_none_or(|x| x.lt < e.lt)
                    };
                    if !e.deps.iter().all(before) {
                        return Err(refuse(
                            RefusalCode::InvalidChange,
                            "an event must come after the events it builds on",
                        ));
                    }
                }
                let judged = match (fresh.as_slice(), new_events.len()) {
                    // One event (what a phone writes): the task it builds on
                    // is `seen`.
                    ([only], 1) => may_act(&self.team, seen, only),
                    // Several (a migration's carried-over events, or a
                    // hand-made change): each on the task as its own author
                    // saw it, the change's earlier events included, so none
                    // passes on a task before a claim or a creation it made.
                    _ => {
                        let all: Vec<Event> = events.iter().chain(new_events).cloned().collect();
                        fresh.iter().try_for_each(|e| {
                            let past: Vec<Event> = causal_past(&all, std::slice::from_ref(*e))
                                .into_iter()
                                .map(|i| all[i].clone())
                                .collect();
                            let saw = derive(&change.doc, &past, &self.team);
                            may_act(&self.team, saw.as_ref(), e)
                        })
                    }
                };
                if let Err(refusal) = judged {
                    return Err(refuse(RefusalCode::NotPermitted, &refusal.to_string()));
                }
            }
            // Taken out to grow in place; put back as it was on a refusal.
            let mut entry = self.docs.remove(&key).unwrap_or_else(DocEntry::new);
            let before = entry.events.len();
            entry.events.extend(new_events.iter().cloned());
            let state = derive(&change.doc, &entry.events, &self.team);
            let retiring = match redaction {
                Some(_) => self.retirement(&key, &entry.events, c).map(Some),
                None => Ok(None),
            };
            let retiring = match retiring {
                Ok(r) => r,
                Err(verdict) => {
                    entry.events.truncate(before);
                    if before > 0 || entry.state.is_some() {
                        self.docs.insert(key, entry);
                    }
                    return Err(verdict);
                }
            };
            self.exiting = match &entry.state {
                Some(before) if moved(before, state.as_ref()) => {
                    losing_sight(&self.team, before, state.as_ref())
                }
                _ => Vec::new(),
            };
            entry.state = state;
            entry.laid_out(&read.shape);
            entry.count(device, c.seq());
            self.docs.insert(key, entry);
            let newest = self
                .generations
                .entry(task.to_owned())
                .or_insert(generation);
            *newest = (*newest).max(generation);
            if let Some((older, carried)) = retiring {
                // Whoever lost sight of an older generation is sent this
                // layout too, so that their phone retires the older document
                // (and the patient details removed from it) and does not
                // keep it. The layout holds the task without them.
                for doc in &older {
                    if let Some(e) = self.docs.get(doc) {
                        self.exiting
                            .extend(e.exits.iter().map(|(u, _)| u.to_string()));
                    }
                }
                self.retiring.extend(older);
                self.carry_over.extend(carried);
            }
        }
        Ok(true)
    }

    /// `doc` is a task's new generation, holding `events`, and `root` its
    /// first change: the older generations to retire, and the relay's own
    /// change carrying over (scrubbed) any event of theirs the redaction
    /// missed, so that nothing the relay acknowledged is lost with them.
    #[allow(clippy::type_complexity)]
    fn retirement(
        &self,
        doc: &str,
        events: &[Event],
        root: &Change,
    ) -> std::result::Result<(Vec<Arc<str>>, Option<(String, Change)>), Verdict> {
        let (task, generation) = split_doc_id(doc);
        let older: Vec<Arc<str>> = (0..generation)
            .filter_map(|g| {
                self.docs
                    .get_key_value(doc_id_of(task, g).as_str())
                    .map(|(k, _)| k.clone())
            })
            .collect();
        let mut have: HashSet<EventId> = events.iter().map(|e| e.id.clone()).collect();
        let mut missed = Vec::new();
        for old in &older {
            for e in self.docs.get(old).map_or(&[][..], |e| e.events.as_slice()) {
                if have.insert(e.id.clone()) {
                    missed.push(e.scrubbed());
                }
            }
        }
        let mut carry_over = None;
        if !missed.is_empty() {
            let relay_actor = self.team_doc.get_actor().clone();
            let carried = (|| {
                let mut am = AutoCommit::new();
                am.apply_changes([root.clone()]).ok()?;
                am.set_actor(relay_actor);
                for e in &missed {
                    task_doc::append(&mut am, e).ok()?;
                }
                am.commit()?;
                am.get_last_local_change()
            })();
            let Some(carried) = carried else {
                return Err(refuse(
                    RefusalCode::InvalidChange,
                    "the new document does not take the older one's events",
                ));
            };
            carry_over = Some((doc.to_owned(), carried));
        }
        Ok((older, carry_over))
    }

    /// Is `event` (written by another device) a copy of one in an earlier
    /// generation of its task, unchanged or scrubbed?
    fn known_in_earlier_generation(&self, doc: &str, event: &Event) -> bool {
        let (task, generation) = split_doc_id(doc);
        let retired = self
            .retired_events
            .get(task)
            .and_then(|events| events.get(&event.id))
            .is_some_and(|digest| *digest == digest_of(event));
        retired
            || (0..generation).any(|g| {
                self.docs
                    .get(doc_id_of(task, g).as_str())
                    .and_then(|e| e.events.iter().find(|x| x.id == event.id))
                    .is_some_and(|x| x == event || x.scrubbed() == *event)
            })
    }

    /// Commit what the relay wrote into the team document as its own change,
    /// as the next feed row (run alone in the feed writer: nothing is
    /// waiting to be committed).
    fn commit_team_change(&mut self, what: &str) -> Result<FeedRow> {
        self.team_doc.commit();
        let change = self
            .team_doc
            .get_last_local_change()
            .ok_or_else(|| Error::Storage(format!("{what} wrote nothing")))?;
        Ok(FeedRow {
            seq: self.head() + 1,
            doc_id: TEAM_DOC.into(),
            hash: change.hash().0,
            bytes: change.raw_bytes().to_vec(),
            exits: Vec::new(),
        })
    }

    /// Give a change the next seq (it is committed with the batch).
    fn next_row(&mut self, doc: String, c: &Change) -> FeedRow {
        let mut row = FeedRow {
            seq: self.head() + self.uncommitted + 1,
            doc_id: doc,
            hash: c.hash().0,
            bytes: c.raw_bytes().to_vec(),
            exits: std::mem::take(&mut self.exiting),
        };
        self.uncommitted += 1;
        // Later changes may build on it, and a second copy of it is a
        // duplicate (answered only once it is committed: answers go out in
        // order).
        let key = self.doc_key(&row.doc_id);
        if !row.exits.is_empty() {
            match self.docs.get_mut(&key) {
                Some(entry) => entry.lost_sight(row.exits.clone(), row.seq),
                None => row.exits.clear(),
            }
        }
        self.hashes.insert(c.hash(), key);
        row
    }

    /// Take the relay's own carry-over change into the state, as `admit`
    /// takes a device's.
    fn admit_carry_over(&mut self, doc: &str, c: &Change) {
        let key = self.doc_key(doc);
        let relay = self.actor_key(&c.actor_id().to_hex_string());
        let team = &self.team;
        if let Some(entry) = self.docs.get_mut(&key) {
            entry.count(relay, c.seq());
            entry.events.extend(events_in_change(c));
            entry.state = derive(doc, &entry.events, team);
        }
    }

    /// Take committed rows into the feed (each with the device that wrote
    /// it) and wake the long-polls.
    fn record(&mut self, rows: &[(FeedRow, Arc<str>)]) {
        for (r, actor) in rows {
            let doc = self.doc_key(&r.doc_id);
            self.seqs_by_doc.entry(doc.clone()).or_default().push(r.seq);
            self.hashes.insert(ChangeHash(r.hash), doc.clone());
            self.feed.push(FeedEntry {
                doc,
                size: r.bytes.len() as u32,
                actor: actor.clone(),
            });
            self.remember(Arc::from(r.bytes.as_slice()));
        }
        let head = self.head();
        let mut gone = Vec::new();
        for (actor, w) in &self.waiters {
            if w.wake.receiver_count() == 0 {
                gone.push(actor.clone());
            } else if rows
                .iter()
                .any(|(r, author)| author != actor && self.delivers(r.seq, &r.doc_id, &w.user))
            {
                w.wake.send_replace(head);
            }
        }
        for actor in gone {
            self.waiters.remove(&actor);
        }
    }
}

/// Did a change move the task between people (the fields reading hangs on)?
fn moved(before: &TaskState, after: Option<&TaskState>) -> bool {
    after.is_none_or(|a| {
        a.assignee != before.assignee
            || a.pool != before.pool
            || a.created_by != before.created_by
            || a.handoff.route_result_to != before.handoff.route_result_to
    })
}

/// A task as the relay keeps it: its state, without the history (nothing
/// on the relay reads it, and the relay re-derives a task at every change
/// it takes in).
fn derive(doc: &str, events: &[Event], team: &Team) -> Option<TaskState> {
    derive_outcomes(doc, events, team).0
}

/// The positions in `events` of the events `new` build on, transitively,
/// in list order.
fn causal_past(events: &[Event], new: &[Event]) -> Vec<usize> {
    let by_id: HashMap<&handoff_core::EventId, usize> =
        events.iter().enumerate().map(|(i, e)| (&e.id, i)).collect();
    let mut seen = vec![false; events.len()];
    let mut stack: Vec<&handoff_core::EventId> = new.iter().flat_map(|e| e.deps.iter()).collect();
    while let Some(id) = stack.pop() {
        if let Some(&i) = by_id.get(id) {
            if !seen[i] {
                seen[i] = true;
                stack.extend(events[i].deps.iter());
            }
        }
    }
    (0..events.len()).filter(|&i| seen[i]).collect()
}

/// The relay: the database and the loaded teams.
pub struct Relay {
    pub db: Arc<Db>,
    teams: Mutex<HashMap<String, Arc<LoadedTeam>>>,
}

/// A team in memory: its state, and the queue of its feed writer thread.
pub struct LoadedTeam {
    state: Mutex<TeamState>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// A write failed after the state took it in: the state is ahead of the
    /// database and is rebuilt from the feed on next use.
    failed: AtomicBool,
    /// The team's revoked devices as last read from the database, for the
    /// long-polls one change wakes ([`Relay::revoked_since`]).
    revoked: Mutex<RevokedDevices>,
    /// The last pull reply encoded, for the next poll sent the same page
    /// (one change wakes every phone that may read it).
    last_reply: Mutex<SharedReply>,
}

/// Which feed entries a pull reply carries, and where it leaves the cursor:
/// two replies alike in these are alike in every byte. `retirements`: how
/// many redaction clean-ups the team had done before the page was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPage {
    pub seqs: Vec<u64>,
    pub cursor: u64,
    pub more: bool,
    pub retirements: u64,
}

/// The last pull reply encoded, and how many clean-ups after redactions
/// the team has done: a reply whose page was taken before one may hold
/// bytes of a retired document, and is not kept.
#[derive(Default)]
struct SharedReply {
    retirements: u64,
    reply: Option<(PullPage, Bytes)>,
}

/// The team's revoked devices, read when the feed was `as_of` entries long
/// (or longer): every revocation committed before those entries is in it.
#[derive(Default)]
struct RevokedDevices {
    as_of: u64,
    actors: HashSet<String>,
}

impl LoadedTeam {
    pub fn state(&self) -> MutexGuard<'_, TeamState> {
        lock(&self.state)
    }

    /// The encoded reply for this page, if the last poll answered was sent
    /// the same one.
    pub fn shared_reply(&self, page: &PullPage) -> Option<Bytes> {
        match &lock(&self.last_reply).reply {
            Some((p, body)) if p == page => Some(body.clone()),
            _ => None,
        }
    }

    /// Taken before a page, for [`PullPage::retirements`].
    pub fn retirements(&self) -> u64 {
        lock(&self.last_reply).retirements
    }

    pub fn share_reply(&self, page: PullPage, body: Bytes) {
        let mut shared = lock(&self.last_reply);
        if !page.seqs.is_empty() && page.retirements == shared.retirements {
            shared.reply = Some((page, body));
        }
    }

    /// A push was dropped unanswered: the team's writer stopped (it only
    /// ever answers). The next request reloads the team with a new one.
    pub fn writer_stopped(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

/// Where a push's verdicts go.
type Reply = oneshot::Sender<Result<Vec<Verdict>>>;

/// One push waiting for the feed writer.
struct Push {
    caller: Caller,
    changes: Vec<Incoming>,
    reply: Reply,
}

/// Work for a team's feed writer.
enum Job {
    Push(Push),
    /// Runs alone: after every admitted change is committed, before the
    /// next push is admitted (enrolment writes the feed itself).
    Alone(Box<dyn FnOnce(&LoadedTeam) + Send>),
}

/// Changes admitted into the state, waiting to be committed.
enum Admitted {
    Batch {
        rows: Vec<(FeedRow, Arc<str>)>,
        answers: Vec<(Reply, Vec<Verdict>)>,
        /// Older generations of redacted tasks, deleted once `rows` are in.
        retire: Vec<Arc<str>>,
    },
    /// Acknowledged once everything before it is committed.
    Flush(mpsc::SyncSender<()>),
    /// Admission failed (a panic) or the team had failed already: nothing
    /// of it is written, and the committer writes nothing more.
    Failed(Vec<Reply>),
}

/// A push's answer, once the feed writer has taken it.
pub type PushReceipt = oneshot::Receiver<Result<Vec<Verdict>>>;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the team failed when its writer thread ends in a panic (a bug; no
/// input is known to cause one), so that the next request reloads it with a
/// new writer instead of every push failing until the relay restarts. (A
/// push dropped by the panic marks it first: `LoadedTeam::writer_stopped`.)
struct FailOnPanic(Weak<LoadedTeam>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(team) = self.0.upgrade() {
                team.failed.store(true, Ordering::Release);
            }
            tracing::error!("a feed writer stopped with a panic; the team is reloaded on next use");
        }
    }
}

/// The first stage of a team's feed writer: admit every push waiting as
/// one batch, hand the batch to the committer, until the team is unloaded.
fn admitter(db: Arc<Db>, team_id: String, team: Weak<LoadedTeam>, jobs: mpsc::Receiver<Job>) {
    let _failed = FailOnPanic(team.clone());
    let (to_commit, admitted) = mpsc::sync_channel::<Admitted>(4);
    {
        let team = team.clone();
        let spawned = std::thread::Builder::new()
            .name("feed-commit".into())
            .spawn(move || committer(&db, &team_id, team, admitted));
        if spawned.is_err() {
            return;
        }
    }
    let mut next = None;
    loop {
        let Some(first) = next.take().or_else(|| jobs.recv().ok()) else {
            return;
        };
        let Some(team) = team.upgrade() else {
            return;
        };
        let mut pushes = Vec::new();
        match first {
            Job::Alone(work) => {
                let (done, flushed) = mpsc::sync_channel(1);
                if to_commit.send(Admitted::Flush(done)).is_err() || flushed.recv().is_err() {
                    return;
                }
                // Not on a state that is ahead of its database: dropped
                // unrun, the job's caller is told to try again (enrolment)
                // or tries at its next tick (revocations), on the reloaded
                // team.
                if !team.failed.load(Ordering::Acquire) {
                    work(&team);
                }
                continue;
            }
            Job::Push(push) => pushes.push(push),
        }
        while pushes.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(Job::Push(push)) => pushes.push(push),
                Ok(alone) => {
                    next = Some(alone);
                    break;
                }
                Err(_) => break,
            }
        }
        let batch = admit_batch(&team, pushes);
        if to_commit.send(batch).is_err() {
            return;
        }
    }
}

/// Admit every change of every push in order. The admitted changes get
/// their seqs now (after those still being committed).
fn admit_batch(team: &LoadedTeam, pushes: Vec<Push>) -> Admitted {
    let mut st = team.state();
    if team.failed.load(Ordering::Acquire) {
        // The state is not to be trusted; the next request reloads it.
        return Admitted::Failed(pushes.into_iter().map(|p| p.reply).collect());
    }
    let mut answers = Vec::with_capacity(pushes.len());
    let mut rows: Vec<(FeedRow, Arc<str>)> = Vec::new();
    let mut retire = Vec::new();
    let relay_actor = st.team_doc.get_actor().to_hex_string();
    let relay_actor = st.actor_key(&relay_actor);
    let mut pushes = pushes.into_iter();
    while let Some(Push {
        caller,
        changes,
        reply,
    }) = pushes.next()
    {
        let actor = st.actor_key(&caller.actor);
        let mut verdicts = Vec::with_capacity(changes.len());
        for change in changes {
            let hash = change.decoded.as_ref().ok().map(|(c, _)| c.hash());
            if hash.is_some_and(|h| lock(poisoned()).contains(&h)) {
                verdicts.push(refuse(
                    RefusalCode::InvalidChange,
                    "the relay could not read this change",
                ));
                continue;
            }
            // A panic while admitting (a bug; no input is known to cause
            // one) must not end the team's feed writer. The state may be
            // half changed: nothing of this batch is written, every push in
            // it is answered with an error to retry, the team is reloaded
            // from its feed on next use, and the change is remembered, so
            // that when its phone sends it again it is refused at once.
            let admitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                st.admit(&caller, &change)
            }));
            let Ok(admitted) = admitted else {
                team.failed.store(true, Ordering::Release);
                tracing::error!("admitting a change panicked; the team is reloaded on next use");
                lock(poisoned()).extend(hash);
                let mut replies: Vec<Reply> = answers.into_iter().map(|(r, _)| r).collect();
                replies.push(reply);
                replies.extend(pushes.map(|p| p.reply));
                return Admitted::Failed(replies);
            };
            match admitted {
                Ok(true) => {
                    let Ok((c, _)) = &change.decoded else {
                        continue;
                    };
                    let row = st.next_row(change.doc, c);
                    rows.push((row, actor.clone()));
                    verdicts.push(Verdict::Stored);
                    for (doc, carried) in std::mem::take(&mut st.carry_over) {
                        st.admit_carry_over(&doc, &carried);
                        let row = st.next_row(doc, &carried);
                        rows.push((row, relay_actor.clone()));
                    }
                    retire.append(&mut st.retiring);
                }
                Ok(false) => verdicts.push(Verdict::Duplicate),
                Err(v) => verdicts.push(v),
            }
        }
        answers.push((reply, verdicts));
    }
    Admitted::Batch {
        rows,
        answers,
        retire,
    }
}

/// Changes whose admission panicked, relay-wide: refused when sent again.
fn poisoned() -> &'static Mutex<HashSet<ChangeHash>> {
    static POISONED: std::sync::OnceLock<Mutex<HashSet<ChangeHash>>> = std::sync::OnceLock::new();
    POISONED.get_or_init(Default::default)
}

/// The second stage: commit every admitted batch waiting in one
/// transaction, take the rows into the feed, answer the pushes. After a
/// storage error the team's state is ahead of its database: it is marked
/// failed (reloaded from the feed on next use) and every push still queued
/// is answered with the error.
fn committer(db: &Db, team_id: &str, team: Weak<LoadedTeam>, admitted: mpsc::Receiver<Admitted>) {
    let _failed = FailOnPanic(team.clone());
    let mut failure: Option<String> = None;
    while let Ok(first) = admitted.recv() {
        let mut waiting = vec![first];
        waiting.extend(admitted.try_iter());
        let Some(team) = team.upgrade() else {
            return;
        };
        let mut rows = Vec::new();
        let mut answers = Vec::new();
        let mut flushes = Vec::new();
        let mut retire = Vec::new();
        for a in waiting {
            match a {
                Admitted::Batch {
                    rows: r,
                    answers: a,
                    retire: t,
                } => {
                    rows.extend(r);
                    answers.extend(a);
                    retire.extend(t);
                }
                Admitted::Flush(done) => flushes.push(done),
                Admitted::Failed(replies) => {
                    failure.get_or_insert_with(|| {
                        "the relay could not take this team's changes; try again".to_owned()
                    });
                    answers.extend(replies.into_iter().map(|r| (r, Vec::new())));
                }
            }
        }
        // Tests of a writer thread's panic create this file: the next commit
        // panics, once.
        #[cfg(debug_assertions)]
        if std::env::var("HANDOFF_TEST_PANIC_IN_COMMIT_ONCE")
            .is_ok_and(|path| std::fs::remove_file(path).is_ok())
        {
            #[allow(clippy::panic)]
            {
                panic!("commit panic injected by a test");
            }
        }
        if failure.is_none() && !rows.is_empty() {
            let written = db.append_feed_batch(team_id, rows.iter().map(|(r, _)| r));
            if let Err(e) = written {
                team.failed.store(true, Ordering::Release);
                tracing::error!("a feed write failed; the team is reloaded on next use: {e}");
                failure = Some(e.to_string());
            }
        }
        match &failure {
            None => {
                {
                    let mut st = team.state();
                    st.uncommitted -= rows.len() as u64;
                    st.record(&rows);
                }
                for (reply, verdicts) in answers {
                    let _ = reply.send(Ok(verdicts));
                }
                if !retire.is_empty() {
                    if let Err(e) = retire_docs(db, team_id, &team, &retire) {
                        // Hidden and refused already; the reload deletes them.
                        team.failed.store(true, Ordering::Release);
                        tracing::error!("deleting retired documents failed; the team is reloaded on next use: {e}");
                    }
                }
            }
            Some(message) => {
                for (reply, _) in answers {
                    let _ = reply.send(Err(Error::Storage(message.clone())));
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// What the relay keeps of a retired event: the digest of its scrubbed form.
fn scrubbed_digest(e: &Event) -> [u8; 32] {
    digest_of(&e.scrubbed())
}

fn digest_of(e: &Event) -> [u8; 32] {
    sha256(&serde_json::to_vec(e).unwrap_or_default())
}

/// Delete retired documents from the feed (the newer generation is
/// committed), then from memory.
fn retire_docs(db: &Db, team_id: &str, team: &LoadedTeam, docs: &[Arc<str>]) -> Result<()> {
    let plan = team.state().retirement_plan(docs);
    let hashes = db.retire_docs(team_id, &plan)?;
    team.state().forget_retired(docs, &hashes);
    // It may hold the bytes just forgotten (never to be sent again: no page
    // holds a retired entry); patient details removed leave memory too.
    let mut shared = lock(&team.last_reply);
    shared.retirements += 1;
    shared.reply = None;
    Ok(())
}

impl Relay {
    pub fn new(db: Db) -> Relay {
        Relay {
            db: Arc::new(db),
            teams: Mutex::new(HashMap::new()),
        }
    }

    /// The team if it is in memory (no I/O: for async handlers).
    pub fn loaded(&self, team_id: &str) -> Option<Arc<LoadedTeam>> {
        lock(&self.teams)
            .get(team_id)
            .filter(|t| !t.failed.load(Ordering::Acquire))
            .cloned()
    }

    /// The team, loading it from the feed on first use (blocking).
    pub fn team(&self, team_id: &str) -> Result<Arc<LoadedTeam>> {
        if let Some(t) = self.loaded(team_id) {
            return Ok(t);
        }
        let row = self
            .db
            .read(|c| Db::team(c, team_id))?
            .ok_or(Error::NotFound("no such team"))?;
        let state = TeamState::load(&self.db, &row)?;
        let mut teams = lock(&self.teams);
        if let Some(t) = teams
            .get(team_id)
            .filter(|t| !t.failed.load(Ordering::Acquire))
        {
            return Ok(t.clone());
        }
        let (tx, rx) = mpsc::channel();
        let team = Arc::new(LoadedTeam {
            state: Mutex::new(state),
            jobs: Mutex::new(tx),
            failed: AtomicBool::new(false),
            revoked: Mutex::new(RevokedDevices::default()),
            last_reply: Mutex::new(SharedReply::default()),
        });
        let (db, weak, id) = (self.db.clone(), Arc::downgrade(&team), team_id.to_owned());
        std::thread::Builder::new()
            .name("feed-admit".into())
            .spawn(move || admitter(db, id, weak, rx))
            .map_err(|e| Error::Storage(format!("cannot start a feed writer: {e}")))?;
        teams.insert(team_id.to_owned(), team.clone());
        Ok(team)
    }

    pub fn loaded_feed_length(&self) -> u64 {
        let teams: Vec<_> = lock(&self.teams).values().cloned().collect();
        teams.iter().map(|t| t.state().head()).sum()
    }

    /// Who is calling, from the bearer token. One indexed read, so that a
    /// revocation by the admin command counts from the very next request.
    pub fn authenticate(&self, token: &str) -> Result<Caller> {
        let hash = sha256(token.as_bytes());
        let device = self
            .db
            .read(|c| Db::device_by_token(c, &hash))?
            .ok_or(Error::InvalidToken)?;
        if device.revoked_at.is_some() {
            return Err(Error::DeviceRevoked);
        }
        Ok(Caller {
            actor: device.actor,
            team_id: device.team_id,
            user_id: device.user_id,
        })
    }

    /// Has the caller's device been revoked since the feed's entry `seq`
    /// (or before it) was written? A long-poll that waited asks this before
    /// it sends what woke it (a stolen phone gets the 401, not the news).
    /// One read of the team's revoked devices answers every poll the same
    /// change woke, where a read per poll took a third of the time it takes
    /// one change to wake 10,000 of them. The admin command writes
    /// revocations to the database only, so it must be read, not assumed.
    pub fn revoked_since(&self, team: &LoadedTeam, caller: &Caller, seq: u64) -> Result<bool> {
        let mut known = lock(&team.revoked);
        if known.as_of < seq {
            // The feed's length first: the read below then sees every
            // revocation committed before those entries were.
            let head = team.state().head();
            let actors = self.db.read(|c| Db::revoked_devices(c, &caller.team_id))?;
            *known = RevokedDevices {
                as_of: head,
                actors: actors.into_iter().collect(),
            };
        }
        Ok(known.actors.contains(&caller.actor))
    }

    /// Queue a push for the team's feed writer; the receipt answers one
    /// verdict per change, in order.
    pub fn push(&self, team: &LoadedTeam, caller: Caller, changes: Vec<Incoming>) -> PushReceipt {
        let (reply, receipt) = oneshot::channel();
        // If the writer stopped, the reply is dropped with the job and the
        // receipt says so.
        let _ = lock(&team.jobs).send(Job::Push(Push {
            caller,
            changes,
            reply,
        }));
        receipt
    }

    /// Every change of a document the caller may read that is not behind
    /// `have` (heads the caller holds; unknown ones are ignored).
    pub fn repair(&self, caller: &Caller, doc: &str, have: &[[u8; 32]]) -> Result<Vec<Vec<u8>>> {
        let team = self.team(&caller.team_id)?;
        let seqs = {
            let st = team.state();
            if !st.visible(doc, &caller.user_id) {
                return Err(Error::NotFound("no such document"));
            }
            st.seqs_by_doc.get(doc).cloned().unwrap_or_default()
        };
        let changes = self
            .db
            .read(|c| Db::changes_at(c, &caller.team_id, &seqs))?;
        let mut am = AutoCommit::new();
        let parsed: Vec<Change> = changes
            .into_iter()
            .filter_map(|b| Change::from_bytes(b).ok())
            .collect();
        am.apply_changes(parsed)?;
        let known: Vec<ChangeHash> = have
            .iter()
            .map(|h| ChangeHash(*h))
            .filter(|h| am.get_change_by_hash(h).is_some())
            .collect();
        Ok(am
            .get_changes(&known)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect())
    }

    /// Write into each loaded team's document the devices revoked since
    /// (the admin command changes only the database, beside a live relay),
    /// so the team's phones list them as revoked. Runs on a timer; a team
    /// loaded later is brought up to date the same way.
    pub fn reflect_revocations(&self) -> Result<()> {
        let teams: Vec<(String, Arc<LoadedTeam>)> = lock(&self.teams)
            .iter()
            .filter(|(_, t)| !t.failed.load(Ordering::Acquire))
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect();
        for (team_id, team) in teams {
            let revoked = self.db.read(|c| Db::revoked_devices(c, &team_id))?;
            let pending: Vec<String> = {
                let st = team.state();
                revoked
                    .into_iter()
                    .filter(|a| st.team.devices.get(a).is_some_and(|d| !d.revoked))
                    .collect()
            };
            if pending.is_empty() {
                continue;
            }
            let db = self.db.clone();
            let work = move |team: &LoadedTeam| {
                if let Err(e) = mark_revoked(&db, team, &team_id, &pending) {
                    tracing::warn!("writing a revocation into the team document failed: {e}");
                }
            };
            // Runs alone in the team's writer, like enrolment.
            let _ = lock(&team.jobs).send(Job::Alone(Box::new(work)));
        }
        Ok(())
    }

    /// Redeem an invite: bind the device's actor to the invited user, write
    /// the member and the device into the team document, return the token.
    pub fn enrol(&self, invite: &str, actor: &str) -> Result<(String, InviteRow)> {
        let actor = actor.to_ascii_lowercase();
        if actor.len() < 2
            || actor.len() > 64
            || !actor.len().is_multiple_of(2)
            || !actor.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::BadRequest(
                "bad_actor",
                "the device id must be hex".into(),
            ));
        }
        let code_hash = sha256(normalize_invite(invite).as_bytes());
        let row = self
            .db
            .read(|c| Db::invite(c, &code_hash))?
            .ok_or(Error::NotFound("no such invite"))?;
        if row.redeemed_at.is_some() {
            return Err(Error::InviteUsed);
        }
        let now = now_ms();
        if row.expires_at <= now {
            return Err(Error::InviteExpired);
        }
        let role = Role::parse(&row.role).ok_or(Error::Storage("invite has a bad role".into()))?;
        let team = self.team(&row.team_id)?;
        // Enrolment writes the team document and the feed itself: it runs
        // alone in the team's writer, between two batches of pushes.
        let (done, result) = mpsc::sync_channel(1);
        let db = self.db.clone();
        let work = move |team: &LoadedTeam| {
            let _ = done.send(enrol_device(&db, team, &code_hash, actor, row, role, now));
        };
        let stopped = || Error::Storage("the feed writer stopped".into());
        lock(&team.jobs)
            .send(Job::Alone(Box::new(work)))
            .map_err(|_| stopped())?;
        result.recv().map_err(|_| stopped())?
    }
}

/// Mark devices revoked in the team document (one change by the relay's
/// actor, its own feed commit), so every phone of the team lists them as
/// revoked. Their past events stay valid.
fn mark_revoked(db: &Db, team: &LoadedTeam, team_id: &str, actors: &[String]) -> Result<()> {
    let mut st = team.state();
    let devices: Vec<Device> = actors
        .iter()
        .filter_map(|a| st.team.devices.get(a))
        .filter(|d| !d.revoked)
        .map(|d| Device {
            revoked: true,
            ..d.clone()
        })
        .collect();
    if devices.is_empty() {
        return Ok(());
    }
    let written = (|| {
        let mut w = TeamWriter(&mut st.team_doc);
        for d in &devices {
            w.device(d)?;
        }
        let feed_row = st.commit_team_change("revocation")?;
        db.append_feed_batch(team_id, std::iter::once(&feed_row))?;
        Ok(feed_row)
    })();
    let feed_row = match written {
        Ok(row) => row,
        Err(e) => {
            // The document in memory may hold the change: rebuild it.
            team.failed.store(true, Ordering::Release);
            return Err(e);
        }
    };
    for d in devices {
        st.team.devices.insert(d.actor.clone(), d);
    }
    let relay_actor = st.team_doc.get_actor().to_hex_string();
    let relay_actor = st.actor_key(&relay_actor);
    st.record(&[(feed_row, relay_actor)]);
    Ok(())
}

/// Bind a device (and, the first time, its user) in the team document and
/// the relay's database, in one transaction with the invite's redemption.
fn enrol_device(
    db: &Db,
    team: &LoadedTeam,
    code_hash: &[u8; 32],
    actor: String,
    row: InviteRow,
    role: Role,
    now: i64,
) -> Result<(String, InviteRow)> {
    let mut st = team.state();
    if db.read(|c| Db::device(c, &actor))?.is_some() {
        return Err(Error::Conflict("this device is already enrolled".into()));
    }
    let member = (!st.team.members.contains_key(&row.user_id)).then(|| Member {
        user_id: row.user_id.clone(),
        name: row.name.clone(),
        role,
        trusted: false,
        active: true,
    });
    let device = Device {
        actor: actor.clone(),
        user_id: row.user_id.clone(),
        revoked: false,
    };
    // Written straight into the team's document: if anything below
    // fails, the whole state is dropped and rebuilt from the feed.
    let written = (|| {
        let mut w = TeamWriter(&mut st.team_doc);
        if let Some(m) = &member {
            w.member(m)?;
        }
        w.device(&device)?;
        let feed_row = st.commit_team_change("enrolment")?;
        let token = random_hex(32);
        let conn = db.write();
        let tx = conn.unchecked_transaction()?;
        if !Db::redeem_invite(&tx, code_hash, &actor, now)? {
            return Err(Error::InviteUsed);
        }
        Db::insert_device(
            &tx,
            &DeviceRow {
                actor: actor.clone(),
                team_id: row.team_id.clone(),
                user_id: row.user_id.clone(),
                role: row.role.clone(),
                enrolled_at: now,
                revoked_at: None,
            },
            &sha256(token.as_bytes()),
        )?;
        Db::append_feed(&tx, &row.team_id, &feed_row)?;
        tx.commit()?;
        Ok((token, feed_row))
    })();
    let (token, feed_row) = match written {
        Ok(w) => w,
        Err(e) => {
            team.failed.store(true, Ordering::Release);
            return Err(e);
        }
    };
    // The team as Team::read would now read it, without re-reading every
    // entry: a new device cannot have written anything yet, so only a
    // new member can change what earlier events derive to.
    st.team.devices.insert(actor, device);
    if let Some(m) = member {
        st.team.members.insert(m.user_id.clone(), m);
        st.rederive_all();
    }
    let relay_actor = st.team_doc.get_actor().to_hex_string();
    let relay_actor = st.actor_key(&relay_actor);
    st.record(&[(feed_row, relay_actor)]);
    Ok((token, row))
}

/// Start a team: its row, its document (written by the relay's own actor)
/// as the first feed entry.
pub fn create_team(db: &Db, name: &str) -> Result<TeamRow> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::BadRequest(
            "bad_name",
            "a team name is 1-200 characters".into(),
        ));
    }
    let row = TeamRow {
        team_id: random_hex(8),
        name: name.to_owned(),
        relay_actor: random_hex(16),
    };
    let actor = ActorId::from(hex::decode(&row.relay_actor).unwrap_or_default());
    let mut doc = AutoCommit::new().with_actor(actor);
    TeamWriter(&mut doc).init(name)?;
    doc.commit();
    let change = doc
        .get_last_local_change()
        .ok_or(Error::Storage("team document is empty".into()))?;
    let conn = db.write();
    let tx = conn.unchecked_transaction()?;
    Db::insert_team(&tx, &row, now_ms())?;
    Db::append_feed(
        &tx,
        &row.team_id,
        &FeedRow {
            seq: 1,
            doc_id: TEAM_DOC.into(),
            hash: change.hash().0,
            bytes: change.raw_bytes().to_vec(),
            exits: Vec::new(),
        },
    )?;
    tx.commit()?;
    Ok(row)
}

/// Issue a one-time invite; returns the code (shown once, stored hashed).
pub fn create_invite(
    db: &Db,
    team_id: &str,
    user_id: &str,
    name: &str,
    role: Role,
    valid_for_hours: u32,
) -> Result<String> {
    if !is_valid_id(user_id) {
        return Err(Error::BadRequest(
            "bad_user",
            "a user id is 1-64 letters, digits or . _ - @".into(),
        ));
    }
    let conn = db.write();
    if Db::team(&conn, team_id)?.is_none() {
        return Err(Error::NotFound("no such team"));
    }
    let raw = random_hex(8);
    let code = format!(
        "{}-{}-{}-{}",
        &raw[0..4],
        &raw[4..8],
        &raw[8..12],
        &raw[12..16]
    );
    let now = now_ms();
    Db::insert_invite(
        &conn,
        &sha256(raw.as_bytes()),
        &InviteRow {
            team_id: team_id.into(),
            user_id: user_id.into(),
            name: name.into(),
            role: role.as_str().into(),
            expires_at: now + i64::from(valid_for_hours) * 3_600_000,
            redeemed_at: None,
        },
        now,
    )?;
    Ok(code)
}
