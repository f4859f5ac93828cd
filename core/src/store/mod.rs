//! The device's local store: automerge documents, the view index and the
//! outbox in one SQLCipher-encrypted SQLite file.
//!
//! Every write is one SQLite transaction holding the automerge change, the
//! index rows it changes and its outbox entry: when a call returns `Ok`, the
//! write is durable; when it returns `Err`, nothing was written.

mod checkpoint;
mod docs;
mod enrolment;
mod index;
pub(crate) mod schema;
mod views;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};

use automerge::{ActorId, AutoCommit, Change};
use rand::RngCore;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use checkpoint::Checkpointer;

use crate::access::{self, sight};
use crate::clock::{Clock, SystemClock};
use crate::derive::{derive, derive_at_door, with_history, FoldedTask, Refusal, TaskState};
use crate::error::{Error, Result};
use crate::event::{Action, Event, EventId};
use crate::model::{
    CallAttempt, Device, Handoff, Member, PatientRef, Policy, Role, RolePermissions, SopTemplate,
    TaskId, Timestamp, UserId, DAY_MS,
};
use crate::task_doc::{self, Shape};
use crate::team::{Reach, Team, TeamWriter};

pub use docs::{COMPACT_AFTER, TEAM_DOC};
pub use enrolment::{
    ChangeToOffer, FeedCursor, Offered, RelaySettings, Released, MAX_OFFERS, OFFERS_PER_TRY,
    RESTORE_WINDOW_MS,
};
pub use views::{
    AttentionItem, Escalation, MyQueue, OwnerKpis, ReviewItem, TaskCommand, TaskDetail, TaskSummary,
};

pub use crate::input::MAX_TEXT;
use crate::input::{check_opt, check_text};

/// How hard a write waits for the disk before returning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: survives power loss. The default.
    Full,
    /// `synchronous=NORMAL`: survives the app being killed, may lose the
    /// last writes on power loss.
    Normal,
}

#[derive(Clone)]
pub struct StoreOptions {
    pub durability: Durability,
    /// The phone's offset from UTC, for "today" in my queue.
    pub utc_offset_minutes: i32,
    pub clock: Arc<dyn Clock>,
    /// Task documents kept loaded in memory (a write to a loaded document
    /// skips reading and parsing it).
    pub doc_cache_capacity: usize,
    /// Checkpoint the WAL on the store's own thread (the default), or in
    /// the commit that crosses SQLite's threshold, as SQLite does by itself.
    pub checkpoint_thread: bool,
    /// Told how far a long open has come. A store last written under other
    /// rules (an app update that changed them) derives every task again
    /// inside [`Store::open`], once: seconds for a year of a busy clinic on
    /// a phone, which the app can show ("Updating your tasks…"). A usual
    /// open does not call it.
    pub on_open_progress: Option<Arc<dyn Fn(OpenProgress) + Send + Sync>>,
}

/// How far [`Store::open`] has come deriving the tasks again: `done` of
/// `total`, from 0 to `total`, at least every [`OpenProgress::EVERY`]
/// tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenProgress {
    pub done: usize,
    pub total: usize,
}

impl OpenProgress {
    pub const EVERY: usize = 100;
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Full,
            utc_offset_minutes: 0,
            clock: Arc::new(SystemClock),
            doc_cache_capacity: 256,
            checkpoint_thread: true,
            on_open_progress: None,
        }
    }
}

/// What a delegator fills in to hand a task off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    pub handoff: Handoff,
    pub patient: Option<PatientRef>,
    /// Who does it. `None` puts it in `pool`.
    pub assignee: Option<UserId>,
    /// The role whose shared pool it waits in when nobody is assigned.
    pub pool: Option<Role>,
}

/// A change written by this device, waiting for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingChange {
    pub id: i64,
    pub doc_id: String,
    pub bytes: Vec<u8>,
}

/// What applying a batch of incoming changes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    pub applied: usize,
    pub duplicates: usize,
    /// Changes that did not decode; nothing of them was kept.
    pub invalid: usize,
    /// Changes to a task document this device already replaced by a newer
    /// generation (a redaction): dropped, the relay carries their events.
    pub retired: usize,
    pub tasks_updated: usize,
    /// The team document changed (members, roles, templates, policy): the
    /// views read it, so they may show something new even when no task
    /// was derived again.
    pub team_changed: bool,
    /// What this device's user may read changed (role, promotion, made
    /// active again): its relay cursor went back to the start of the feed.
    pub read_again: bool,
    /// Documents still missing some changes their new changes build on
    /// (they just became visible to this device): ask the relay to repair.
    pub incomplete: Vec<String>,
    /// Documents the relay sent a change of that this device held already:
    /// a pull started over, or another device offered again what a relay
    /// restored from a backup had lost.
    pub redelivered: BTreeSet<String>,
}

pub struct Store {
    db: Mutex<Db>,
    /// The views' own connection (read only): lists render while a write
    /// or a long merge holds `db`. WAL lets it read the last commit.
    reader: Mutex<Connection>,
    /// What the views need besides the index, as the writer last left it.
    seen: RwLock<Seen>,
    /// Declared after `db`: the writer's connection closes first, which
    /// stops the thread.
    _checkpointer: Option<Checkpointer>,
}

struct Db {
    conn: Connection,
    st: State,
}

struct State {
    actor: ActorId,
    actor_hex: String,
    user: Option<UserId>,
    team: Option<Team>,
    /// Counts changes of `team`, so the views' copy is replaced only then.
    team_version: u64,
    docs: docs::DocCache,
    clock: Arc<dyn Clock>,
    utc_offset_ms: i64,
    /// An older generation of a task may be kept beside its newer one
    /// (a withdrawn redaction's, see `reindex_doc`): set when one is kept,
    /// and on open; cleared once [`Store::retire_kept_generations`] finds
    /// none, so a sync round does not look for them in every document.
    may_keep_older: bool,
}

impl State {
    fn set_team(&mut self, team: Option<Team>) {
        self.team = team;
        self.team_version += 1;
        self.docs.forget_folds();
    }
}

/// The user and team as of the writer's last change, for the views.
#[derive(Clone)]
struct Seen {
    actor_hex: String,
    user: Option<UserId>,
    team: Option<Arc<Team>>,
    team_version: u64,
    clock: Arc<dyn Clock>,
    utc_offset_ms: i64,
}

/// The writer's lock. Letting go of it hands the views the user and team as
/// they now are: no path that changes them can forget to.
struct Writer<'a> {
    db: MutexGuard<'a, Db>,
    seen: &'a RwLock<Seen>,
}

impl Deref for Writer<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        &mut self.db
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let st = &self.db.st;
        let stale = {
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            seen.team_version != st.team_version
                || seen.user != st.user
                || seen.actor_hex != st.actor_hex
        };
        if stale {
            let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
            seen.actor_hex = st.actor_hex.clone();
            seen.user = st.user.clone();
            seen.team = st.team.clone().map(Arc::new);
            seen.team_version = st.team_version;
        }
    }
}

impl Store {
    /// Open (or create) the store at `path` with the host's 32-byte key.
    pub fn open(path: impl AsRef<Path>, key: &[u8], options: StoreOptions) -> Result<Store> {
        if key.len() != 32 {
            return Err(Error::InvalidInput("the store key must be 32 bytes".into()));
        }
        let path = path.as_ref();
        let mut conn = connect(path, key, options.durability)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // rusqlite keeps 16 prepared statements by default; the write path
        // alone uses more, and re-parsing them cost most of a write.
        conn.set_prepared_statement_cache_capacity(128);
        schema::upgrade(&conn)?;

        let actor_hex = match meta(&conn, "actor")? {
            Some(a) => a,
            None => {
                let mut bytes = [0u8; 16];
                rand::rng().fill_bytes(&mut bytes);
                let a = hex::encode(bytes);
                set_meta(&conn, "actor", &a)?;
                a
            }
        };
        let actor = ActorId::from(
            hex::decode(&actor_hex).map_err(|_| Error::Corrupt("device actor id is not hex"))?,
        );
        let user = meta(&conn, "user")?;
        let mut st = State {
            actor,
            actor_hex,
            user,
            team: None,
            team_version: 0,
            docs: docs::DocCache::with_capacity(options.doc_cache_capacity),
            clock: options.clock,
            utc_offset_ms: i64::from(options.utc_offset_minutes) * 60_000,
            may_keep_older: true,
        };
        if let Some(doc) = docs::load(&conn, TEAM_DOC, &st.actor)? {
            st.set_team(Some(Team::read(&doc)));
            st.docs.put(TEAM_DOC, doc);
        }
        // The index holds what this build's rules derive: a store last
        // written by a build with other rules is derived again, once.
        if meta(&conn, "rules")?.as_deref() != Some(crate::derive::RULES) {
            let tx = conn.unchecked_transaction()?;
            if let Some(team) = st.team.clone() {
                reindex_all(&tx, &mut st, &team, options.on_open_progress.as_deref())?;
            }
            set_meta(&tx, "rules", crate::derive::RULES)?;
            tx.commit()?;
        }
        let reader = connect(path, key, options.durability)?;
        reader.pragma_update(None, "query_only", "ON")?;
        reader.set_prepared_statement_cache_capacity(32);
        let seen = Seen {
            actor_hex: st.actor_hex.clone(),
            user: st.user.clone(),
            team: st.team.clone().map(Arc::new),
            team_version: st.team_version,
            clock: Arc::clone(&st.clock),
            utc_offset_ms: st.utc_offset_ms,
        };
        // Last: once started, the thread ends only when `conn` is dropped,
        // so no early return may come after it.
        let checkpointer = if options.checkpoint_thread {
            Checkpointer::start(&mut conn, connect(path, key, options.durability)?)?
        } else {
            None
        };
        Ok(Store {
            db: Mutex::new(Db { conn, st }),
            reader: Mutex::new(reader),
            seen: RwLock::new(seen),
            _checkpointer: checkpointer,
        })
    }

    fn lock(&self) -> Writer<'_> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back), so a poisoned lock is still usable.
        Writer {
            db: self.db.lock().unwrap_or_else(|p| p.into_inner()),
            seen: &self.seen,
        }
    }

    /// The writer's lock if nobody holds it now.
    fn try_lock(&self) -> Option<Writer<'_>> {
        let db = match self.db.try_lock() {
            Ok(db) => db,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(Writer {
            db,
            seen: &self.seen,
        })
    }

    /// The views' connection, and the user and team they read with.
    fn read(&self) -> views::Read<'_> {
        let seen = self.seen.read().unwrap_or_else(|p| p.into_inner()).clone();
        views::Read {
            conn: self.reader.lock().unwrap_or_else(|p| p.into_inner()),
            seen,
        }
    }

    /// This device's automerge actor id (hex), which the relay binds to its user.
    pub fn device_actor(&self) -> String {
        self.lock().st.actor_hex.clone()
    }

    /// The user this device is enrolled for.
    pub fn user(&self) -> Option<UserId> {
        self.read().seen.user.clone()
    }

    pub fn team(&self) -> Option<Team> {
        self.read().seen.team.as_deref().cloned()
    }

    pub fn now(&self) -> Timestamp {
        self.lock().st.clock.now()
    }

    // ---- the team -------------------------------------------------------

    /// Start a new team on this device, with its first member (who must be
    /// able to manage the team) enrolled on it.
    pub fn create_team(&self, name: &str, first: Member) -> Result<()> {
        check_text("team name", name, 200)?;
        check_id("user id", &first.user_id)?;
        if !first.role.default_permissions().may_manage_team {
            return Err(Error::InvalidInput(
                "the first member must be an admin or a manager".into(),
            ));
        }
        let mut db = self.lock();
        if db.st.user.is_some() || db.st.team.is_some() {
            return Err(Error::AlreadyEnrolled);
        }
        let Db { conn, st } = &mut *db;
        let mut doc = AutoCommit::new().with_actor(st.actor.clone());
        {
            let mut w = TeamWriter(&mut doc);
            w.init(name)?;
            w.member(&first)?;
            w.device(&Device {
                actor: st.actor_hex.clone(),
                user_id: first.user_id.clone(),
                revoked: false,
            })?;
        }
        let tx = conn.unchecked_transaction()?;
        docs::insert_document(&tx, TEAM_DOC, "team", None, 0)?;
        docs::commit_local(&tx, TEAM_DOC, &mut doc, st.clock.now())?;
        set_meta(&tx, "user", &first.user_id)?;
        tx.commit()?;
        st.user = Some(first.user_id);
        st.set_team(Some(Team::read(&doc)));
        st.docs.put(TEAM_DOC, doc);
        Ok(())
    }

    /// Record which user this device is enrolled for (the relay binds the
    /// device's actor id to it; the team document arrives by sync).
    pub fn set_enrolled_user(&self, user: &str) -> Result<()> {
        check_id("user id", user)?;
        let mut db = self.lock();
        if db.st.user.as_deref().is_some_and(|u| u != user) {
            return Err(Error::AlreadyEnrolled);
        }
        set_meta(&db.conn, "user", user)?;
        db.st.user = Some(user.into());
        Ok(())
    }

    pub fn put_member(&self, member: &Member) -> Result<()> {
        check_id("user id", &member.user_id)?;
        check_text("name", &member.name, 200)?;
        self.write_team(|w| w.member(member))
    }

    /// Bind a device's actor id to a user: what the relay does at enrolment,
    /// for a team kept without one (tests, the example). Revoking a device is
    /// the relay's alone (`handoff-server revoke`): it refuses any phone's
    /// change to the team's devices, and writes the revocation itself.
    pub fn register_device(&self, actor_hex: &str, user: &str) -> Result<()> {
        check_actor(actor_hex)?;
        self.write_team(|w| {
            w.device(&Device {
                actor: actor_hex.to_ascii_lowercase(),
                user_id: user.into(),
                revoked: false,
            })
        })
    }

    pub fn put_sop(&self, sop: &SopTemplate) -> Result<()> {
        check_id("template id", &sop.id)?;
        check_text("template name", &sop.name, 200)?;
        for item in sop.checklist.iter().chain(&sop.questions) {
            check_text("template item", item, 1000)?;
        }
        self.write_team(|w| w.sop(sop))
    }

    pub fn set_policy(&self, policy: &Policy) -> Result<()> {
        if policy.max_call_attempts == 0 {
            return Err(Error::InvalidInput(
                "max call attempts must be at least 1".into(),
            ));
        }
        self.write_team(|w| w.policy(policy))
    }

    pub fn set_role_permissions(&self, role: Role, perms: &RolePermissions) -> Result<()> {
        // What a role allows is judged at the door, not in the fold (see
        // `access::may_act`): no task derives differently.
        self.write_team(|w| w.role(role, perms))
    }

    /// One change to the team document, by a member who may manage the team.
    /// The tasks it can change (see [`Team::reach_from`]) are derived again
    /// in the same transaction.
    fn write_team(&self, edit: impl FnOnce(&mut TeamWriter<'_>) -> Result<()>) -> Result<()> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let user = st.user.clone().ok_or(Error::NotEnrolled)?;
        let team = st.team.as_ref().ok_or(Error::NotEnrolled)?;
        if !team.permissions(&user).may_manage_team {
            return Err(Refusal::NotPermitted {
                action: "change the team".into(),
            }
            .into());
        }
        let mut doc = match st.docs.take(TEAM_DOC) {
            Some(d) => d,
            None => docs::load(conn, TEAM_DOC, &st.actor)?.ok_or(Error::NotEnrolled)?,
        };
        let result = (|| {
            edit(&mut TeamWriter(&mut doc))?;
            let tx = conn.unchecked_transaction()?;
            docs::commit_local(&tx, TEAM_DOC, &mut doc, st.clock.now())?;
            docs::maybe_compact(&tx, TEAM_DOC, &mut doc)?;
            let team = Team::read(&doc);
            let before = st.team.clone();
            rederive_for_team(&tx, st, before.as_ref(), &team, None)?;
            // This user now sees more, or less (an admin who made herself
            // a manager): their pulls passed over tasks they may now read,
            // and the relay never sends a device its own change back,
            // where `apply_remote` would notice. The feed is read again
            // from its start (what this device holds is skipped).
            if before
                .as_ref()
                .is_some_and(|b| sight(b, &user) != sight(&team, &user))
            {
                read_feed_again(&tx)?;
            }
            tx.commit()?;
            Ok(team)
        })();
        match result {
            Ok(team) => {
                st.set_team(Some(team));
                st.docs.put(TEAM_DOC, doc);
                Ok(())
            }
            Err(e) => {
                st.docs.clear();
                Err(e)
            }
        }
    }

    // ---- tasks ----------------------------------------------------------

    /// Hand a task off: to a person, or to a role's shared pool.
    pub fn delegate(&self, new: NewTask) -> Result<TaskId> {
        if let Some(p) = &new.patient {
            check_text("patient name", &p.display_name, 200)?;
            check_opt("patient phone", &p.phone, 100)?;
            check_opt("patient record", &p.record_ref, 100)?;
        }
        if new.assignee.is_none() && new.pool.is_none() {
            return Err(Error::InvalidInput(
                "a task needs an assignee or a pool to wait in".into(),
            ));
        }
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let user = st.user.clone().ok_or(Error::NotEnrolled)?;
        let team = st.team.as_ref().ok_or(Error::NotEnrolled)?;
        if let Some(assignee) = &new.assignee {
            active_member(team, assignee)?;
        }
        let (checklist, questions) = match &new.handoff.sop {
            Some(id) => {
                let sop = team.sops.get(id).ok_or_else(|| {
                    Error::InvalidInput(format!("no SOP template '{id}' in this team"))
                })?;
                (sop.checklist.clone(), sop.questions.clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let task_id = hex::encode(id);
        let now = st.clock.now();
        let event = Event {
            id: EventId {
                actor: st.actor_hex.clone(),
                n: 1,
            },
            deps: Vec::new(),
            lt: 1,
            at: now,
            by: user,
            action: Action::Created {
                handoff: new.handoff,
                checklist,
                questions,
                pool: new.pool,
                assignee: new.assignee,
            },
        };
        event.action.check_input()?;
        let state = checked(&task_id, std::slice::from_ref(&event), &event, team)?;
        let mut doc = task_doc::new_doc(&task_id, 0, &st.actor)?;
        if let Some(p) = &new.patient {
            task_doc::put_patient(&mut doc, p)?;
        }
        task_doc::append(&mut doc, &event)?;
        let tx = conn.unchecked_transaction()?;
        docs::insert_document(&tx, &task_id, "task", Some(&task_id), 0)?;
        docs::commit_local(&tx, &task_id, &mut doc, now)?;
        index::upsert(&tx, &task_id, &state)?;
        tx.commit()?;
        st.docs.put(&task_id, doc);
        Ok(task_id)
    }

    pub fn assign(&self, task: &str, to: &str) -> Result<()> {
        {
            let db = self.lock();
            let team = db.st.team.as_ref().ok_or(Error::NotEnrolled)?;
            active_member(team, to)?;
        }
        self.act(task, |_| Action::Assigned { to: to.into() })
    }
    /// The assignee's "repeat back" of the handoff.
    pub fn acknowledge(&self, task: &str, note: &str) -> Result<()> {
        self.act(task, |_| Action::Acknowledged { note: note.into() })
    }
    pub fn claim(&self, task: &str) -> Result<()> {
        self.act(task, |_| Action::Claimed)
    }
    pub fn start(&self, task: &str) -> Result<()> {
        self.act(task, |_| Action::Started)
    }
    pub fn tick_checklist_item(&self, task: &str, item: u32) -> Result<()> {
        self.act(task, |_| Action::ChecklistItemDone { item })
    }
    pub fn log_call(&self, task: &str, attempt: CallAttempt) -> Result<()> {
        self.act(task, |_| Action::CallLogged { attempt })
    }
    pub fn comment(&self, task: &str, text: &str) -> Result<()> {
        self.act(task, |_| Action::Commented { text: text.into() })
    }
    pub fn submit(&self, task: &str, note: &str) -> Result<()> {
        self.act(task, |_| Action::Submitted { note: note.into() })
    }
    /// Approve the version of the task this device holds now.
    pub fn approve(&self, task: &str, note: &str) -> Result<()> {
        self.act(task, |doc| Action::Approved {
            heads: doc.get_heads().iter().map(|h| h.to_string()).collect(),
            note: note.into(),
        })
    }
    pub fn return_work(&self, task: &str, feedback: &str) -> Result<()> {
        self.act(task, |_| Action::Returned {
            feedback: feedback.into(),
        })
    }
    pub fn complete(&self, task: &str, note: &str) -> Result<()> {
        self.act(task, |_| Action::Completed { note: note.into() })
    }
    pub fn cancel(&self, task: &str, reason: &str) -> Result<()> {
        self.act(task, |_| Action::Cancelled {
            reason: reason.into(),
        })
    }
    pub fn escalate(&self, task: &str, reason: &str) -> Result<()> {
        self.act(task, |_| Action::Escalated {
            reason: reason.into(),
        })
    }

    /// Append one event to a task, if the rules let it take effect.
    fn act(&self, task_id: &str, action: impl FnOnce(&mut AutoCommit) -> Action) -> Result<()> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let user = st.user.clone().ok_or(Error::NotEnrolled)?;
        let team = st.team.as_ref().ok_or(Error::NotEnrolled)?;
        let doc_id = index::doc_of(conn, task_id)?;
        let mut doc = match st.docs.take(&doc_id) {
            Some(d) => d,
            None => docs::load(conn, &doc_id, &st.actor)?
                .ok_or(Error::Corrupt("indexed task has no document"))?,
        };
        let heads = doc.get_heads();
        // Taken out of the cache (not copied), put back below. The fold
        // kept with them takes the new event alone.
        let mut parsed = st.docs.take_events(&doc_id, &doc, &heads);
        let folded = match parsed.folded.take() {
            Some(f) => f,
            None => FoldedTask::of(task_id, &parsed.events, team),
        };
        if parsed.events.len() >= crate::event::MAX_TASK_EVENTS {
            parsed.folded = Some(folded);
            st.docs.put(&doc_id, doc);
            st.docs.put_events(&doc_id, heads, parsed);
            return Err(Error::InvalidInput(format!(
                "a task holds at most {} events: carry on in a new task",
                crate::event::MAX_TASK_EVENTS
            )));
        }
        let now = st.clock.now();
        let event = folded.next_event(&st.actor_hex, &user, now, action(&mut doc));
        let unapplied = folded.unapplied();
        let judged = match event.action.check_input() {
            Ok(()) => folded
                .take(task_id, &parsed.events, &event, team)
                .map_err(Error::from),
            Err(e) => {
                parsed.folded = Some(folded);
                Err(e)
            }
        };
        let folded = match judged {
            Ok(f) => f,
            Err(e) => {
                st.docs.put(&doc_id, doc);
                st.docs.put_events(&doc_id, heads, parsed);
                return Err(e);
            }
        };
        parsed.events.push(event);
        let state = folded.state().ok_or(Refusal::NotCreatedYet)?;
        // A new event follows every other, so taken alone it can only
        // supersede an earlier one; folded among them (see
        // `FoldedTask::take`), it can change any later one's outcome.
        let moved = folded.folded_anew() || folded.unapplied() != unapplied;
        let history = match moved {
            false => None,
            true => Some(
                folded
                    .with_history(&parsed.events)
                    .ok_or(Error::Corrupt("a fold of other events"))?
                    .history,
            ),
        };
        let result: Result<()> = (|| {
            let event = parsed.events.last().ok_or(Error::Corrupt("no event"))?;
            task_doc::append(&mut doc, event)?;
            let tx = conn.unchecked_transaction()?;
            docs::commit_local(&tx, &doc_id, &mut doc, now)?;
            index::upsert_row(&tx, &doc_id, state)?;
            if let Some(history) = &history {
                index::write_attention(&tx, task_id, history)?;
            }
            docs::maybe_compact(&tx, &doc_id, &mut doc)?;
            tx.commit()?;
            Ok(())
        })();
        // On an error the in-memory document may hold the change the
        // database does not: it is dropped, with the events and fold.
        result?;
        parsed.folded = Some(folded);
        let heads = doc.get_heads();
        st.docs.put(&doc_id, doc);
        st.docs.put_events(&doc_id, heads, parsed);
        Ok(())
    }

    /// Remove the patient's details from a task, and the history that held
    /// them: the task moves to a new document (next generation) holding the
    /// same events with their free text scrubbed. Other devices migrate to it
    /// when it reaches them, carrying over any event the redaction missed.
    pub fn redact_patient(&self, task_id: &str) -> Result<()> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let user = st.user.clone().ok_or(Error::NotEnrolled)?;
        let team = st.team.as_ref().ok_or(Error::NotEnrolled)?;
        if !team.permissions(&user).may_delegate {
            return Err(Refusal::NotPermitted {
                action: "redact patient details".into(),
            }
            .into());
        }
        let old_id = index::doc_of(conn, task_id)?;
        let old = match st.docs.take(&old_id) {
            Some(d) => d,
            None => docs::load(conn, &old_id, &st.actor)?
                .ok_or(Error::Corrupt("indexed task has no document"))?,
        };
        let generation = task_doc::generation(&old) + 1;
        let (events, _) = task_doc::events(&old);
        let new_id = task_doc::doc_id_of(task_id, generation);
        let mut doc = task_doc::new_doc(task_id, generation, &st.actor)?;
        let tx = conn.unchecked_transaction()?;
        docs::insert_document(&tx, &new_id, "task", Some(task_id), generation)?;
        append_own_in_chunks(
            &tx,
            st,
            &new_id,
            &mut doc,
            events.iter(),
            CarriedAs::Scrubbed,
        )?;
        let state = derive(task_id, task_doc::events(&doc).0, team)
            .ok_or(Error::Corrupt("task has no created event"))?;
        retire(&tx, &old_id, &new_id, &st.actor)?;
        index::upsert(&tx, &new_id, &state)?;
        tx.commit()?;
        // Its events (notes and all) and their fold too, not only the
        // document taken above.
        st.docs.remove(&old_id);
        st.docs.put(&new_id, doc);
        Ok(())
    }

    // ---- sync -----------------------------------------------------------

    /// Apply changes that came from other devices, in any order, duplicates
    /// welcome: documents and the index move in one transaction.
    pub fn apply_remote(&self, changes: &[(String, Vec<u8>)]) -> Result<MergeReport> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let mut report = MergeReport::default();
        let mut by_doc: BTreeMap<&str, Vec<Change>> = BTreeMap::new();
        for (doc_id, bytes) in changes {
            if check_doc_id(doc_id).is_err() {
                report.invalid += 1;
                continue;
            }
            match crate::sync::wire::decode_change(bytes.clone()) {
                Some(c) => by_doc.entry(doc_id).or_default().push(c),
                None => report.invalid += 1,
            }
        }
        // A panic (automerge asserts on some hand-made changes) fails the
        // batch like an error: memory is set right below, and the app
        // goes on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tx = conn.unchecked_transaction()?;
            let mut touched = BTreeSet::new();
            // Compared with the team after, if this batch changes it.
            let team_before = match by_doc.contains_key(TEAM_DOC) {
                true => st.team.clone(),
                false => None,
            };
            let mut team_changed = false;
            // This device's user's sight after each team change, from where
            // the team lists the device ([`access::device_sight`]).
            let mut sights = Vec::new();
            let actor = st.actor_hex.clone();
            for (doc_id, changes) in by_doc {
                if doc_id != TEAM_DOC && superseded(&tx, st, doc_id)? {
                    report.retired += changes.len();
                    continue;
                }
                let kind = if doc_id == TEAM_DOC { "team" } else { "task" };
                docs::insert_document(&tx, doc_id, kind, None, 0)?;
                let mut doc = match st.docs.take(doc_id) {
                    Some(d) => d,
                    None => docs::load(&tx, doc_id, &st.actor)?
                        .unwrap_or_else(|| AutoCommit::new().with_actor(st.actor.clone())),
                };
                let mut candidates = Vec::new();
                let mut seen = HashSet::new();
                for c in changes {
                    if !seen.insert(c.hash()) {
                        report.duplicates += 1;
                    } else if doc.get_change_by_hash(&c.hash()).is_some() {
                        report.duplicates += 1;
                        report.redelivered.insert(doc_id.to_owned());
                    } else if kind == "task"
                        && matches!(task_doc::read_change(&c).shape, Shape::Malformed(_))
                    {
                        // The relay takes only layouts and appends; a phone
                        // holds to the same rule, so that no fault of the
                        // relay can take events or a whole task from it.
                        report.invalid += 1;
                    } else {
                        candidates.push(c);
                    }
                }
                // All at once; if automerge refuses one (a second change with
                // a device's sequence number, say), one at a time from the
                // stored document, leaving out what it refuses: one bad change
                // must not stop every later sync.
                let stored = || -> Result<AutoCommit> {
                    Ok(docs::load(&tx, doc_id, &st.actor)?
                        .unwrap_or_else(|| AutoCommit::new().with_actor(st.actor.clone())))
                };
                let taken = if kind == "team" {
                    // In steps, this user's sight read after each change
                    // that may move it: the relay judged each earlier page
                    // by the team as it was then, and a sight that changed
                    // and changed back within this page still left pages
                    // judged by the other.
                    sights.extend(access::device_sight(&doc, &actor));
                    let user = st.user.as_deref().unwrap_or_default();
                    apply_in_steps(
                        &mut doc,
                        candidates,
                        &mut report,
                        stored,
                        |c| crate::team::may_move_sight(c, user, &actor),
                        |doc| sights.extend(access::device_sight(doc, &actor)),
                    )?
                } else {
                    apply_in_steps(&mut doc, candidates, &mut report, stored, |_| false, |_| {})?
                };
                let mut fresh = 0;
                for c in &taken {
                    // Already stored: a change still waiting for its dependencies.
                    if docs::store_change(&tx, doc_id, c)? {
                        fresh += 1;
                    } else {
                        report.duplicates += 1;
                    }
                }
                report.applied += fresh;
                // Asked every time the document's changes arrive, also when
                // all of them were stored already: a repair that failed (no
                // signal, the app killed) is tried again when the same page
                // is pulled again, as the cursor has not moved past it.
                if !doc.get_missing_deps(&[]).is_empty() {
                    report.incomplete.push(doc_id.to_owned());
                }
                if fresh == 0 {
                    st.docs.put(doc_id, doc);
                    continue;
                }
                docs::maybe_compact(&tx, doc_id, &mut doc)?;
                if kind == "team" {
                    team_changed = true;
                    st.set_team(Some(Team::read(&doc)));
                } else {
                    touched.insert(doc_id.to_owned());
                }
                st.docs.put(doc_id, doc);
            }
            let team = st.team.clone().unwrap_or_default();
            if team_changed {
                report.team_changed = true;
                // Seeing more (another role, promoted, active again), this
                // device has not been sent the tasks it may now read that
                // nothing changed since: pull the feed again from its start
                // (what it holds already is skipped). Set in this
                // transaction, so a phone killed before that pull still
                // makes it. Only for changes after the team lists this
                // device: the relay judged every page it sent by the team
                // as it was then, at or past the device's enrolment (a new
                // phone catching up is sent what its user may read now,
                // whatever their role was before; a role changed while it
                // catches up is read again).
                if sights.windows(2).any(|w| w[0] != w[1]) {
                    read_feed_again(&tx)?;
                    report.read_again = true;
                }
                for doc_id in tasks_the_team_reaches(&tx, team_before.as_ref(), &team)? {
                    touched.remove(&doc_id);
                    report.tasks_updated += usize::from(reindex_doc(&tx, st, &team, &doc_id)?);
                }
            }
            let user = st.user.clone().unwrap_or_default();
            for doc_id in touched {
                let before = whereabouts_in_index(&tx, &doc_id)?;
                report.tasks_updated += usize::from(reindex_doc(&tx, st, &team, &doc_id)?);
                // Readable again (handed back, or back in this user's
                // pool) after they lost sight of it: work done on it
                // meanwhile, which their pulls passed over, may be on a
                // branch the change that gave it back does not name, so
                // nothing in their copy is missing. A repair brings it.
                let regained = before.is_some_and(|b| !b.readable_by(&team, &user))
                    && whereabouts_in_index(&tx, &doc_id)?
                        .is_some_and(|a| a.readable_by(&team, &user));
                if regained && !report.incomplete.contains(&doc_id) {
                    report.incomplete.push(doc_id);
                }
            }
            tx.commit()?;
            Ok(())
        }))
        .unwrap_or(Err(Error::Corrupt(
            "applying changes from the relay panicked",
        )));
        if result.is_err() {
            // Memory may be ahead of the rolled-back database: reload from disk.
            st.docs.clear();
            let team = docs::load(conn, TEAM_DOC, &st.actor)?.map(|d| Team::read(&d));
            st.set_team(team);
        }
        result.map(|()| report)
    }

    /// Changes this device wrote that the relay has not taken, oldest first.
    /// Refused ones are not offered again.
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutgoingChange>> {
        let db = self.lock();
        let mut stmt = db.conn.prepare_cached(
            "SELECT id, doc_id, bytes FROM outbox WHERE refused_code IS NULL ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(OutgoingChange {
                id: r.get(0)?,
                doc_id: r.get(1)?,
                bytes: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many changes wait in the outbox to be pushed (not those the
    /// relay refused).
    pub fn outbox_waiting(&self) -> Result<usize> {
        let db = self.lock();
        let n: i64 = db.conn.query_row(
            "SELECT count(*) FROM outbox WHERE refused_code IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The relay has these changes: take them off the outbox, keeping each
    /// with its document's changes (the outbox held the only copy). Each
    /// goes by its id and its bytes: SQLite gives a deleted row's id to the
    /// next change, and a late answer to an earlier push must not take a
    /// newer change with it.
    pub fn outbox_delivered<'a>(
        &self,
        sent: impl IntoIterator<Item = &'a OutgoingChange>,
    ) -> Result<()> {
        let db = self.lock();
        let tx = db.conn.unchecked_transaction()?;
        for change in sent {
            docs::keep_sent(&tx, change.id, &change.bytes)?;
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND bytes = ?2")?
                .execute(params![change.id, change.bytes])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The relay refused this change: keep it, stop offering it, and show it
    /// to its author in "needs attention". Then set it aside: the task's
    /// document is rebuilt without it, and this device's later changes that
    /// built on it are written again on the rebuilt document, so that they
    /// reach the relay (instead of being refused as `missing_dependencies`)
    /// and this copy of the task ends the same as everyone else's.
    ///
    /// Returns `None` when the change is no longer queued (an earlier
    /// refusal's setting aside wrote it again), else how many changes were
    /// written again (to push now).
    pub fn outbox_refused(
        &self,
        change: &OutgoingChange,
        code: &str,
        reason: &str,
    ) -> Result<Option<usize>> {
        use crate::sync::wire::RefusalCode;
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let id = change.id;
        let row: Option<(String, Vec<u8>, bool)> = conn
            .prepare_cached(
                "SELECT doc_id, bytes, offered_again FROM outbox WHERE id = ?1 AND bytes = ?2",
            )?
            .query_row(params![id, change.bytes], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((doc_id, bytes, offered_again)) = row else {
            return Ok(None);
        };
        // Part of its document (until set aside below), unless it built on a
        // change set aside before: then it never applied, and stays out.
        let in_document = match Change::from_bytes(bytes.clone()) {
            Ok(change) => {
                let mut doc = docs::take_or_load(&mut st.docs, conn, &doc_id, &st.actor)?;
                let has = doc
                    .as_mut()
                    .is_some_and(|d| d.get_change_by_hash(&change.hash()).is_some());
                if let Some(d) = doc {
                    st.docs.put(&doc_id, d);
                }
                has
            }
            Err(_) => true,
        };
        let mut tx = conn.unchecked_transaction()?;
        // Kept with the document's changes, as the outbox row no longer
        // counts as unsent.
        if in_document {
            docs::keep_sent(&tx, id, &bytes)?;
        }
        tx.prepare_cached(
            "UPDATE outbox SET refused_code = ?2, refused_reason = ?3 WHERE id = ?1",
        )?
        .execute(params![id, code, reason])?;
        // Refused for what it builds on, though it is part of its document
        // (it does not build on a change set aside here): the relay may have
        // lost this device's own earlier changes (restored from a backup).
        // Its document is offered again, and the change queued again after
        // that, once (`Store::offered_again`).
        if in_document && code == RefusalCode::MissingDependencies.as_str() {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO offer_again (doc_id)
                 SELECT doc_id FROM outbox WHERE id = ?1 AND offered_again = 0",
            )?
            .execute([id])?;
        }
        // Refused for what the relay's team document says (not a member,
        // not that role, may not write there), not yet offered again: a
        // relay restored from a backup may have lost the team change that
        // allowed it, which the device holding it offers again. Held, in
        // its document and in needs attention, and its document offered
        // again: queued again once the relay takes all of it, set aside
        // once no restore is known or the tries run out
        // (`Store::release_held`).
        let held = in_document
            && !offered_again
            && [RefusalCode::NotPermitted, RefusalCode::Forbidden]
                .iter()
                .any(|c| c.as_str() == code);
        if held {
            tx.prepare_cached("UPDATE outbox SET held = 1 WHERE id = ?1")?
                .execute([id])?;
            tx.prepare_cached("INSERT OR IGNORE INTO offer_again (doc_id) VALUES (?1)")?
                .execute([&doc_id])?;
        }
        // Not set aside: a change to a retired document (its events move to
        // the newer one when that arrives), one refused only for what it
        // builds on (the cause was set aside already, or cannot be: the
        // change keeps the user's work visible where it is), and one held.
        let keep_in_place = held
            || [RefusalCode::Retired, RefusalCode::MissingDependencies]
                .iter()
                .any(|c| c.as_str() == code);
        let mut written_again = 0;
        // Setting aside rebuilds documents (and the team) in memory as it
        // goes: if it or a commit fails, memory is ahead of the database.
        let mut memory_ahead = false;
        let mut set: Result<()> = Ok(());
        match Change::from_bytes(bytes) {
            Ok(refused) if !keep_in_place => {
                match set_aside_within(&mut tx, st, &doc_id, &refused) {
                    Ok((n, ahead)) => {
                        written_again = n;
                        memory_ahead = ahead;
                    }
                    Err(e) => {
                        memory_ahead = true;
                        set = Err(e);
                    }
                }
            }
            _ => {}
        }
        let committed = set.and_then(|()| tx.commit().map_err(Error::from));
        if memory_ahead || committed.is_err() {
            // Read again from the database: a write built on a document
            // that never reached it would be lost at the next start.
            st.docs.clear();
            let team = docs::load(conn, TEAM_DOC, &st.actor)?.map(|d| Team::read(&d));
            st.set_team(team);
        }
        committed?;
        Ok(Some(written_again))
    }

    /// Set aside the changes held for what a restored relay's team
    /// document said (of `doc_id`, or all): no restore is known any more,
    /// or the tries to offer their documents again ran out. Each goes as a
    /// refusal goes (see [`Store::outbox_refused`]). A document stays
    /// marked to offer again (unless it is gone): a restore's mark is not
    /// told apart from a refusal's, and offering a document the relay has
    /// in full costs one push of duplicates.
    pub fn release_held(&self, doc_id: Option<&str>) -> Result<Released> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let held: Vec<(i64, String, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT id, doc_id, bytes FROM outbox
                 WHERE held = 1 AND (?1 IS NULL OR doc_id = ?1) ORDER BY id",
            )?
            .query_map([doc_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if held.is_empty() {
            return Ok(Released::default());
        }
        let mut tx = conn.unchecked_transaction()?;
        let mut memory_ahead = false;
        let mut taken_back = 0;
        let mut set_aside = 0;
        let missing = crate::sync::wire::RefusalCode::MissingDependencies.as_str();
        let mut set_aside_all = || -> Result<usize> {
            let mut written = 0;
            let waiting_on = |tx: &rusqlite::Transaction<'_>, doc: &str| -> Result<usize> {
                let n: i64 = tx
                    .prepare_cached(
                        "SELECT count(*) FROM outbox WHERE doc_id = ?1 AND refused_code = ?2",
                    )?
                    .query_row(params![doc, missing], |r| r.get(0))?;
                Ok(usize::try_from(n).unwrap_or(0))
            };
            for (id, doc, bytes) in &held {
                tx.prepare_cached("UPDATE outbox SET held = 0 WHERE id = ?1")?
                    .execute([id])?;
                // Not a change (a fault): it stays refused, as it was.
                let Ok(refused) = Change::from_bytes(bytes.clone()) else {
                    continue;
                };
                let before = memory_ahead;
                memory_ahead = true;
                let refused_before = waiting_on(&tx, doc)?;
                let (n, ahead) = set_aside_within(&mut tx, st, doc, &refused)?;
                memory_ahead = before || ahead;
                // Rolled back (memory ahead): it stays, refused, as it was.
                if !ahead {
                    set_aside += 1;
                }
                written += n;
                taken_back += refused_before.saturating_sub(waiting_on(&tx, doc)?);
                // A new task set aside is gone from this phone: what was
                // refused for building on it stays refused, and is not
                // offered again.
                let gone = tx
                    .prepare_cached("SELECT 1 FROM documents WHERE doc_id = ?1")?
                    .query_row([doc], |_| Ok(()))
                    .optional()?
                    .is_none();
                if gone {
                    tx.prepare_cached(
                        "UPDATE outbox SET offered_again = 1 WHERE doc_id = ?1 AND refused_code = ?2",
                    )?
                    .execute(params![doc, missing])?;
                    tx.prepare_cached("DELETE FROM offer_again WHERE doc_id = ?1")?
                        .execute([doc])?;
                }
            }
            Ok(written)
        };
        let written = set_aside_all();
        let committed = written.and_then(|n| tx.commit().map_err(Error::from).map(|()| n));
        if memory_ahead || committed.is_err() {
            st.docs.clear();
            let team = docs::load(conn, TEAM_DOC, &st.actor)?.map(|d| Team::read(&d));
            st.set_team(team);
        }
        Ok(Released {
            set_aside,
            written_again: committed?,
            taken_back,
        })
    }

    // ---- housekeeping ---------------------------------------------------

    /// Evict finished tasks older than the team's archive window from this
    /// device. Their index rows stay (marked archived) for KPIs; a task with
    /// anything still waiting in the outbox is never evicted.
    pub fn archive_finished(&self) -> Result<usize> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let team = st.team.as_ref().ok_or(Error::NotEnrolled)?;
        let cutoff = st.clock.now() - i64::from(team.policy.archive_after_days) * DAY_MS;
        let tx = conn.unchecked_transaction()?;
        let doomed: Vec<(String, String)> = tx
            .prepare(
                "SELECT task_id, doc_id FROM tasks
                 WHERE archived = 0 AND status IN ('completed', 'cancelled')
                   AND coalesce(completed_at, updated_at) < ?1
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.doc_id = tasks.doc_id)",
            )?
            .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (task_id, doc_id) in &doomed {
            docs::delete_document(&tx, doc_id)?;
            tx.execute(
                "UPDATE tasks SET archived = 1 WHERE task_id = ?1",
                [task_id],
            )?;
            tx.execute("DELETE FROM attention WHERE task_id = ?1", [task_id])?;
            st.docs.remove(doc_id);
        }
        tx.commit()?;
        Ok(doomed.len())
    }

    /// The redacted generations of tasks whose redaction by this device
    /// the relay refused for good (see `withdrawn_redaction`): each task
    /// goes back to the older generation the relay has. The sync engine
    /// fetches that whole (the one the redaction replaced, or one further
    /// back if this device redacted the task again before the relay heard)
    /// and hands it to `Store::take_back_redaction`.
    pub fn refused_redactions(&self) -> Result<Vec<String>> {
        use crate::sync::wire::RefusalCode;
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let current: Vec<String> = conn
            .prepare_cached(&format!(
                "SELECT DISTINCT t.doc_id FROM tasks t JOIN outbox o ON o.doc_id = t.doc_id
                 WHERE {REFUSED_FOR_GOOD}"
            ))?
            .query_map(
                params![
                    RefusalCode::Retired.as_str(),
                    RefusalCode::MissingDependencies.as_str()
                ],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<_>>()?;
        let mut withdrawn = Vec::new();
        for doc_id in current {
            if withdrawn_redaction(conn, st, &doc_id)? {
                withdrawn.push(doc_id);
            }
        }
        Ok(withdrawn)
    }

    /// Older generations of tasks kept while a redaction of this device's
    /// was withdrawn, once it no longer is (the relay took the redaction
    /// after all, offered again after a restore; or another delegator's
    /// layout of the same generation reached the phone): retired as any
    /// older generation is, what they hold that the newer lacks carried
    /// over scrubbed, so that no copy with the patient's details stays.
    pub fn retire_kept_generations(&self) -> Result<()> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        if !st.may_keep_older {
            return Ok(());
        }
        let older: Vec<String> = conn
            .prepare_cached(
                "SELECT d.doc_id FROM documents d
                 JOIN tasks t ON t.task_id = d.task_id
                 JOIN documents c ON c.doc_id = t.doc_id
                 WHERE d.kind = 'task' AND d.generation < c.generation",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if older.is_empty() {
            st.may_keep_older = false;
            return Ok(());
        }
        let team = st.team.clone().ok_or(Error::NotEnrolled)?;
        let tx = conn.unchecked_transaction()?;
        // Still withdrawn: kept (`reindex_doc` leaves it be).
        let retired = older
            .iter()
            .try_for_each(|doc| reindex_doc(&tx, st, &team, doc).map(|_| ()))
            .and_then(|()| tx.commit().map_err(Error::from));
        if retired.is_err() {
            // Memory may be ahead of the database: read it again.
            st.docs.clear();
        }
        retired
    }

    /// The task of `older`, a generation fetched whole from the relay, goes
    /// back to it from a redaction of this device's the relay refused for
    /// good: what this device wrote on the redacted generation since (and
    /// what the relay refused of that for building on the redaction) is
    /// carried back as it is, and the redacted generation is retired, its
    /// refused redaction kept in needs attention. `false` (nothing done)
    /// unless the task's redaction is withdrawn and `older` is older than
    /// it and has no gaps. The caller fetched all the relay has of it just
    /// before: a prefix of a document has no gaps either, and would carry
    /// back as this device's what the rest of it holds.
    pub(crate) fn take_back_redaction(&self, older: &str) -> Result<bool> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let (task_id, generation) = task_doc::split_doc_id(older);
        let current: Option<String> = conn
            .prepare_cached("SELECT doc_id FROM tasks WHERE task_id = ?1")?
            .query_row([task_id], |r| r.get(0))
            .optional()?;
        let Some(current) = current else {
            return Ok(false);
        };
        if task_doc::split_doc_id(&current).1 <= generation
            || !withdrawn_redaction(conn, st, &current)?
        {
            return Ok(false);
        }
        let Some(mut doc) = docs::take_or_load(&mut st.docs, conn, older, &st.actor)? else {
            return Ok(false);
        };
        let whole = task_doc::task_id(&doc).is_some()
            && task_doc::matches_id(&doc, older)
            && doc.get_missing_deps(&[]).is_empty();
        if !whole {
            st.docs.put(older, doc);
            return Ok(false);
        }
        let team = st.team.clone().ok_or(Error::NotEnrolled)?;
        let tx = conn.unchecked_transaction()?;
        let moved = replace_generation(
            &tx,
            st,
            &team,
            task_id,
            (older, doc),
            &current,
            CarriedAs::AsTheyAre,
        )
        .and_then(|_| tx.commit().map_err(Error::from));
        if moved.is_err() {
            // Memory may be ahead of the database: read it again.
            st.docs.clear();
        }
        moved.map(|()| true)
    }

    /// How many times this device's user's sight has changed (each began a
    /// re-read of the feed, [`Store::rereading`]): what the relay answered
    /// about what she may read may differ once it grew.
    pub fn sight_changes(&self) -> Result<u64> {
        Ok(meta(&self.lock().conn, "reread_count")?
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0))
    }

    /// Does this device keep an older generation of `doc_id`'s task beside
    /// it (one that arrived while a redaction of this device's was
    /// withdrawn, not yet whole or not yet taken back)?
    pub fn keeps_older_generation(&self, doc_id: &str) -> Result<bool> {
        let (task, generation) = task_doc::split_doc_id(doc_id);
        Ok(self
            .lock()
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM documents WHERE task_id = ?1 AND generation < ?2)",
            )?
            .query_row(params![task, generation], |r| r.get(0))?)
    }

    /// The re-read of the feed under way, by its number, if this device is
    /// reading the feed again from its start (its user's sight changed; see
    /// [`Store::finish_reread`]). A sync round holds it while it reads.
    pub fn rereading(&self) -> Result<Option<u64>> {
        reread_under_way(&self.lock().conn)
    }

    /// The feed read again up to its head (its user's sight changed), in
    /// one sync round or over several: drop the tasks the relay sent
    /// nothing of since the re-read began (the pages taken, as
    /// [`Store::move_relay_cursor_over`] noted them): this user may no
    /// longer read them, and this phone's copy is as it was when they
    /// could. Kept: a task this device wrote to (the relay never sends a
    /// device its own changes, so a task only it wrote to is sent nothing;
    /// and its refused work shows in needs attention), or has changes
    /// waiting to go. So a phone holds what a new phone of the same user
    /// would, and its own work. Returns how many were dropped; 0 when
    /// `reread` is not the re-read under way (none is, or another began
    /// since the round read it: its pages are not this one's).
    pub fn finish_reread(&self, reread: u64) -> Result<usize> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let tx = conn.unchecked_transaction()?;
        if reread_under_way(&tx)? != Some(reread) {
            return Ok(0);
        }
        let held: Vec<(String, String)> = tx
            .prepare(
                "SELECT task_id, doc_id FROM tasks
                 WHERE archived = 0
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.doc_id = tasks.doc_id)
                   AND NOT EXISTS (SELECT 1 FROM reread r WHERE r.doc_id = tasks.doc_id)",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut dropped = Vec::new();
        for (task_id, doc_id) in &held {
            let Some(mut doc) = docs::load(&tx, doc_id, &st.actor)? else {
                continue;
            };
            // By the changes' author, not the events': a redaction this
            // device made holds copies of others' events in its own change.
            if doc
                .get_changes(&[])
                .iter()
                .any(|c| *c.actor_id() == st.actor)
            {
                continue;
            }
            docs::delete_document(&tx, doc_id)?;
            tx.execute("DELETE FROM tasks WHERE task_id = ?1", [task_id])?;
            tx.execute("DELETE FROM attention WHERE task_id = ?1", [task_id])?;
            dropped.push(doc_id);
        }
        end_reread(&tx)?;
        tx.commit()?;
        for doc_id in &dropped {
            st.docs.remove(doc_id);
        }
        Ok(dropped.len())
    }

    /// Fold every document's changes into its snapshot now, and shrink the file.
    pub fn compact_all(&self) -> Result<()> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let ids: Vec<String> = conn
            .prepare("SELECT doc_id FROM changes UNION SELECT doc_id FROM outbox")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let tx = conn.unchecked_transaction()?;
        for id in ids {
            if let Some(mut doc) = docs::load(&tx, &id, &st.actor)? {
                docs::compact(&tx, &id, &mut doc)?;
            }
        }
        tx.commit()?;
        // Give the freed pages back to the file system.
        conn.execute_batch("VACUUM")?;
        Ok(())
    }
}

/// How events are copied into another generation of their task.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CarriedAs {
    /// Into a redacted one: their free text scrubbed.
    Scrubbed,
    /// Back into the older one, from a redaction the relay refused: as
    /// they are (what the redaction scrubbed stays scrubbed).
    AsTheyAre,
}

/// Append `events` to a task document and commit them as this device's
/// changes, each holding at most [`wire::MAX_NEW_EVENTS`] events of its
/// own (the relay refuses more; others' events are copies it knows).
fn append_own_in_chunks<'e>(
    conn: &Connection,
    st: &State,
    doc_id: &str,
    doc: &mut AutoCommit,
    events: impl Iterator<Item = &'e Event>,
    copy: CarriedAs,
) -> Result<()> {
    let now = st.clock.now();
    let mut own = 0;
    for e in events {
        if e.id.actor == st.actor_hex {
            if own == crate::sync::wire::MAX_NEW_EVENTS {
                docs::commit_local(conn, doc_id, doc, now)?;
                own = 0;
            }
            own += 1;
        }
        match copy {
            CarriedAs::Scrubbed => task_doc::append(doc, &e.scrubbed())?,
            CarriedAs::AsTheyAre => task_doc::append(doc, e)?,
        }
    }
    docs::commit_local(conn, doc_id, doc, now)?;
    Ok(())
}

/// Would `event`, the newest of `events`, take effect? Judged at the door
/// ([`crate::access::may_act`]) and by the fold, as the relay will.
fn checked(task_id: &str, events: &[Event], event: &Event, team: &Team) -> Result<TaskState> {
    let (state, outcomes) = derive_at_door(task_id, events, team, &event.id);
    let refusal = outcomes
        .iter()
        .find(|(e, _)| e.id == event.id)
        .and_then(|(_, o)| o.refusal().cloned());
    match (state, refusal) {
        (_, Some(r)) => Err(r.into()),
        (None, None) => Err(Refusal::NotCreatedYet.into()),
        (Some(state), None) => Ok(with_history(state, outcomes)),
    }
}

/// Re-derive one task document into the index. Handles a task that moved to
/// a newer document (redaction): the older one is retired and any event it
/// has that the newer lacks is carried over by this device.
fn reindex_doc(conn: &Connection, st: &mut State, team: &Team, doc_id: &str) -> Result<bool> {
    let doc = match st.docs.take(doc_id) {
        Some(d) => d,
        None => match docs::load(conn, doc_id, &st.actor)? {
            Some(d) => d,
            None => return Ok(false),
        },
    };
    let Some(task_id) = task_doc::task_id(&doc) else {
        // Its first change has not arrived yet.
        st.docs.put(doc_id, doc);
        return Ok(false);
    };
    if !task_doc::matches_id(&doc, doc_id) {
        // Not what its id says: never let it stand for a task.
        st.docs.put(doc_id, doc);
        return Ok(false);
    }
    let generation = task_doc::generation(&doc);
    docs::insert_document(conn, doc_id, "task", Some(&task_id), generation)?;
    let current: Option<(String, bool)> = conn
        .prepare_cached("SELECT doc_id, archived FROM tasks WHERE task_id = ?1")?
        .query_row([&task_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((current_id, archived)) = current {
        if archived {
            // News of a task this phone archived (work logged before its
            // author heard of the approval, a reassignment undoing the
            // completion, a comment): it comes back, as every other phone
            // derives it, and is archived again once finished and old.
            // (Its document came back whole: the news built on what was
            // evicted, and was repaired.)
            conn.prepare_cached("UPDATE tasks SET archived = 0 WHERE task_id = ?1")?
                .execute([&task_id])?;
        }
        if current_id != doc_id {
            let current_gen: i64 = conn
                .prepare_cached("SELECT generation FROM documents WHERE doc_id = ?1")?
                .query_row([&current_id], |r| r.get(0))
                .optional()?
                .unwrap_or(-1);
            if generation < current_gen && withdrawn_redaction(conn, st, &current_id)? {
                // An older generation, while a redaction of this device's
                // the relay refused is withdrawn: kept as it arrives, and
                // the task goes back to it once it is whole
                // ([`Store::take_back_redaction`]), not page by page.
                st.may_keep_older = true;
                st.docs.put(doc_id, doc);
                return Ok(false);
            }
            let (keep_id, keep, drop_id) = if generation > current_gen {
                (doc_id.to_owned(), doc, current_id)
            } else {
                let keep = match st.docs.take(&current_id) {
                    Some(d) => d,
                    None => docs::load(conn, &current_id, &st.actor)?
                        .ok_or(Error::Corrupt("indexed task has no document"))?,
                };
                (current_id, keep, doc_id.to_owned())
            };
            return replace_generation(
                conn,
                st,
                team,
                &task_id,
                (&keep_id, keep),
                &drop_id,
                CarriedAs::Scrubbed,
            );
        }
    }
    finish_reindex(conn, st, team, doc_id, doc, &task_id)
}

/// The task moves from `drop_id` to `keep` (another generation of it):
/// the events of `drop_id` that `keep` lacks are carried over as this
/// device's changes, `drop_id` is retired, and the task is derived again.
/// Into a redacted generation they go scrubbed; back from a withdrawn
/// redaction ([`CarriedAs::AsTheyAre`]) they go as they are, with those of
/// the redacted generation's changes the relay refused for building on
/// the redaction, whose outbox rows go (see `carried_back_rows`).
fn replace_generation(
    conn: &Connection,
    st: &mut State,
    team: &Team,
    task_id: &str,
    (keep_id, mut keep): (&str, AutoCommit),
    drop_id: &str,
    carried: CarriedAs,
) -> Result<bool> {
    let dropped = match st.docs.take(drop_id) {
        Some(d) => Some(d),
        None => docs::load(conn, drop_id, &st.actor)?,
    };
    let back = match carried {
        CarriedAs::AsTheyAre => carried_back_rows(conn, drop_id)?,
        CarriedAs::Scrubbed => Vec::new(),
    };
    if let Some(dropped) = dropped {
        let mut have: HashSet<EventId> = task_doc::events(&keep)
            .0
            .into_iter()
            .map(|e| e.id)
            .collect();
        let mut missed = task_doc::events(&dropped).0;
        missed.retain(|e| have.insert(e.id.clone()));
        for (_, bytes) in &back {
            let Ok(change) = Change::from_bytes(bytes.clone()) else {
                continue;
            };
            for e in task_doc::events_in_change(&change) {
                if e.id.actor == st.actor_hex && have.insert(e.id.clone()) {
                    missed.push(e);
                }
            }
        }
        append_own_in_chunks(conn, st, keep_id, &mut keep, missed.iter(), carried)?;
    }
    for (id, _) in back {
        conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
            .execute([id])?;
    }
    retire(conn, drop_id, keep_id, &st.actor)?;
    st.docs.remove(drop_id);
    finish_reindex(conn, st, team, keep_id, keep, task_id)
}

/// Who may read the task indexed from `doc_id`, as the index has it (its
/// result's recipient left out: fixed when the task is created, it never
/// changes who gains sight of it).
fn whereabouts_in_index(conn: &Connection, doc_id: &str) -> Result<Option<access::Whereabouts>> {
    Ok(conn
        .prepare_cached("SELECT created_by, assignee, pool_role FROM tasks WHERE doc_id = ?1")?
        .query_row([doc_id], |r| {
            Ok(access::Whereabouts {
                created_by: r.get(0)?,
                assignee: r.get(1)?,
                route_result_to: None,
                pool: r.get::<_, Option<String>>(2)?.and_then(|p| Role::parse(&p)),
            })
        })
        .optional()?)
}

fn finish_reindex(
    conn: &Connection,
    st: &mut State,
    team: &Team,
    doc_id: &str,
    doc: AutoCommit,
    task_id: &str,
) -> Result<bool> {
    let state = derive(task_id, task_doc::events(&doc).0, team);
    st.docs.put(doc_id, doc);
    match state {
        Some(state) => {
            index::upsert(conn, doc_id, &state)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Set `refused` (a change of `doc_id`) aside within `tx`, behind a
/// savepoint. Returns how many changes were written again, and whether
/// memory may be ahead of the database: a setting aside that failed is
/// rolled back (the refusal stays recorded, the document as it was, and
/// its later changes are refused too), but may have rebuilt documents in
/// memory. An error (its savepoint not committed) leaves memory ahead.
fn set_aside_within(
    tx: &mut rusqlite::Transaction<'_>,
    st: &mut State,
    doc_id: &str,
    refused: &Change,
) -> Result<(usize, bool)> {
    let sp = tx.savepoint()?;
    let set = if doc_id == TEAM_DOC {
        set_aside_team(&sp, st, refused).map(|()| 0)
    } else {
        set_aside(&sp, st, doc_id, refused)
    };
    match set {
        Ok(n) => {
            sp.commit()?;
            Ok((n, false))
        }
        Err(_) => Ok((0, true)),
    }
}

/// Rebuild a task document without `refused` and the changes that build on
/// it; write those changes' events again as new changes (queued for the
/// relay), drop their old outbox rows, and re-derive the task. A new task's
/// first change refused takes the task off this phone (it never reached
/// anyone); a redacted generation's first change stays (nothing would be
/// left to rebuild on).
fn set_aside(conn: &Connection, st: &mut State, doc_id: &str, refused: &Change) -> Result<usize> {
    if refused.deps().is_empty() {
        // A new task refused: it never reached anyone, and no view shows
        // it as if it had. The refused change stays in the outbox, shown
        // in needs attention under the title it was given. (A redacted
        // generation's first change stays: the task has nowhere else to
        // be on this phone.)
        if task_doc::split_doc_id(doc_id).1 == 0 {
            docs::delete_document(conn, doc_id)?;
            conn.prepare_cached("DELETE FROM tasks WHERE doc_id = ?1")?
                .execute([doc_id])?;
            conn.prepare_cached("DELETE FROM attention WHERE task_id = ?1")?
                .execute([doc_id])?;
            st.docs.remove(doc_id);
        }
        return Ok(0);
    }
    let Some(mut doc) = (match st.docs.take(doc_id) {
        Some(d) => Some(d),
        None => docs::load(conn, doc_id, &st.actor)?,
    }) else {
        return Ok(0);
    };
    if doc.get_change_by_hash(&refused.hash()).is_none() {
        st.docs.put(doc_id, doc);
        return Ok(0);
    }
    let (mut rebuilt, redo) = rebuild_without(conn, st, doc_id, &mut doc, refused)?;
    let mut have: HashSet<EventId> = HashSet::new();
    have.extend(task_doc::events(&rebuilt).0.into_iter().map(|e| e.id));
    let now = st.clock.now();
    let mut events = task_doc::events(&rebuilt).0;
    let mut written = 0;
    for c in &redo {
        for e in task_doc::events_in_change(c) {
            if !have.insert(e.id.clone()) {
                continue;
            }
            let again = if e.id.actor == st.actor_hex {
                // Same event, now after what is left of the task: it no
                // longer names the set-aside event as seen (the relay
                // judges access on what an event builds on).
                let mut again = Event::next(&events, &e.id.actor, &e.by, e.at, e.action);
                again.id = e.id;
                again
            } else {
                // Another device's event copied here (a redaction's
                // carry-over): copies stay exact.
                e
            };
            task_doc::append(&mut rebuilt, &again)?;
            events.push(again);
        }
        // A change with nothing left to write keeps its row: it is refused
        // in turn and shown, never silently dropped (and its id, maybe the
        // newest, is not freed for reuse while verdicts are read).
        if docs::commit_local(conn, doc_id, &mut rebuilt, now)?.is_some() {
            written += 1;
            conn.prepare_cached("DELETE FROM outbox WHERE doc_id = ?1 AND hash = ?2")?
                .execute(params![doc_id, c.hash().as_ref()])?;
        }
    }
    // Reloaded from the database: it also holds changes still waiting for
    // their dependencies, which the rebuilt document does not.
    drop(rebuilt);
    let team = st.team.clone().unwrap_or_default();
    reindex_doc(conn, st, &team, doc_id)?;
    Ok(written)
}

/// The document rebuilt (and stored) without `refused` and every change
/// that builds on it; those changes, in causal order, are returned.
fn rebuild_without(
    conn: &Connection,
    st: &State,
    doc_id: &str,
    doc: &mut AutoCommit,
    refused: &Change,
) -> Result<(AutoCommit, Vec<Change>)> {
    let mut aside = HashSet::from([refused.hash()]);
    let mut kept = Vec::new();
    let mut built_on_it = Vec::new();
    // Causal order: a change comes after everything it builds on.
    for c in doc.get_changes(&[]) {
        if c.hash() == refused.hash() {
            continue;
        }
        if c.deps().iter().any(|d| aside.contains(d)) {
            aside.insert(c.hash());
            built_on_it.push(c.clone());
        } else {
            kept.push(c.clone());
        }
    }
    let mut rebuilt = AutoCommit::new();
    rebuilt.apply_changes(kept)?;
    rebuilt.set_actor(st.actor.clone());
    for hash in &aside {
        conn.prepare_cached("DELETE FROM changes WHERE doc_id = ?1 AND hash = ?2")?
            .execute(params![doc_id, hash.as_ref()])?;
    }
    docs::compact(conn, doc_id, &mut rebuilt)?;
    Ok((rebuilt, built_on_it))
}

/// A refused change to the team document: the team is rebuilt without it,
/// as every other device has it. This device's later team changes built on
/// it stay queued; the relay refuses them in turn (missing dependencies)
/// and they show in needs attention. They are not written again: each is a
/// manager's deliberate edit, for someone who may to make again.
fn set_aside_team(conn: &Connection, st: &mut State, refused: &Change) -> Result<()> {
    let Some(mut doc) = (match st.docs.take(TEAM_DOC) {
        Some(d) => Some(d),
        None => docs::load(conn, TEAM_DOC, &st.actor)?,
    }) else {
        return Ok(());
    };
    if refused.deps().is_empty() || doc.get_change_by_hash(&refused.hash()).is_none() {
        st.docs.put(TEAM_DOC, doc);
        return Ok(());
    }
    let (rebuilt, _) = rebuild_without(conn, st, TEAM_DOC, &mut doc, refused)?;
    // Not cached: reloaded from the database, which also holds changes
    // still waiting for their dependencies.
    let team = Team::read(&rebuilt);
    let before = st.team.clone();
    rederive_for_team(conn, st, before.as_ref(), &team, None)?;
    st.set_team(Some(team));
    Ok(())
}

/// Is `doc_id` an older generation of a task this device already holds in
/// a newer document? (See [`task_doc::doc_id_of`].)
fn superseded(conn: &Connection, st: &mut State, doc_id: &str) -> Result<bool> {
    let (task, generation) = task_doc::split_doc_id(doc_id);
    // From the index's document id, not its document row: an archived
    // task's document is gone.
    let current: Option<String> = conn
        .prepare_cached("SELECT doc_id FROM tasks WHERE task_id = ?1")?
        .query_row([task], |r| r.get(0))
        .optional()?;
    let Some(current) = current else {
        return Ok(false);
    };
    let current_gen = task_doc::split_doc_id(&current).1;
    if current_gen <= generation {
        return Ok(false);
    }
    // Not while a redaction of this device's the relay refused is
    // withdrawn: the task goes back to the generation the relay has.
    Ok(!withdrawn_redaction(conn, st, &current)?)
}

/// Is `doc_id` a redacted generation of this device's whose first change
/// (the redaction) the relay refused for good (not held, nor refused only
/// for what it builds on or for a newer generation), and which no other
/// device wrote to (then the relay has it: another delegator's redaction
/// of the same generation was taken)? The task goes back to the
/// generation the relay has ([`Store::refused_redactions`],
/// [`Store::take_back_redaction`]); the redaction stays in needs attention.
fn withdrawn_redaction(conn: &Connection, st: &mut State, doc_id: &str) -> Result<bool> {
    if task_doc::split_doc_id(doc_id).1 == 0 {
        return Ok(false);
    }
    // A first change under its own hash: not one `retire` moved here from
    // the generation before (a record for needs attention only, made like
    // a first change, which keeps the hash of the change it stands for).
    let firsts: Vec<automerge::ChangeHash> = refused_for_good(conn, doc_id)?
        .into_iter()
        .filter_map(|row| {
            let c = Change::from_bytes(row.bytes).ok()?;
            (c.deps().is_empty() && c.hash().0[..] == row.hash[..]).then(|| c.hash())
        })
        .collect();
    if firsts.is_empty() {
        return Ok(false);
    }
    let Some(mut doc) = docs::take_or_load(&mut st.docs, conn, doc_id, &st.actor)? else {
        return Ok(false);
    };
    let own = doc
        .get_changes(&[])
        .iter()
        .all(|c| *c.actor_id() == st.actor);
    let withdrawn = own && firsts.iter().any(|h| doc.get_change_by_hash(h).is_some());
    st.docs.put(doc_id, doc);
    Ok(withdrawn)
}

/// An outbox row as stored: `hash` is the change's it was queued as
/// (`retire` replaces the bytes of a refused one it moves, not the hash).
struct OutboxRow {
    id: i64,
    hash: Vec<u8>,
    bytes: Vec<u8>,
}

/// An outbox row `o` the relay refused for good (set aside, or kept where
/// nothing could be set aside): not held, nor refused only for what it
/// builds on (`?2`, missing dependencies) or for a newer generation (`?1`,
/// retired).
const REFUSED_FOR_GOOD: &str =
    "o.refused_code IS NOT NULL AND o.refused_code NOT IN (?1, ?2) AND o.held = 0";

/// The changes of `doc_id` the relay refused for good
/// ([`REFUSED_FOR_GOOD`]), with their outbox id and hash.
fn refused_for_good(conn: &Connection, doc_id: &str) -> Result<Vec<OutboxRow>> {
    use crate::sync::wire::RefusalCode;
    Ok(conn
        .prepare_cached(&format!(
            "SELECT id, hash, bytes FROM outbox o
             WHERE {REFUSED_FOR_GOOD} AND o.doc_id = ?3
             ORDER BY id"
        ))?
        .query_map(
            params![
                RefusalCode::Retired.as_str(),
                RefusalCode::MissingDependencies.as_str(),
                doc_id
            ],
            |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    hash: r.get(1)?,
                    bytes: r.get(2)?,
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?)
}

/// The outbox rows of a withdrawn redaction whose events go back to the
/// older generation with the task, oldest first: unsent or held ones (in
/// the document too), and those the relay refused for what the redaction
/// was (its user may not write there, or it builds on what the relay never
/// took). Not the redaction's own changes (copies of what the older
/// generation has), nor changes refused for a reason of their own
/// (`invalid_change`, `too_large`: they stay in needs attention).
fn carried_back_rows(conn: &Connection, doc_id: &str) -> Result<Vec<(i64, Vec<u8>)>> {
    use crate::sync::wire::RefusalCode;
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT id, bytes FROM outbox
             WHERE doc_id = ?1
               AND (refused_code IS NULL OR held = 1 OR refused_code IN (?2, ?3, ?4))
             ORDER BY id",
        )?
        .query_map(
            params![
                doc_id,
                RefusalCode::Forbidden.as_str(),
                RefusalCode::NotPermitted.as_str(),
                RefusalCode::MissingDependencies.as_str()
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .filter(|(_, bytes)| Change::from_bytes(bytes.clone()).is_ok_and(|c| !c.deps().is_empty()))
        .collect())
}

/// A new task goes only to an active member. (Derivation lets a task stay
/// with a member deactivated since; see `derive`.)
fn active_member(team: &Team, user: &str) -> Result<()> {
    if team.member(user).is_some_and(|m| m.active) {
        Ok(())
    } else {
        Err(Refusal::NotAMember { user: user.into() }.into())
    }
}

/// What [`apply_guarded`] did with a batch of changes.
enum Applied {
    All,
    /// automerge refused one: the document is as it was.
    Refused,
    /// automerge panicked: the document may hold part of the batch, so it
    /// is loaded again.
    Panicked,
}

/// Read the feed again from its start (this device's user's sight
/// changed): what it holds is skipped, the tasks the new sight shows that
/// nothing changed since arrive, and at the head the tasks the relay sent
/// nothing of are dropped ([`Store::finish_reread`]). A re-read under way
/// starts over.
///
/// Each re-read has a number of its own (`meta.rereading`), which a sync
/// round holds while it reads: a round holding an older one (a page asked
/// for before this started the re-read over, at the same cursor 0) must
/// not note its pages, nor finish this one.
fn read_feed_again(tx: &Connection) -> Result<()> {
    let last = meta(tx, "reread_count")?
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let this = (last + 1).to_string();
    set_meta(tx, "reread_count", &this)?;
    set_meta(tx, "rereading", &this)?;
    enrolment::rewind_cursor(tx)?;
    tx.execute("DELETE FROM reread", [])?;
    Ok(())
}

/// The re-read under way, by its number ([`read_feed_again`]).
fn reread_under_way(conn: &Connection) -> Result<Option<u64>> {
    Ok(meta(conn, "rereading")?.map(|n| n.parse::<u64>().unwrap_or(0)))
}

/// No re-read under way any more (it ended, or a restore started the pull
/// over, after which what the relay lacks may just be lost).
fn end_reread(tx: &Connection) -> Result<()> {
    tx.execute("DELETE FROM reread", [])?;
    tx.execute("DELETE FROM meta WHERE key = 'rereading'", [])?;
    Ok(())
}

/// Apply `changes` to `doc` in their order: all at once up to each change
/// `step` picks, after which `each` sees the document. If automerge refuses
/// one (a second change with a device's sequence number, say) or panics,
/// that step goes one change at a time from the `stored` document,
/// leaving out (and counting invalid) what it refuses: one bad change must
/// not stop every later sync.
fn apply_in_steps(
    doc: &mut AutoCommit,
    changes: Vec<Change>,
    report: &mut MergeReport,
    stored: impl Fn() -> Result<AutoCommit>,
    step: impl Fn(&Change) -> bool,
    mut each: impl FnMut(&AutoCommit),
) -> Result<Vec<Change>> {
    let mut taken = Vec::with_capacity(changes.len());
    let mut pending = Vec::new();
    let mut changes = changes.into_iter().peekable();
    while let Some(c) = changes.next() {
        let ends_step = step(&c) || changes.peek().is_none();
        pending.push(c);
        if !ends_step {
            continue;
        }
        if matches!(apply_guarded(doc, &pending), Applied::All) {
            taken.append(&mut pending);
            each(doc);
            continue;
        }
        *doc = stored()?;
        if !matches!(apply_guarded(doc, &taken), Applied::All) {
            return Err(Error::Corrupt("changes applied once did not apply again"));
        }
        for c in pending.drain(..) {
            match apply_guarded(doc, std::slice::from_ref(&c)) {
                Applied::All => {
                    taken.push(c);
                    each(doc);
                }
                Applied::Refused => report.invalid += 1,
                Applied::Panicked => {
                    report.invalid += 1;
                    *doc = stored()?;
                    if !matches!(apply_guarded(doc, &taken), Applied::All) {
                        return Err(Error::Corrupt("changes applied once did not apply again"));
                    }
                }
            }
        }
    }
    Ok(taken)
}

/// automerge's `apply_changes`, with a panic inside it taken as a refusal.
/// It asserts on some framing a hand-made change can carry (an author in
/// an actor's later change, another actor the document never had) rather
/// than refusing it; the relay refuses those, and a phone leaves out any
/// that reaches it instead of failing every sync from then on.
fn apply_guarded(doc: &mut AutoCommit, changes: &[Change]) -> Applied {
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.apply_changes(changes.iter().cloned()).is_ok()
    }));
    match applied {
        Ok(true) => Applied::All,
        Ok(false) => Applied::Refused,
        Err(_) => Applied::Panicked,
    }
}

/// A retired document: gone from this device, and its unsent changes with it
/// (their events live on in `successor`, the document that replaced it).
/// Its changes refused and set aside stay in their author's needs
/// attention: each moves to `successor` with its key, code and reason, and
/// only its events' scrubbed form, as the redaction keeps every event (no
/// copy of them lives on in either document). Those refused and kept in
/// place (`retired`, `missing_dependencies`, held: see `outbox_refused`)
/// are in the document, and move on with its events.
fn retire(conn: &Connection, doc_id: &str, successor: &str, actor: &ActorId) -> Result<()> {
    let refused: Vec<(i64, Vec<u8>)> = refused_for_good(conn, doc_id)?
        .into_iter()
        .map(|row| (row.id, row.bytes))
        .collect();
    let (task, generation) = task_doc::split_doc_id(successor);
    for (id, bytes) in refused {
        let events = Change::from_bytes(bytes)
            .map(|c| task_doc::events_in_change(&c))
            .unwrap_or_default();
        let mut scrubbed = task_doc::new_doc(task, generation, actor)?;
        for e in &events {
            task_doc::append(&mut scrubbed, &e.scrubbed())?;
        }
        let bytes = scrubbed
            .get_last_local_change()
            .map(|c| c.raw_bytes().to_vec())
            .ok_or(Error::Corrupt("a scrubbed change was not made"))?;
        conn.prepare_cached("UPDATE outbox SET doc_id = ?2, bytes = ?3 WHERE id = ?1")?
            .execute(params![id, successor, bytes])?;
    }
    conn.execute("DELETE FROM outbox WHERE doc_id = ?1", [doc_id])?;
    docs::delete_document(conn, doc_id)
}

/// Derive again, after the team changed from `before` to `team`, the tasks
/// that change can alter: usually none or a few, not all 10,000 of a
/// year's clinic (seconds on a phone, with every write waiting).
/// `progress` hears how far it has come (see [`OpenProgress`]).
fn rederive_for_team(
    conn: &Connection,
    st: &mut State,
    before: Option<&Team>,
    team: &Team,
    progress: Option<&(dyn Fn(OpenProgress) + Send + Sync)>,
) -> Result<usize> {
    let tell = |done, total| {
        if let Some(p) = progress {
            p(OpenProgress { done, total });
        }
    };
    let ids = tasks_the_team_reaches(conn, before, team)?;
    let total = ids.len();
    let mut n = 0;
    for (done, id) in ids.iter().enumerate() {
        if done % OpenProgress::EVERY == 0 {
            tell(done, total);
        }
        n += usize::from(reindex_doc(conn, st, team, id)?);
    }
    tell(total, total);
    Ok(n)
}

/// The task documents whose derived state the team's change from `before`
/// to `team` can alter ([`Team::reach_from`]), newest generations first.
fn tasks_the_team_reaches(
    conn: &Connection,
    before: Option<&Team>,
    team: &Team,
) -> Result<Vec<String>> {
    let (filter, codes) = match team.reach_from(before) {
        Reach::Nothing => return Ok(Vec::new()),
        Reach::Everything => ("", Vec::new()),
        // Refused for want of a member or a device, or with no state at
        // all (its first event was refused, or has not arrived).
        Reach::WaitingForTheTeam => (
            "AND (NOT EXISTS (SELECT 1 FROM tasks t WHERE t.doc_id = d.doc_id)
                  OR d.task_id IN (SELECT task_id FROM attention WHERE code IN (?1, ?2)))",
            vec![
                Refusal::NotAMember {
                    user: String::new(),
                }
                .code(),
                Refusal::DeviceNotEnrolled {
                    user: String::new(),
                }
                .code(),
            ],
        ),
    };
    let ids = conn
        .prepare(&format!(
            "SELECT d.doc_id FROM documents d WHERE d.kind = 'task' {filter}
             ORDER BY d.generation DESC, d.doc_id"
        ))?
        .query_map(rusqlite::params_from_iter(codes), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Derive every task again (the rules changed), telling `progress`.
fn reindex_all(
    conn: &Connection,
    st: &mut State,
    team: &Team,
    progress: Option<&(dyn Fn(OpenProgress) + Send + Sync)>,
) -> Result<usize> {
    rederive_for_team(conn, st, None, team, progress)
}

/// Copy the whole WAL back into the store file and empty it. The store's
/// checkpoint thread may be copying it right now, or a view may be reading
/// through the reader connection: then the truncating checkpoint reports
/// "busy" and is tried again, for up to ten seconds.
fn empty_log(conn: &Connection) -> Result<()> {
    empty_log_within(conn, std::time::Duration::from_secs(10), || {})
}

/// [`empty_log`], trying for `patience`; `on_busy` runs after each busy try.
fn empty_log_within(
    conn: &Connection,
    patience: std::time::Duration,
    mut on_busy: impl FnMut(),
) -> Result<()> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        on_busy();
        if std::time::Instant::now() > deadline {
            return Err(Error::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some("the log could not be emptied".into()),
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for Store {
    /// Leave everything in the store file, as SQLite does when its last
    /// connection closes: with the checkpoint thread's connection open, the
    /// writer's is not the last, and which one closes last is a race. A
    /// failure here loses nothing: the WAL stays beside the file and the
    /// next open reads it.
    fn drop(&mut self) {
        let db = self.lock();
        let _ = empty_log(&db.conn);
    }
}

/// `PRAGMA key` for `key`, in a string wiped when dropped (sized once, so
/// no copy is left behind by growing it): the key's hex is not left in
/// freed memory for a core dump or a later allocation to show.
fn key_pragma(key: &[u8]) -> zeroize::Zeroizing<String> {
    use std::fmt::Write;
    let mut pragma = zeroize::Zeroizing::new(String::with_capacity(32 + 2 * key.len()));
    pragma.push_str("PRAGMA key = \"x'");
    for byte in key {
        let _ = write!(pragma, "{byte:02x}");
    }
    pragma.push_str("'\";");
    pragma
}

/// A connection to the store file, keyed, in WAL mode, syncing as the
/// options say. The writer and the checkpoint thread each have one.
fn connect(path: &Path, key: &[u8], durability: Durability) -> Result<Connection> {
    sqlcipher_ready()?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // SQLCipher logs to stderr unless told not to.
    conn.query_row("PRAGMA cipher_log_level = NONE", [], |_| Ok(()))
        .optional()?;
    conn.execute_batch(&key_pragma(key))?;
    // Page MACs with SHA-256: phone and PC CPUs have SHA instructions
    // for it (not for SHA-512), and each write MACs every page it touches.
    // Part of the file format: every open must say the same.
    conn.execute_batch("PRAGMA cipher_hmac_algorithm = HMAC_SHA256;")?;
    // The first read tells whether the key opens the file.
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            return Err(Error::WrongKey)
        }
        Err(e) => return Err(e.into()),
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    // The writer and the checkpoint thread rarely want the same lock (a
    // full checkpoint after a wipe); the one that waits, waits this long.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Waits until SQLCipher can key a connection.
///
/// SQLite marks itself initialized and lets go of its lock before it runs
/// SQLCipher's own set-up (`sqlcipher_extra_init`, SQLite's
/// `SQLITE_EXTRA_INIT` hook). A connection opened by another thread in that
/// gap finds SQLite ready, and its `PRAGMA key` is refused with SQLCipher's
/// generic "error with PRAGMA key" message: the first stores a process opens
/// at once (a relay's tests, an app opening on two threads) could fail at
/// random. The set-up function takes SQLite's main lock and returns at once
/// when the set-up is done, so calling it here waits out a set-up under way
/// on another thread, or does it. The `first-open` crash-suite test opens
/// stores on 32 threads as a fresh process's first act, 200 times.
#[allow(unsafe_code)]
fn sqlcipher_ready() -> Result<()> {
    extern "C" {
        // Defined by the SQLCipher amalgamation that `libsqlite3-sys`
        // builds and links (feature `bundled-sqlcipher`).
        fn sqlcipher_extra_init(arg: *const std::ffi::c_char) -> std::ffi::c_int;
    }
    // SAFETY: both functions may be called from any thread at any time:
    // `sqlite3_initialize` is SQLite's documented thread-safe entry, and
    // `sqlcipher_extra_init` runs under SQLite's static main mutex and
    // ignores its argument (SQLite itself passes a null pointer).
    let rc = unsafe {
        match rusqlite::ffi::sqlite3_initialize() {
            rusqlite::ffi::SQLITE_OK => sqlcipher_extra_init(std::ptr::null()),
            rc => rc,
        }
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("SQLCipher could not be initialized".into()),
        )))
    }
}

fn meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute([key, value])?;
    Ok(())
}

fn check_id(field: &str, s: &str) -> Result<()> {
    if !crate::model::is_valid_id(s) {
        return Err(Error::InvalidInput(format!(
            "{field} must be 1-64 letters, digits or . _ - @"
        )));
    }
    Ok(())
}

fn check_doc_id(s: &str) -> Result<()> {
    check_id("document id", s)
}

fn check_actor(s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 64
        || !s.len().is_multiple_of(2)
        || !s.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(Error::InvalidInput(
            "a device id is an even number of hex digits".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_key_pragma_is_written_into_the_room_it_started_with() {
        let key: Vec<u8> = (0..32).collect();
        let pragma = key_pragma(&key);
        assert_eq!(
            pragma.as_str(),
            format!("PRAGMA key = \"x'{}'\";", hex::encode(&key))
        );
        // Grown, it would have left a copy of part of the key behind.
        assert_eq!(pragma.capacity(), 32 + 64);
    }
    use crate::model::{Category, DelegationLevel, Handoff, Priority, Role};

    /// A new store at `path` whose team has one member, max, a manager.
    fn managed_by_max(path: &Path) -> Store {
        let store = Store::open(path, &[7; 32], StoreOptions::default()).expect("open");
        store
            .create_team(
                "Clinic",
                Member {
                    user_id: "max".into(),
                    name: "Max".into(),
                    role: Role::Manager,
                    trusted: true,
                    active: true,
                },
            )
            .unwrap();
        store
    }

    /// A long merge or write holds the writer; the lists and a task's detail
    /// still answer, from the last commit, with the user and team as the
    /// writer left them, and the detail is the one the writer gives.
    #[test]
    fn views_answer_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = managed_by_max(&dir.path().join("s.db"));
        let task = store
            .delegate(NewTask {
                handoff: Handoff {
                    title: "Call back".into(),
                    outcome: "reached".into(),
                    why: "follow-up".into(),
                    due: None,
                    priority: Priority::Normal,
                    category: Category::FollowUpCall,
                    level: DelegationLevel::Delegable,
                    sop: None,
                    route_result_to: None,
                },
                patient: None,
                assignee: Some("max".into()),
                pool: None,
            })
            .unwrap();
        let detail = store.task_detail(&task).unwrap();
        let busy = store.lock();
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let (store, task) = (&store, &task);
            s.spawn(move || {
                let lists = (
                    store.my_queue().map(|q| q.upcoming.len()),
                    store.task_ids(),
                    store.needs_attention().map(|a| a.len()),
                    store.team().map(|t| t.name),
                    store.task_detail(task),
                );
                let _ = tx.send(lists);
            });
            let answered = rx.recv_timeout(Duration::from_secs(30));
            drop(busy);
            let (queue, ids, attention, team, detail_meanwhile) =
                answered.expect("the views answered while the writer was held");
            assert_eq!(queue.unwrap(), 1);
            assert_eq!(ids.unwrap(), vec![task.clone()]);
            assert_eq!(attention.unwrap(), 0);
            assert_eq!(team.as_deref(), Some("Clinic"));
            assert_eq!(detail_meanwhile.unwrap(), detail);
        });
    }

    /// Emptying the WAL (the last step of a wipe, and of closing a store)
    /// waits for a view that is reading at that moment: the first try
    /// reports busy, a later one succeeds once the view is done, and the
    /// WAL file is empty after it. Without a reader's release, it gives up
    /// with the typed error when its patience runs out.
    #[test]
    fn emptying_the_log_waits_for_a_view_that_is_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = managed_by_max(&dir.path().join("s.db"));
        let reading = store.reader.lock().unwrap();
        reading.execute_batch("BEGIN").unwrap();
        let rows: i64 = reading
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))
            .unwrap();
        assert!(rows > 0);
        {
            let writer = store.lock();
            writer.conn.busy_timeout(Duration::from_millis(20)).unwrap();
            let gave_up = empty_log_within(&writer.conn, Duration::ZERO, || {});
            assert!(
                matches!(gave_up, Err(Error::Sqlite(_))),
                "a reading view keeps the log from being emptied: {gave_up:?}"
            );
        }
        std::thread::scope(|s| {
            let (busy_tx, busy_rx) = mpsc::channel();
            let emptying = s.spawn(|| {
                let writer = store.lock();
                empty_log_within(&writer.conn, Duration::from_secs(30), move || {
                    let _ = busy_tx.send(());
                })
            });
            busy_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the first try found the view reading");
            reading.execute_batch("COMMIT").unwrap();
            drop(reading);
            emptying
                .join()
                .unwrap()
                .expect("emptied once the view was done");
        });
        let wal = std::fs::metadata(dir.path().join("s.db-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "the WAL is empty");
    }
}
