//! The relay's logic, without HTTP: per-team state rebuilt from the feed,
//! what a push may store, what a device may pull, enrolment.
//!
//! Each team's state sits behind its own mutex. A push validates every
//! change against that state (the core's own derivation decides who may
//! read and write what), appends the accepted ones to the feed in one
//! SQLite transaction, then wakes the team's long-polls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use handoff_core::access::{may_change_team, may_read_task};
use handoff_core::derive::{derive_with_history, Outcome, Refusal, TaskState};
use handoff_core::event::Event;
use handoff_core::store::TEAM_DOC;
use handoff_core::sync::wire::{DocChange, RefusalCode, Verdict, MAX_CHANGE};
use handoff_core::task_doc::events_in_change;
use handoff_core::team::{Team, TeamWriter};
use handoff_core::{is_valid_id, Device, Member, Role};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::db::{Db, DeviceRow, FeedRow, InviteRow, TeamRow};
use crate::error::{Error, Result};

/// Changes per pull page, and bytes.
pub const PAGE_CHANGES: usize = 1000;
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Feed entries one pull looks at before answering (most may be invisible).
const PAGE_SCAN: usize = 20_000;

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
}

struct FeedEntry {
    doc: Arc<str>,
    size: u32,
    /// The device that wrote it: it is not sent back to that device.
    actor: Arc<str>,
}

/// One team, rebuilt from its feed when first needed.
pub struct TeamState {
    team_id: String,
    team_doc: AutoCommit,
    team: Team,
    docs: HashMap<Arc<str>, DocEntry>,
    /// Each feed entry's document, size and author; index = seq - 1.
    feed: Vec<FeedEntry>,
    actors: HashMap<String, Arc<str>>,
    hashes: HashSet<ChangeHash>,
    head: watch::Sender<u64>,
}

impl TeamState {
    fn load(db: &Db, row: &TeamRow) -> Result<TeamState> {
        let relay_actor = ActorId::from(
            hex::decode(&row.relay_actor)
                .map_err(|_| Error::Storage("relay actor is not hex".into()))?,
        );
        let mut st = TeamState {
            team_id: row.team_id.clone(),
            team_doc: AutoCommit::new(),
            team: Team::default(),
            docs: HashMap::new(),
            feed: Vec::new(),
            actors: HashMap::new(),
            hashes: HashSet::new(),
            head: watch::channel(0).0,
        };
        let mut team_changes = Vec::new();
        let mut failed = None;
        db.read(|conn| {
            Db::feed(conn, &row.team_id, |r| {
                let doc: Arc<str> = st.doc_key(&r.doc_id);
                let size = r.bytes.len() as u32;
                st.hashes.insert(ChangeHash(r.hash));
                let change = Change::from_bytes(r.bytes);
                let actor = match &change {
                    Ok(c) => st.actor_key(&c.actor_id().to_hex_string()),
                    Err(_) => st.actor_key(""),
                };
                st.feed.push(FeedEntry {
                    doc: doc.clone(),
                    size,
                    actor,
                });
                match change {
                    Ok(c) if &*doc == TEAM_DOC => team_changes.push(c),
                    Ok(c) => {
                        let entry = st.docs.entry(doc).or_insert_with(|| DocEntry {
                            events: Vec::new(),
                            state: None,
                        });
                        entry.events.extend(events_in_change(&c));
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
        st.head.send_replace(st.feed.len() as u64);
        Ok(st)
    }

    /// Share one allocation per document id.
    fn doc_key(&self, doc: &str) -> Arc<str> {
        match self.docs.get_key_value(doc) {
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

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// May this user read this document now?
    fn visible(&self, doc: &str, user: &str) -> bool {
        if doc == TEAM_DOC {
            return true;
        }
        match self.docs.get(doc).and_then(|e| e.state.as_ref()) {
            Some(state) => may_read_task(&self.team, user, state),
            None => false,
        }
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
            if *entry.actor != *caller.actor && self.visible(&entry.doc, &caller.user_id) {
                seqs.push(seq);
                bytes += entry.size as usize;
            }
        }
        (seqs, seq, seq < head)
    }

    /// Check one pushed change against the team's rules; on success, take
    /// it into the state and return its feed row (not yet written).
    fn admit(
        &mut self,
        caller: &Caller,
        change: &DocChange,
    ) -> std::result::Result<Option<FeedRow>, Verdict> {
        let refuse = |code: RefusalCode, reason: &str| Verdict::Refused {
            code,
            reason: reason.to_owned(),
        };
        if change.bytes.len() > MAX_CHANGE {
            return Err(refuse(RefusalCode::TooLarge, "the change is too large"));
        }
        if !is_valid_id(&change.doc) {
            return Err(refuse(RefusalCode::InvalidChange, "bad document id"));
        }
        let Ok(c) = Change::from_bytes(change.bytes.clone()) else {
            return Err(refuse(
                RefusalCode::InvalidChange,
                "not an automerge change",
            ));
        };
        let hash = c.hash();
        if self.hashes.contains(&hash) {
            return Ok(None);
        }
        if c.actor_id().to_hex_string() != caller.actor {
            return Err(refuse(
                RefusalCode::ActorMismatch,
                "the change was written by another device",
            ));
        }
        if c.deps().iter().any(|d| !self.hashes.contains(d)) {
            return Err(refuse(
                RefusalCode::MissingDependencies,
                "it builds on a change the relay does not have",
            ));
        }
        if change.doc == TEAM_DOC {
            if !may_change_team(&self.team, &caller.user_id) {
                return Err(refuse(
                    RefusalCode::Forbidden,
                    "your role may not change the team",
                ));
            }
            let mut doc = self.team_doc.clone();
            if doc.apply_changes([c]).is_err() {
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
            let new_events = events_in_change(&c);
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
            let (events, prior) = match self.docs.get(&key) {
                Some(e) => (e.events.clone(), e.state.as_ref()),
                None => (Vec::new(), None),
            };
            // Write access is judged on the task as its author saw it (the
            // events the new ones build on): a claim that lost a race to
            // another claim is still the front desk's to make, and is kept
            // so that both phones derive who won.
            let seen = if new_events.is_empty() {
                prior.cloned()
            } else {
                derive(&change.doc, &causal_past(&events, &new_events), &self.team)
            };
            let may_write = match (&seen, prior) {
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
            let mut all = events;
            all.extend(new_events.iter().cloned());
            let (state, history) = derive_with_history(&change.doc, all.clone(), &self.team);
            for e in &new_events {
                let id = e.id.to_string();
                if let Some(h) = history.iter().find(|h| h.event_id == id) {
                    if let Outcome::Refused { refusal } = &h.outcome {
                        if is_role_refusal(refusal) {
                            return Err(refuse(RefusalCode::NotPermitted, &refusal.to_string()));
                        }
                    }
                }
            }
            let state = state.map(|mut s| {
                s.history = history;
                s
            });
            self.docs.insert(key, DocEntry { events: all, state });
        }
        Ok(Some(FeedRow {
            seq: 0,
            doc_id: change.doc.clone(),
            hash: hash.0,
            bytes: change.bytes.clone(),
        }))
    }

    fn known_in_earlier_generation(&self, doc: &str, event: &Event) -> bool {
        let Some((task, generation)) = doc.rsplit_once('.') else {
            return false;
        };
        let Ok(generation) = generation.parse::<u32>() else {
            return false;
        };
        (0..generation).any(|g| {
            let earlier = if g == 0 {
                task.to_owned()
            } else {
                format!("{task}.{g}")
            };
            self.docs
                .get(earlier.as_str())
                .is_some_and(|e| e.events.iter().any(|x| x.id == event.id))
        })
    }

    fn record(&mut self, rows: &[FeedRow], actor: &str) {
        let actor = self.actor_key(actor);
        for r in rows {
            let doc = self.doc_key(&r.doc_id);
            self.feed.push(FeedEntry {
                doc,
                size: r.bytes.len() as u32,
                actor: actor.clone(),
            });
            self.hashes.insert(ChangeHash(r.hash));
        }
    }
}

fn derive(doc: &str, events: &[Event], team: &Team) -> Option<TaskState> {
    handoff_core::derive::derive(doc, events.to_vec(), team)
}

/// The events `new` build on, transitively.
fn causal_past(events: &[Event], new: &[Event]) -> Vec<Event> {
    let by_id: HashMap<&handoff_core::EventId, &Event> =
        events.iter().map(|e| (&e.id, e)).collect();
    let mut seen: HashSet<&handoff_core::EventId> = HashSet::new();
    let mut stack: Vec<&handoff_core::EventId> = new.iter().flat_map(|e| e.deps.iter()).collect();
    while let Some(id) = stack.pop() {
        if let Some(e) = by_id.get(id) {
            if seen.insert(id) {
                stack.extend(e.deps.iter());
            }
        }
    }
    events
        .iter()
        .filter(|e| seen.contains(&e.id))
        .cloned()
        .collect()
}

/// Refusals that say the user's role or identity does not allow the action:
/// the relay refuses those. Refusals that come from a race (someone claimed
/// first, the task closed meanwhile) are kept: every device derives them the
/// same way and shows them to their author.
fn is_role_refusal(r: &Refusal) -> bool {
    matches!(
        r,
        Refusal::NotAMember { .. }
            | Refusal::DeviceNotEnrolled { .. }
            | Refusal::NotPermitted { .. }
            | Refusal::ClinicianOnly { .. }
            | Refusal::NeedsReview
    )
}

/// The relay: the database and the loaded teams.
pub struct Relay {
    pub db: Db,
    teams: Mutex<HashMap<String, Arc<Mutex<TeamState>>>>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relay {
    pub fn new(db: Db) -> Relay {
        Relay {
            db,
            teams: Mutex::new(HashMap::new()),
        }
    }

    /// The team's state, loading it from the feed on first use.
    pub fn team(&self, team_id: &str) -> Result<Arc<Mutex<TeamState>>> {
        if let Some(t) = lock(&self.teams).get(team_id) {
            return Ok(t.clone());
        }
        let row = self
            .db
            .read(|c| Db::team(c, team_id))?
            .ok_or(Error::NotFound("no such team"))?;
        let state = Arc::new(Mutex::new(TeamState::load(&self.db, &row)?));
        Ok(lock(&self.teams)
            .entry(team_id.to_owned())
            .or_insert(state)
            .clone())
    }

    fn forget_team(&self, team_id: &str) {
        lock(&self.teams).remove(team_id);
    }

    pub fn loaded_feed_length(&self) -> u64 {
        let teams: Vec<_> = lock(&self.teams).values().cloned().collect();
        teams.iter().map(|t| lock(t).head()).sum()
    }

    /// Who is calling, from the bearer token.
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

    /// Store what may be stored, one verdict per change, in order.
    pub fn push(&self, caller: &Caller, changes: &[DocChange]) -> Result<Vec<Verdict>> {
        let team = self.team(&caller.team_id)?;
        let mut st = lock(&team);
        let mut verdicts = Vec::with_capacity(changes.len());
        let mut rows = Vec::new();
        for change in changes {
            match st.admit(caller, change) {
                Ok(Some(mut row)) => {
                    row.seq = st.head() + rows.len() as u64 + 1;
                    // Later changes in this batch may build on it, and a
                    // second copy of it in the batch is a duplicate.
                    st.hashes.insert(ChangeHash(row.hash));
                    rows.push(row);
                    verdicts.push(Verdict::Stored);
                }
                Ok(None) => verdicts.push(Verdict::Duplicate),
                Err(v) => verdicts.push(v),
            }
        }
        if rows.is_empty() {
            return Ok(verdicts);
        }
        let written = (|| {
            let conn = self.db.write();
            let tx = conn.unchecked_transaction()?;
            for r in &rows {
                Db::append_feed(&tx, &st.team_id, r)?;
            }
            tx.commit()?;
            Ok::<_, Error>(())
        })();
        if let Err(e) = written {
            // Memory ran ahead of the database: rebuild from the feed.
            drop(st);
            self.forget_team(&caller.team_id);
            return Err(e);
        }
        st.record(&rows, &caller.actor);
        let head = st.head();
        st.head.send_replace(head);
        Ok(verdicts)
    }

    /// Every change of a document the caller may read that is not behind
    /// `have` (heads the caller holds; unknown ones are ignored).
    pub fn repair(&self, caller: &Caller, doc: &str, have: &[[u8; 32]]) -> Result<Vec<Vec<u8>>> {
        let team = self.team(&caller.team_id)?;
        {
            let st = lock(&team);
            if !st.visible(doc, &caller.user_id) {
                return Err(Error::NotFound("no such document"));
            }
        }
        let changes = self.db.read(|c| Db::doc_changes(c, &caller.team_id, doc))?;
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
        let mut st = lock(&team);
        if self.db.read(|c| Db::device(c, &actor))?.is_some() {
            return Err(Error::Conflict("this device is already enrolled".into()));
        }
        let mut doc = st.team_doc.clone();
        {
            let mut w = TeamWriter(&mut doc);
            if !st.team.members.contains_key(&row.user_id) {
                w.member(&Member {
                    user_id: row.user_id.clone(),
                    name: row.name.clone(),
                    role,
                    trusted: false,
                    active: true,
                })?;
            }
            w.device(&Device {
                actor: actor.clone(),
                user_id: row.user_id.clone(),
                revoked: false,
            })?;
        }
        doc.commit();
        let change = doc
            .get_last_local_change()
            .ok_or(Error::Storage("enrolment wrote nothing".into()))?;
        let feed_row = FeedRow {
            seq: st.head() + 1,
            doc_id: TEAM_DOC.into(),
            hash: change.hash().0,
            bytes: change.raw_bytes().to_vec(),
        };
        let token = random_hex(32);
        {
            let conn = self.db.write();
            let tx = conn.unchecked_transaction()?;
            if !Db::redeem_invite(&tx, &code_hash, &actor, now)? {
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
        }
        st.team_doc = doc;
        st.team = Team::read(&st.team_doc);
        st.rederive_all();
        let relay_actor = st.team_doc.get_actor().to_hex_string();
        st.record(std::slice::from_ref(&feed_row), &relay_actor);
        let head = st.head();
        st.head.send_replace(head);
        Ok((token, row))
    }
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
