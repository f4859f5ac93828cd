//! One team as the relay holds it in memory, rebuilt from its feed: what a
//! pushed change may do (admission, with the core's own derivation and
//! door), what each device may read (visibility, exits, pull pages), and
//! which long-polls a change wakes. No I/O: the relay (`relay.rs`) reads
//! and writes the database around it and runs it on its feed writer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use handoff_core::access::{losing_sight, may_act, may_change_team, may_read_task, Whereabouts};
use handoff_core::derive::{derive_outcomes, FoldedTask, TaskState};
use handoff_core::event::{Action, Event, EventId, MAX_LT_STEP, MAX_TASK_EVENTS};
use handoff_core::is_valid_id;
use handoff_core::store::TEAM_DOC;
use handoff_core::sync::wire::{self, DocChange, RefusalCode, Verdict, MAX_CHANGE, MAX_NEW_EVENTS};
use handoff_core::task_doc::{
    self, doc_id_of, events_in_change, read_change, split_doc_id, ChangeRead, Shape,
    MAX_GENERATION_STEP,
};
use handoff_core::team::{self, Reach, Team};
use tokio::sync::watch;

use crate::db::{FeedRow, RetiredDoc, Vouched};
use crate::error::{Error, Result};
use crate::relay::{sha256, Caller};

/// A change's tag: the first bytes of its hash, never 0.
pub(crate) fn tag_of(hash: &[u8; 32]) -> u32 {
    u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]).max(1)
}

/// The feed's chain after a row of change `hash`, `before` being the chain
/// of the row before it (0 before the first): a digest that names the
/// change and, through `before`, every row before it. A phone's cursor
/// names the tag of the chain at its seq ([`tag_of_chain`]), so a relay
/// restored from a backup that holds the same change at that seq again,
/// but other changes before it, is not taken for the feed the phone
/// followed.
pub(crate) fn chain_after(before: u64, hash: &[u8; 32]) -> u64 {
    let mut bytes = [0u8; 40];
    bytes[..8].copy_from_slice(&before.to_le_bytes());
    bytes[8..].copy_from_slice(hash);
    let digest = sha256(&bytes);
    u64::from_le_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

/// The chain of a row written before schema 5 (none was stored): its
/// hash's first bytes, whose tag is the change's own, as tags were then.
pub(crate) fn legacy_chain(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes([
        hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
    ])
}

/// The tag a cursor names at a row: the first bytes of its chain, never 0.
pub(crate) fn tag_of_chain(chain: u64) -> u32 {
    (chain as u32).max(1)
}

/// Changes per pull page, and bytes.
pub const PAGE_CHANGES: usize = 1000;
pub use handoff_core::sync::wire::PAGE_BYTES;
/// Feed entries one pull looks at before answering (most may be invisible).
const PAGE_SCAN: usize = 20_000;
/// Bytes of each team's newest changes kept in memory: live devices pull
/// only these, without touching SQLite.
const RECENT_BYTES: usize = 4 * 1024 * 1024;

/// What the relay knows of one task document.
struct DocEntry {
    events: Vec<Event>,
    /// The task folded over `events`: each change taken in folds only its
    /// own events when they come after the rest, as they usually do.
    /// [`FoldedTask::awaits_team`] tells a team change that adds someone
    /// to derive it again ([`Reach::WaitingForTheTeam`]).
    fold: FoldedTask,
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
    fn state(&self) -> Option<&TaskState> {
        self.fold.state()
    }

    fn new() -> DocEntry {
        DocEntry {
            events: Vec::new(),
            fold: FoldedTask::default(),
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
    /// The first bytes of the feed's chain at this entry (0 when its row
    /// was already deleted, a retired document's, when the team was
    /// loaded): a phone's cursor names the tag it saw at its seq, and a
    /// relay whose entry there differs is not the feed the phone followed
    /// (restored from a backup).
    tag: u32,
    /// The change's own tag ([`tag_of`]): a change is found by it.
    change_tag: u32,
    size: u32,
    /// The device that wrote it: it is not sent back to that device.
    actor: Arc<str>,
}

/// One team, rebuilt from its feed when first needed.
pub struct TeamState {
    pub(crate) team_doc: AutoCommit,
    pub(crate) team: Team,
    docs: HashMap<Arc<str>, DocEntry>,
    /// Each feed entry's document, size and author; index = seq - 1.
    feed: Vec<FeedEntry>,
    /// Changes admitted and given seqs after `head`, not yet committed.
    pub(crate) uncommitted: u64,
    /// Where the admitted changes not yet committed will stand, by hash:
    /// a second push of one hears where (see [`TeamState::position_of`]).
    uncommitted_at: HashMap<ChangeHash, (u64, u32)>,
    /// The feed's chain at the last entry given a seq, committed or not
    /// ([`chain_after`]).
    chain: u64,
    /// Each document's feed entries, oldest first (for repair).
    pub(crate) seqs_by_doc: HashMap<Arc<str>, Vec<u64>>,
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
    pub(crate) carry_over: Vec<(String, Change)>,
    pub(crate) retiring: Vec<Arc<str>>,
    /// Redactions, and changes copying events into a redacted task, that
    /// this relay took before, as noted beside its database: a database
    /// restored from a backup may have lost the events they were checked
    /// against, and their authors' phones may be lost; the relay takes
    /// them again on their word, from any phone.
    vouched: HashSet<ChangeHash>,
    /// The relay's own changes carrying over events a redaction missed, as
    /// noted beside its database: a database restored from a backup lost
    /// them, and phones built on them. Taken again, as they are, from
    /// whichever phone offers one.
    carried_by_relay: HashSet<ChangeHash>,
    /// The relay's actors those were written by: no device takes one.
    carried_by_relay_as: HashSet<String>,
    /// Set by admitting one of those: to be noted beside the database
    /// before it is committed.
    pub(crate) vouching: Vec<ChangeHash>,
    /// Set by admitting a change that takes a task from some members: who,
    /// for the feed row that change is given next.
    exiting: Vec<String>,
}

struct Waiter {
    user: Arc<str>,
    wake: watch::Sender<u64>,
    /// The device's newest long-poll ([`TeamState::wait`]).
    newest: u64,
}

/// Long-polls, numbered in the order they began, across teams and team
/// reloads: a poll that began later has the larger number.
static POLLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) fn refuse(code: RefusalCode, reason: &str) -> Verdict {
    Verdict::Refused {
        code,
        reason: reason.to_owned(),
    }
}

/// A pushed change, checked for form and decoded before it queues for the
/// feed writer (so that this work runs on the request's own thread).
pub struct Incoming {
    pub(crate) doc: String,
    /// The change and what it does to its document (a team change: no
    /// events), or why it cannot be stored.
    pub(crate) decoded: std::result::Result<(Change, ChangeRead), Verdict>,
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
                        patient_details: false,
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
    /// An empty state, for [`Replay`] to fill from the stored feed.
    fn empty(retired_events: HashMap<String, HashMap<EventId, [u8; 32]>>) -> TeamState {
        TeamState {
            team_doc: AutoCommit::new(),
            team: Team::default(),
            docs: HashMap::new(),
            feed: Vec::new(),
            uncommitted: 0,
            uncommitted_at: HashMap::new(),
            chain: 0,
            seqs_by_doc: HashMap::new(),
            actors: HashMap::new(),
            hashes: HashMap::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            waiters: HashMap::new(),
            generations: HashMap::new(),
            retired_events,
            carry_over: Vec::new(),
            retiring: Vec::new(),
            vouched: HashSet::new(),
            carried_by_relay: HashSet::new(),
            carried_by_relay_as: HashSet::new(),
            vouching: Vec::new(),
            exiting: Vec::new(),
        }
    }

    /// Changes this relay took before into redacted tasks, as noted beside
    /// the database: devices' redactions and changes copying earlier
    /// events (`TeamState::vouching`), and the relay's own carrying over
    /// events a redaction missed. Offered again to a database restored from an older
    /// backup, they are taken though it lacks what they copy, from
    /// whichever phone offers them (`TeamState::admit_for_its_author`).
    pub fn vouch_for(&mut self, noted: impl IntoIterator<Item = Vouched>) {
        for v in noted {
            match v.by_relay {
                Some(actor) => {
                    self.carried_by_relay.insert(ChangeHash(v.hash));
                    self.carried_by_relay_as.insert(actor);
                }
                None => {
                    self.vouched.insert(ChangeHash(v.hash));
                }
            }
        }
    }

    /// A feed entry whose document was retired: nobody reads it.
    fn push_retired_entry(&mut self) {
        let none = self.actor_key("");
        self.feed.push(FeedEntry {
            doc: Arc::from(""),
            tag: 0,
            change_tag: 0,
            size: 0,
            actor: none,
        });
        self.remember(Arc::from(&[][..]));
    }

    /// What the database must delete and keep for these documents.
    pub(crate) fn retirement_plan(&self, docs: &[Arc<str>]) -> Vec<RetiredDoc> {
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
    pub(crate) fn forget_retired(&mut self, docs: &[Arc<str>], hashes: &[[u8; 32]]) {
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
                        tag: entry.tag,
                        change_tag: entry.change_tag,
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

    pub(crate) fn actor_key(&mut self, actor: &str) -> Arc<str> {
        self.actors
            .entry(actor.to_owned())
            .or_insert_with(|| Arc::from(actor))
            .clone()
    }

    /// Derive again the tasks a change of the team reaches.
    pub(crate) fn rederive(&mut self, reach: Reach) {
        for (doc, entry) in &mut self.docs {
            let again = match reach {
                Reach::Nothing => false,
                Reach::WaitingForTheTeam => entry.fold.awaits_team(),
                Reach::Everything => true,
            };
            if again {
                entry.fold = FoldedTask::of(doc, &entry.events, &self.team);
            }
        }
    }

    pub fn head(&self) -> u64 {
        self.feed.len() as u64
    }

    /// The tag of the entry at `seq` (0 before the first, past the head,
    /// or where the entry's row was already gone when the team was loaded:
    /// a retired document's; one retired since keeps its tag).
    pub fn tag_at(&self, seq: u64) -> u32 {
        usize::try_from(seq)
            .ok()
            .and_then(|s| s.checked_sub(1))
            .and_then(|i| self.feed.get(i))
            .map_or(0, |e| e.tag)
    }

    /// Whether a phone's cursor (`seq`, with the tag it was given there)
    /// is in this feed: not past its head, and the entry there the one the
    /// phone saw. A relay restored from a backup may have fewer entries, or
    /// other ones under the same seqs: the phone must start over, or it
    /// would never be sent what lies between.
    pub fn follows(&self, seq: u64, tag: u32) -> bool {
        if seq > self.head() {
            return false;
        }
        let here = self.tag_at(seq);
        tag == 0 || here == 0 || here == tag
    }

    /// The seq and (cursor) tag of a change of `doc` by its hash: its
    /// document's entries searched newest first for the change's own tag
    /// (4 bytes of the hash; another of the same document sharing them is
    /// as good a witness that the relay still has what it had), or where it
    /// will stand once committed, if it is admitted but not yet committed
    /// (a push's answer goes out after every batch before it is committed).
    pub fn position_of(&self, doc: &str, hash: &[u8; 32]) -> Option<(u64, u32)> {
        if let Some(&at) = self.uncommitted_at.get(&ChangeHash(*hash)) {
            return Some(at);
        }
        let tag = tag_of(hash);
        self.seqs_by_doc
            .get(doc)?
            .iter()
            .rev()
            .find(|&&seq| {
                usize::try_from(seq - 1)
                    .ok()
                    .and_then(|i| self.feed.get(i))
                    .is_some_and(|e| e.change_tag == tag)
            })
            .map(|&seq| (seq, self.tag_at(seq)))
    }

    /// Whether `actor` wrote an entry of the feed (the relay's actors of
    /// earlier loads among them).
    pub fn has_written(&self, actor: &str) -> bool {
        let Some(key) = self.actors.get(actor) else {
            return false;
        };
        self.feed.iter().any(|e| Arc::ptr_eq(&e.actor, key))
    }

    /// Whether the relay carried events over to a redacted task as `actor`
    /// (noted beside its database: a restore may have lost that change).
    pub fn carried_over_as(&self, actor: &str) -> bool {
        self.carried_by_relay_as.contains(actor)
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
    /// it may read (and did not write) enters the feed. `poll` is this
    /// long-poll's number, given at its first wait. The `bool` says a newer
    /// poll of the same device began since: its older polls are woken then,
    /// and end soon (`api::pull`). A phone cuts its poll short to push what
    /// its user wrote, and polls again; the relay does not notice a client
    /// leave mid-request (`serve`), so the poll it left would otherwise
    /// wait on until its time ran out.
    pub fn wait(
        &mut self,
        caller: &Caller,
        poll: &mut Option<u64>,
    ) -> (watch::Receiver<u64>, bool) {
        use std::sync::atomic::Ordering;
        let head = self.head();
        let actor = self.actor_key(&caller.actor);
        let id = *poll.get_or_insert_with(|| POLLS.fetch_add(1, Ordering::Relaxed));
        let waiter = self.waiters.entry(actor).or_insert_with(|| Waiter {
            user: caller.user_id.clone(),
            wake: watch::channel(head).0,
            newest: id,
        });
        if waiter.newest < id {
            waiter.newest = id;
            // The older polls hear it now; this one subscribes after.
            if waiter.wake.receiver_count() > 0 {
                waiter.wake.send_replace(head);
            }
        }
        (waiter.wake.subscribe(), waiter.newest > id)
    }

    /// May this user be sent the feed entry `seq` of `doc`: they may read
    /// the document now, or the entry came before (or is) the change that
    /// took the task from them.
    pub(crate) fn delivers(&self, seq: u64, doc: &str, user: &str) -> bool {
        doc == TEAM_DOC
            || self
                .current(doc)
                .is_some_and(|e| self.delivers_entry(seq, e, user))
    }

    /// [`TeamState::delivers`] for a task document's current entry.
    fn delivers_entry(&self, seq: u64, e: &DocEntry, user: &str) -> bool {
        self.reads(e, user)
            || (e.exit_of(user).is_some_and(|exit| seq <= exit)
                && self.team.member(user).is_some_and(|m| m.active))
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
            .state()
            .is_some_and(|state| may_read_task(&self.team, user, state))
    }

    /// The feed entries after `cursor` this user may read, at least one and
    /// at most `page_bytes` of changes (unless the first is larger): their
    /// seqs, and the cursor to continue from.
    pub fn visible_since(
        &self,
        cursor: u64,
        caller: &Caller,
        page_bytes: usize,
    ) -> (Vec<u64>, u64, bool) {
        let head = self.head();
        let mut seqs = Vec::new();
        let mut bytes = 0usize;
        let mut seq = cursor;
        let mut scanned = 0;
        while seq < head {
            if seqs.len() >= PAGE_CHANGES || bytes >= page_bytes || scanned >= PAGE_SCAN {
                break;
            }
            let entry = &self.feed[seq as usize];
            // A device has what it wrote itself.
            if *entry.actor != *caller.actor && self.delivers(seq + 1, &entry.doc, &caller.user_id)
            {
                let size = entry.size as usize;
                if !seqs.is_empty() && bytes + size > page_bytes {
                    break;
                }
                seqs.push(seq + 1);
                bytes += size;
            }
            seq += 1;
            scanned += 1;
        }
        (seqs, seq, seq < head)
    }

    /// Check one pushed change against the team's rules; on success, take
    /// it into the state (`Ok(true)`; the caller writes its feed row).
    /// `Ok(false)`: the relay already has it.
    pub(crate) fn admit(
        &mut self,
        caller: &Caller,
        change: &Incoming,
    ) -> std::result::Result<bool, Verdict> {
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
        if c.actor_id().to_hex_string() != *caller.actor {
            return self.admit_for_its_author(caller, change);
        }
        // Framing automerge asserts on rather than refuses (every phone's
        // apply would panic on it): an author, which automerge writes only
        // in an actor's first change and Handoff never sets.
        if c.author().is_some() {
            return Err(refuse(
                RefusalCode::InvalidChange,
                "a change names no author",
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
        if generation > newest.unwrap_or(0).saturating_add(MAX_GENERATION_STEP) {
            return Err(refuse(
                RefusalCode::InvalidChange,
                "a task document's generation runs too far ahead of the task's newest",
            ));
        }
        // A newer generation need not be the next one, and a task new to the
        // relay need not start at generation 0: a phone that removed the
        // patient's details twice before it synced, or before the task ever
        // left it, sends only its last generation (each one retired the one
        // before, unsent). A task the relay has never seen is judged as a
        // new task (every event in it is the pusher's own, at the door); a
        // known one as a redaction.
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
            // A redaction's document leaves the patient's details out, or
            // they would stay in the feed for good once the older one is
            // deleted. (A phone never writes them there.)
            if generation > 0 && read.patient_details {
                return Err(refuse(
                    RefusalCode::InvalidChange,
                    "a redacted task's document holds no patient details",
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
                .and_then(DocEntry::state);
            // One this relay took before (noted beside its database) was
            // judged then: an author who left or was moved since does not
            // undo it, and phones hold it.
            let allowed = self.vouched.contains(&hash)
                || (self.team.permissions(&caller.user_id).may_delegate
                    && current.is_some_and(|s| may_read_task(&self.team, &caller.user_id, s)));
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
            // On a copy: should automerge panic on the change (framing it
            // asserts on), the copy is dropped and the change refused.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                doc.apply_changes([c.clone()]).is_ok()
            }));
            if !matches!(applied, Ok(true)) {
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
            let reach = team.reach_from(Some(&self.team));
            self.team_doc = doc;
            self.team = team;
            self.rederive(reach);
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
            // Another actor a change names is one whose operations it builds
            // on, so one that wrote to the document before: automerge's
            // apply panics on any other.
            let wrote_here = |a: &automerge::ActorId| {
                self.docs
                    .get(change.doc.as_str())
                    .is_some_and(|e| e.seqs.contains_key(a.to_hex_string().as_str()))
            };
            if !c.actors().skip(1).all(wrote_here) {
                return Err(refuse(
                    RefusalCode::InvalidChange,
                    "it names a device that never wrote to this document",
                ));
            }
            // Events from other devices come only as copies into a redacted
            // task's next generation, of events the relay already has (or
            // had, when it took this change before a restore).
            let vouched = generation > 0 && self.vouched.contains(&hash);
            let others_vouched = |e: &Event| vouched && e.id.actor != *caller.actor;
            if new_events.iter().any(|e| {
                e.id.actor != *caller.actor
                    && !vouched
                    && !self.known_in_earlier_generation(&change.doc, e)
            }) {
                return Err(refuse(
                    RefusalCode::ActorMismatch,
                    "an event in it names another device",
                ));
            }
            let key = self.doc_key(&change.doc);
            // Whether the change copies events the relay took before into
            // a redacted task's newer document.
            let copies: bool;
            {
                let entry = self.docs.get(&key);
                let events: &[Event] = entry.map_or(&[], |e| e.events.as_slice());
                let prior = entry.and_then(DocEntry::state);
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
                    // Taken before (noted beside the database), and judged
                    // then: taken again after a restore as it was, though
                    // its author left or was moved since. Phones hold it,
                    // and build on it.
                    _ if vouched => true,
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
                // with the team as it is now (a change noted before was
                // judged when first taken). Copies of events the relay
                // already took in (a redacted task's next generation) passed it.
                let (carried, fresh): (Vec<&Event>, Vec<&Event>) =
                    new_events.iter().partition(|e| {
                        others_vouched(e) || self.known_in_earlier_generation(&change.doc, e)
                    });
                copies = !carried.is_empty();
                if fresh.len() > MAX_NEW_EVENTS {
                    return Err(refuse(
                        RefusalCode::InvalidChange,
                        "a change carries at most 16 new events",
                    ));
                }
                // A task is created once, building on nothing, by a change
                // of a task the relay has never held (its first document,
                // or a later generation a phone laid out before the task
                // ever left it). A second `created` in a task, folded
                // before the real one, would make its author the creator:
                // the handoff theirs, and sight of the task for good.
                if !fresh.is_empty() && events.len() + new_events.len() > MAX_TASK_EVENTS {
                    return Err(refuse(
                        RefusalCode::InvalidChange,
                        "the task holds as many events as a task may",
                    ));
                }
                // An event's id names it for good: one that takes an id
                // the task holds (its other copies are carried, above), or
                // that another event of the change takes, would fold in
                // place of it or be what names that id points at.
                let mut ids = HashSet::new();
                let reused = fresh.iter().any(|e| {
                    !ids.insert(&e.id)
                        || events.iter().any(|x| x.id == e.id)
                        || self.holds_in_earlier_generation(&change.doc, &e.id)
                });
                if reused {
                    return Err(refuse(
                        RefusalCode::InvalidChange,
                        "an event takes an id the task already holds",
                    ));
                }
                let creating: Vec<&&Event> = fresh
                    .iter()
                    .filter(|e| matches!(e.action, Action::Created { .. }))
                    .collect();
                let first = newest.is_none() && creating.len() == 1;
                if creating.iter().any(|e| !first || !e.deps.is_empty()) {
                    return Err(refuse(
                        RefusalCode::InvalidChange,
                        "a task is created once, by the first event of its first change",
                    ));
                }
                // The latest the relay holds of the task (copies carried over
                // from an earlier generation included): no fresh event may
                // reach far past it.
                let latest = events
                    .iter()
                    .chain(carried)
                    .map(|e| e.lt)
                    .max()
                    .unwrap_or(0);
                for e in &fresh {
                    if let Err(e) = e.action.check_input() {
                        return Err(refuse(RefusalCode::InvalidChange, &e.to_string()));
                    }
                    if e.lt > latest.saturating_add(MAX_LT_STEP) {
                        return Err(refuse(
                            RefusalCode::InvalidChange,
                            "an event may not run this far ahead of the task's latest",
                        ));
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
                    _ if vouched => Ok(()),
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
            let was = entry.state().map(Whereabouts::of);
            entry.events.extend(new_events.iter().cloned());
            let retiring = match redaction {
                Some(_) => self.retirement(&key, &entry.events, c).map(Some),
                None => Ok(None),
            };
            let retiring = match retiring {
                Ok(r) => r,
                Err(verdict) => {
                    entry.events.truncate(before);
                    if before > 0 || entry.state().is_some() {
                        self.docs.insert(key, entry);
                    }
                    return Err(verdict);
                }
            };
            entry
                .fold
                .extend(&change.doc, &entry.events, before, &self.team);
            self.exiting = match &was {
                Some(was) if moved(was, entry.state()) => {
                    losing_sight(&self.team, was, entry.state())
                }
                _ => Vec::new(),
            };
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
            // Noted: every redaction, and every change copying events into
            // a redacted task (the rest of a redaction laid out in several
            // changes, a phone's own copy of work the redaction missed).
            // After a restore, phones that hold one offer it again, though
            // its author's phone be lost: the older version goes again, and
            // what phones built on it is taken.
            if generation > 0 && !self.vouched.contains(&hash) && (redacting.is_some() || copies) {
                self.vouching.push(hash);
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

    /// Does an earlier generation of `doc`'s task hold an event `id`?
    fn holds_in_earlier_generation(&self, doc: &str, id: &EventId) -> bool {
        let (task, generation) = split_doc_id(doc);
        self.retired_events
            .get(task)
            .is_some_and(|events| events.contains_key(id))
            || (0..generation).any(|g| {
                self.docs
                    .get(doc_id_of(task, g).as_str())
                    .is_some_and(|e| e.events.iter().any(|x| x.id == *id))
            })
    }

    /// Is `event` the scrubbed copy of one in an earlier generation of its
    /// task? (Only scrubbed: an unscrubbed copy would keep in the feed the
    /// notes the redaction deletes. A phone always scrubs what it carries.)
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
                    .is_some_and(|x| x.scrubbed() == *event)
            })
    }

    /// Commit what the relay wrote into the team document as its own change,
    /// as the next feed row (run alone in the feed writer: nothing is
    /// waiting to be committed).
    pub(crate) fn commit_team_change(&mut self, what: &str) -> Result<FeedRow> {
        self.team_doc.commit();
        let change = self
            .team_doc
            .get_last_local_change()
            .ok_or_else(|| Error::Storage(format!("{what} wrote nothing")))?;
        self.chain = chain_after(self.chain, &change.hash().0);
        Ok(FeedRow {
            seq: self.head() + 1,
            doc_id: TEAM_DOC.into(),
            hash: change.hash().0,
            bytes: change.raw_bytes().to_vec(),
            exits: Vec::new(),
            chain: self.chain,
        })
    }

    /// Give a change the next seq (it is committed with the batch).
    pub(crate) fn next_row(&mut self, doc: String, c: &Change) -> FeedRow {
        self.chain = chain_after(self.chain, &c.hash().0);
        let mut row = FeedRow {
            seq: self.head() + self.uncommitted + 1,
            doc_id: doc,
            hash: c.hash().0,
            bytes: c.raw_bytes().to_vec(),
            exits: std::mem::take(&mut self.exiting),
            chain: self.chain,
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
        self.uncommitted_at
            .insert(c.hash(), (row.seq, tag_of_chain(row.chain)));
        row
    }

    /// A change another device (or the relay) wrote, which a phone offers
    /// a relay restored from a backup: the relay took it before, and noted
    /// so beside its database, but the restored database lost it. A
    /// device's is taken as that device's own, not judged on its author's
    /// permissions again (its author's phone may be lost, or revoked); the relay's own carry-over is taken as it was
    /// first, where it fits. Any other is refused: the relay trusts a
    /// change's author only from the token of the device that pushes it.
    fn admit_for_its_author(
        &mut self,
        caller: &Caller,
        change: &Incoming,
    ) -> std::result::Result<bool, Verdict> {
        let not_its_author = || {
            refuse(
                RefusalCode::ActorMismatch,
                "the change was written by another device",
            )
        };
        let (c, _) = change.decoded.as_ref().map_err(Clone::clone)?;
        let hash = c.hash();
        let (task, generation) = split_doc_id(&change.doc);
        if generation == 0 || change.doc == TEAM_DOC {
            return Err(not_its_author());
        }
        let actor = c.actor_id().to_hex_string();
        if self.vouched.contains(&hash) {
            let Some(device) = self.team.devices.get(&actor) else {
                return Err(not_its_author());
            };
            let author = Caller {
                actor: Arc::from(actor.as_str()),
                team_id: caller.team_id.clone(),
                user_id: Arc::from(device.user_id.as_str()),
            };
            return self.admit(&author, change);
        }
        if !self.carried_by_relay.contains(&hash) {
            return Err(not_its_author());
        }
        // Where the relay would have written it: on the task's newest
        // document, after changes it holds of that document, as the next
        // change of its actor there.
        let key = self.doc_key(&change.doc);
        let fits = self.generations.get(task) == Some(&generation)
            && self
                .docs
                .get(&key)
                .is_some_and(|e| e.seqs.get(actor.as_str()).copied().unwrap_or(0) + 1 == c.seq())
            && !c.deps().is_empty()
            && c.deps()
                .iter()
                .all(|d| self.hashes.get(d).is_some_and(|of| **of == *change.doc));
        if !fits {
            return Err(refuse(
                RefusalCode::MissingDependencies,
                "it builds on a change the relay does not have",
            ));
        }
        self.admit_carry_over(&change.doc, c);
        Ok(true)
    }

    /// Take the relay's own carry-over change into the state, as `admit`
    /// takes a device's.
    pub(crate) fn admit_carry_over(&mut self, doc: &str, c: &Change) {
        let key = self.doc_key(doc);
        let relay = self.actor_key(&c.actor_id().to_hex_string());
        let team = &self.team;
        if let Some(entry) = self.docs.get_mut(&key) {
            entry.count(relay, c.seq());
            let before = entry.events.len();
            entry.events.extend(events_in_change(c));
            entry.fold.extend(doc, &entry.events, before, team);
        }
    }

    /// Take committed rows into the feed (each with the device that wrote
    /// it) and wake the long-polls.
    pub(crate) fn record(&mut self, rows: &[(FeedRow, Arc<str>)]) {
        for (r, actor) in rows {
            self.uncommitted_at.remove(&ChangeHash(r.hash));
            let doc = self.doc_key(&r.doc_id);
            self.seqs_by_doc.entry(doc.clone()).or_default().push(r.seq);
            self.hashes.insert(ChangeHash(r.hash), doc.clone());
            self.feed.push(FeedEntry {
                doc,
                tag: tag_of_chain(r.chain),
                change_tag: tag_of(&r.hash),
                size: r.bytes.len() as u32,
                actor: actor.clone(),
            });
            self.remember(Arc::from(r.bytes.as_slice()));
        }
        let head = self.head();
        // Each row's document looked up once, not once per waiting device.
        enum Row<'a> {
            /// The team document: everyone reads it.
            Team,
            /// A task document, unless a newer generation replaced it.
            Task(Option<&'a DocEntry>),
        }
        let news: Vec<(u64, &Arc<str>, Row)> = rows
            .iter()
            .map(|(r, author)| {
                let row = match r.doc_id == TEAM_DOC {
                    true => Row::Team,
                    false => Row::Task(self.current(&r.doc_id)),
                };
                (r.seq, author, row)
            })
            .collect();
        let mut gone = Vec::new();
        for (actor, w) in &self.waiters {
            if w.wake.receiver_count() == 0 {
                gone.push(actor.clone());
            } else if news.iter().any(|(seq, author, row)| {
                *author != actor
                    && match row {
                        Row::Team => true,
                        Row::Task(entry) => {
                            entry.is_some_and(|e| self.delivers_entry(*seq, e, &w.user))
                        }
                    }
            }) {
                w.wake.send_replace(head);
            }
        }
        for actor in gone {
            self.waiters.remove(&actor);
        }
    }
}

/// Did a change move the task between people (the fields reading hangs on)?
fn moved(before: &Whereabouts, after: Option<&TaskState>) -> bool {
    after.is_none_or(|a| !before.still(a))
}

/// The task as the author of a change saw it (the events it builds on),
/// without the history: nothing on the relay reads it.
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

/// A team's state being rebuilt from its stored feed: the relay reads the
/// rows and hands them in, oldest first ([`Replay::entry`]), then
/// [`Replay::finish`].
pub struct Replay {
    st: TeamState,
    team_changes: Vec<Change>,
    undecodable: Option<u64>,
}

impl Replay {
    /// `retired_events`: what the database keeps of retired generations.
    pub fn new(retired_events: HashMap<String, HashMap<EventId, [u8; 32]>>) -> Replay {
        Replay {
            st: TeamState::empty(retired_events),
            team_changes: Vec::new(),
            undecodable: None,
        }
    }

    /// The next stored feed entry.
    pub fn entry(&mut self, r: FeedRow) {
        let st = &mut self.st;
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
        st.chain = r.chain;
        st.feed.push(FeedEntry {
            doc: doc.clone(),
            tag: tag_of_chain(r.chain),
            change_tag: tag_of(&r.hash),
            size,
            actor: actor.clone(),
        });
        st.seqs_by_doc.entry(doc.clone()).or_default().push(r.seq);
        match change {
            Ok(c) if &*doc == TEAM_DOC => self.team_changes.push(c),
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
            Err(_) => self.undecodable = Some(r.seq),
        }
    }

    /// The state, once every entry is in. `relay_actor` writes the relay's
    /// own team changes; `exits` are who lost sight of which task at which
    /// seq, as admission stored them. Also the documents a newer generation
    /// superseded whose deletion the relay had not finished: to retire.
    pub fn finish(
        self,
        relay_actor: ActorId,
        exits: Vec<(String, String, u64)>,
    ) -> Result<(TeamState, Vec<Arc<str>>)> {
        let Replay {
            mut st,
            team_changes,
            undecodable,
        } = self;
        if let Some(seq) = undecodable {
            return Err(Error::Storage(format!("feed entry {seq} does not decode")));
        }
        st.team_doc.apply_changes(team_changes)?;
        st.team_doc.set_actor(relay_actor);
        st.team = Team::read(&st.team_doc);
        st.rederive(Reach::Everything);
        for (doc, user, seq) in exits {
            if let Some(entry) = st.docs.get_mut(doc.as_str()) {
                entry.lost_sight(vec![user], seq);
            }
        }
        let superseded: Vec<Arc<str>> = st
            .docs
            .keys()
            .filter(|doc| {
                let (task, generation) = split_doc_id(doc);
                st.generations.get(task).is_some_and(|&g| g > generation)
            })
            .cloned()
            .collect();
        Ok((st, superseded))
    }
}

/// What the relay keeps of a retired event: the digest of its scrubbed form.
fn scrubbed_digest(e: &Event) -> [u8; 32] {
    digest_of(&e.scrubbed())
}

fn digest_of(e: &Event) -> [u8; 32] {
    sha256(&serde_json::to_vec(e).unwrap_or_default())
}

/// The relay's rules on their own: a team state replayed from rows made
/// here, a phone's real store making the changes, and no database,
/// socket or thread of the relay's.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use handoff_core::team::TeamWriter;
    use handoff_core::{
        Category, DelegationLevel, Handoff, Member, NewTask, Priority, Role, Store, StoreOptions,
    };

    /// A clinic as the relay holds it: max (manager) and fay (front desk),
    /// each with a phone whose actor the team document binds.
    struct Clinic {
        st: TeamState,
        /// The feed's first row: the team as the relay created it.
        team_row: FeedRow,
        max: Store,
        fay: Store,
        _dir: tempfile::TempDir,
    }

    fn phone(dir: &tempfile::TempDir, name: &str) -> Store {
        Store::open(
            dir.path().join(format!("{name}.db")),
            &[7; 32],
            StoreOptions::default(),
        )
        .unwrap()
    }

    fn clinic() -> Clinic {
        let dir = tempfile::tempdir().unwrap();
        let (max, fay) = (phone(&dir, "max"), phone(&dir, "fay"));
        let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![1u8; 16]));
        let mut w = TeamWriter(&mut doc);
        w.init("Clinic").unwrap();
        for (user, role, store) in [("max", Role::Manager, &max), ("fay", Role::FrontDesk, &fay)] {
            w.member(&Member {
                user_id: user.into(),
                name: user.into(),
                role,
                trusted: false,
                active: true,
            })
            .unwrap();
            w.device(&handoff_core::Device {
                actor: store.device_actor(),
                user_id: user.into(),
                revoked: false,
            })
            .unwrap();
        }
        doc.commit();
        let change = doc.get_last_local_change().unwrap();
        let row = FeedRow {
            seq: 1,
            doc_id: TEAM_DOC.into(),
            hash: change.hash().0,
            bytes: change.raw_bytes().to_vec(),
            exits: Vec::new(),
            chain: chain_after(0, &change.hash().0),
        };
        for (user, store) in [("max", &max), ("fay", &fay)] {
            store
                .apply_remote(&[(TEAM_DOC.into(), row.bytes.clone())])
                .unwrap();
            store.set_enrolled_user(user).unwrap();
        }
        let mut replay = Replay::new(HashMap::new());
        replay.entry(row.clone());
        let (st, superseded) = replay
            .finish(ActorId::from(vec![1u8; 16]), Vec::new())
            .unwrap();
        assert!(superseded.is_empty());
        Clinic {
            st,
            team_row: row,
            max,
            fay,
            _dir: dir,
        }
    }

    fn caller(store: &Store, user: &str) -> Caller {
        Caller {
            actor: store.device_actor().into(),
            team_id: "t".into(),
            user_id: user.into(),
        }
    }

    /// A device waits in one poll at a time: a newer poll wakes the older
    /// and tells it so; another device's polls are left alone.
    #[test]
    fn a_newer_poll_of_the_same_device_wakes_the_older_and_says_so() {
        let mut c = clinic();
        let (fay, max) = (caller(&c.fay, "fay"), caller(&c.max, "max"));
        let (mut older, mut first) = (None, None);
        let (mut older_news, superseded) = c.st.wait(&fay, &mut older);
        assert!(!superseded);
        let (max_news, _) = c.st.wait(&max, &mut first);
        assert!(!c.st.wait(&fay, &mut older).1, "the same poll again");
        assert!(!older_news.has_changed().unwrap());

        let mut newer = None;
        let (_newer_news, superseded) = c.st.wait(&fay, &mut newer);
        assert!(!superseded, "the newest");
        assert!(older_news.has_changed().unwrap(), "the older is woken");
        older_news.borrow_and_update();
        assert!(c.st.wait(&fay, &mut older).1, "and hears it");
        assert!(!c.st.wait(&fay, &mut newer).1);
        assert!(!max_news.has_changed().unwrap(), "max's poll is his own");
        assert!(!c.st.wait(&max, &mut first).1);
    }

    fn recall(assignee: Option<&str>, pool: Option<Role>) -> NewTask {
        NewTask {
            handoff: Handoff {
                title: "Recall".into(),
                outcome: "booked".into(),
                why: "overdue check".into(),
                due: None,
                priority: Priority::Normal,
                category: Category::Scheduling,
                level: DelegationLevel::Delegable,
                sop: None,
                route_result_to: None,
            },
            patient: None,
            assignee: assignee.map(Into::into),
            pool,
        }
    }

    /// Admit every change in `phone`'s outbox as the relay does, and take
    /// the rows in as committed.
    fn push(st: &mut TeamState, phone: &Store, who: &Caller) -> Vec<Result<bool, Verdict>> {
        push_where(st, phone, who, |_| true)
    }

    /// [`push`], only the changes to the documents `doc` picks.
    fn push_where(
        st: &mut TeamState,
        phone: &Store,
        who: &Caller,
        doc: impl Fn(&str) -> bool,
    ) -> Vec<Result<bool, Verdict>> {
        let mut verdicts = Vec::new();
        let mut rows = Vec::new();
        for c in phone.outbox(100).unwrap() {
            if !doc(&c.doc_id) {
                continue;
            }
            let incoming = Incoming::decode(DocChange {
                doc: c.doc_id,
                bytes: c.bytes,
            });
            let verdict = st.admit(who, &incoming);
            if let (Ok(true), Ok((change, _))) = (&verdict, &incoming.decoded) {
                let actor = st.actor_key(&who.actor);
                rows.push((st.next_row(incoming.doc.clone(), change), actor));
            }
            verdicts.push(verdict);
        }
        st.uncommitted -= rows.len() as u64;
        st.record(&rows);
        verdicts
    }

    /// A second push of a change admitted but not yet committed (the
    /// phone gave up on the first and sent it again) is a duplicate that
    /// hears where the change will stand, as one committed does: its
    /// answer goes out after the first's batch is committed.
    #[test]
    fn a_duplicate_of_a_change_not_yet_committed_hears_where_it_will_stand() {
        let mut c = clinic();
        c.max.delegate(recall(None, Some(Role::FrontDesk))).unwrap();
        let max = caller(&c.max, "max");
        let change = c.max.outbox(1).unwrap().remove(0);
        let incoming = || {
            Incoming::decode(DocChange {
                doc: change.doc_id.clone(),
                bytes: change.bytes.clone(),
            })
        };
        let first = incoming();
        assert!(matches!(c.st.admit(&max, &first), Ok(true)));
        let Ok((decoded, _)) = &first.decoded else {
            unreachable!("admitted")
        };
        let actor = c.st.actor_key(&max.actor);
        let row = c.st.next_row(first.doc.clone(), decoded);
        let (seq, tag) = (row.seq, tag_of_chain(row.chain));
        assert_eq!(seq, c.st.head() + 1);
        assert!(matches!(c.st.admit(&max, &incoming()), Ok(false)));
        assert_eq!(
            c.st.position_of(&change.doc_id, &row.hash),
            Some((seq, tag))
        );
        c.st.uncommitted -= 1;
        c.st.record(&[(row, actor)]);
        assert!(c.st.uncommitted_at.is_empty(), "forgotten once committed");
        assert_eq!(
            c.st.position_of(&change.doc_id, &decoded.hash().0),
            Some((seq, tag))
        );
    }

    #[test]
    fn a_change_is_refused_when_another_device_pushes_it() {
        let mut c = clinic();
        c.max.delegate(recall(None, Some(Role::FrontDesk))).unwrap();
        let verdicts = push(&mut c.st, &c.max, &caller(&c.fay, "fay"));
        assert!(
            matches!(
                &verdicts[..],
                [Err(Verdict::Refused {
                    code: RefusalCode::ActorMismatch,
                    ..
                })]
            ),
            "{verdicts:?}"
        );
        assert_eq!(c.st.head(), 1, "nothing of it was taken in");
    }

    #[test]
    fn the_front_desk_reads_the_pool_and_not_a_task_handed_to_someone_else() {
        let mut c = clinic();
        let pooled = c.max.delegate(recall(None, Some(Role::FrontDesk))).unwrap();
        c.max.delegate(recall(Some("max"), None)).unwrap();
        let max = caller(&c.max, "max");
        let verdicts = push(&mut c.st, &c.max, &max);
        assert!(
            verdicts.iter().all(|v| matches!(v, Ok(true))),
            "{verdicts:?}"
        );
        assert_eq!(c.st.head(), 3);

        let (seqs, cursor, more) = c.st.visible_since(0, &caller(&c.fay, "fay"), PAGE_BYTES);
        assert_eq!((cursor, more), (3, false));
        let docs: Vec<String> = c.st.page(&seqs).iter().map(|e| e.doc.to_string()).collect();
        assert_eq!(docs, [TEAM_DOC.to_owned(), doc_id_of(&pooled, 0)]);
        // A page asked smaller than any change still carries one.
        let (one, cursor, more) = c.st.visible_since(0, &caller(&c.fay, "fay"), 1);
        assert_eq!((one.len(), cursor, more), (1, 1, true));
        // A device is not sent back what it wrote itself.
        let (mine, _, _) = c.st.visible_since(1, &max, PAGE_BYTES);
        assert!(mine.is_empty(), "{mine:?}");
    }

    /// A feed stored before the relay judged changes at the door can hold
    /// a task handed to someone the team did not have yet (every change
    /// the door takes names members it knows). It waits; the team change
    /// that adds her derives it again.
    #[test]
    fn a_task_waiting_for_a_new_member_is_derived_again_when_the_team_adds_her() {
        let c = clinic();
        let max = caller(&c.max, "max");
        c.max
            .put_member(&Member {
                user_id: "nia".into(),
                name: "nia".into(),
                role: Role::ClinicalAssistant,
                trusted: false,
                active: true,
            })
            .unwrap();
        let for_nia = c.max.delegate(recall(Some("nia"), None)).unwrap();
        let settled = c.max.delegate(recall(None, Some(Role::FrontDesk))).unwrap();
        // The feed as an older relay stored it: the tasks, not the hire.
        let mut replay = Replay::new(HashMap::new());
        replay.entry(c.team_row.clone());
        for (seq, change) in c.max.outbox(100).unwrap().into_iter().enumerate() {
            if change.doc_id != TEAM_DOC {
                let decoded = Change::from_bytes(change.bytes.clone()).unwrap();
                replay.entry(FeedRow {
                    seq: seq as u64 + 1,
                    doc_id: change.doc_id,
                    hash: decoded.hash().0,
                    bytes: change.bytes,
                    exits: Vec::new(),
                    chain: seq as u64,
                });
            }
        }
        let (mut st, _) = replay
            .finish(ActorId::from(vec![1u8; 16]), Vec::new())
            .unwrap();
        let entry = |st: &TeamState, task: &str| {
            let e = &st.docs[doc_id_of(task, 0).as_str()];
            (e.state().cloned(), e.fold.awaits_team())
        };
        assert_eq!(entry(&st, &for_nia), (None, true));
        assert!(!entry(&st, &settled).1);

        let verdicts = push_where(&mut st, &c.max, &max, |doc| doc == TEAM_DOC);
        assert_eq!(verdicts, [Ok(true)]);
        assert!(st.team.member("nia").is_some());
        let (state, awaits) = entry(&st, &for_nia);
        assert_eq!(state.unwrap().assignee.as_deref(), Some("nia"));
        assert!(!awaits);
    }
}
