//! The relay without HTTP: its loaded teams, each with a two-stage feed
//! writer around its [`TeamState`] (the logic, without I/O, in
//! `team_state.rs`), enrolment and the admin commands.
//!
//! Each loaded team has its state behind a mutex and a feed writer thread
//! behind a door. A push is admitted where it arrives: through the door,
//! each change validated against the team's state (the core's own
//! derivation decides who may read and write what) and the push queued
//! for the writer, which appends the accepted changes of every push
//! waiting to the feed in one SQLite transaction, synced to disk, then
//! takes them into the feed in memory, wakes the long-polls that may read
//! them and answers the pushes. So concurrent pushes share one commit, and
//! the next pushes are validated while the last ones are being synced.
//! (Until 2026-11-30 a thread of its own admitted the pushes: one more hop
//! between threads per push, ~15% of the relay's CPU per edit at one edit
//! per push; BENCHMARKS.md.)

use axum::body::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use handoff_core::store::TEAM_DOC;
use handoff_core::sync::wire::{RefusalCode, Verdict};
use handoff_core::team::{Reach, TeamWriter};
use handoff_core::{is_valid_id, Device, Member, Role};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::db::{Db, DeviceRow, FeedRow, InviteRow, RevocationStamp, TeamRow, Vouched};
use crate::error::{Error, Result};
use crate::team_state::{chain_after, refuse, tag_of_chain, Incoming, Replay, TeamState};

/// How long after redeeming an invite its device may redeem it again
/// (its enrolment's reply was lost): a phone retries within seconds.
pub const ENROL_AGAIN_WITHIN_MS: i64 = 10 * 60 * 1000;

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
    pub actor: Arc<str>,
    pub team_id: Arc<str>,
    pub user_id: Arc<str>,
}

/// The relay: the database and the loaded teams.
pub struct Relay {
    pub db: Arc<Db>,
    teams: Mutex<HashMap<String, Arc<LoadedTeam>>>,
    tokens: Mutex<Tokens>,
}

/// Devices by their token's hash, as last read from the database, for as
/// long as no revocation was noted since ([`Db::revocation_stamp`]).
#[derive(Default)]
struct Tokens {
    stamp: RevocationStamp,
    /// Counts the times every token was forgotten, so that a device read
    /// before one is not remembered after it.
    forgotten: u64,
    devices: HashMap<[u8; 32], Caller>,
}

/// Tokens remembered at most (then forgotten all at once): far more
/// devices than one relay serves.
const MAX_TOKENS: usize = 200_000;

/// A team in memory: its state, and the door to its feed writer thread.
pub struct LoadedTeam {
    state: Mutex<TeamState>,
    /// Held while a push is admitted and queued, so the writer gets the
    /// admitted changes in the order of their seqs; and by work that runs
    /// alone ([`LoadedTeam::alone`]), so no push is admitted meanwhile.
    door: Mutex<mpsc::Sender<Admitted>>,
    /// A write failed after the state took it in: the state is ahead of the
    /// database and is rebuilt from the feed on next use.
    failed: AtomicBool,
    /// Told once the team failed: long-polls waiting on this state wake
    /// and wait again on the reloaded team (no change recorded in the
    /// reloaded state reaches them here).
    replaced: watch::Sender<bool>,
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
    pub restarted: bool,
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

/// The team's revoked devices as read from the database at `read_at` (the
/// revocations file's stamp and the forgotten-tokens generation then);
/// still so when the feed was `as_of` entries long (or longer).
#[derive(Default)]
struct RevokedDevices {
    as_of: u64,
    read_at: Option<(RevocationStamp, u64)>,
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

    /// The state is ahead of the database (a write failed) or may be
    /// inconsistent (a panic): the next request reloads the team from its
    /// feed, and the long-polls waiting on this one wake to wait there.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.replaced.send_replace(true);
    }

    /// Did the team fail since it was loaded ([`LoadedTeam::fail`])?
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Told when the team fails; subscribe before looking at the state.
    pub fn replaced(&self) -> watch::Receiver<bool> {
        self.replaced.subscribe()
    }

    /// A push was dropped unanswered: the team's writer stopped (it only
    /// ever answers). The next request reloads the team with a new one.
    pub fn writer_stopped(&self) {
        self.fail();
    }

    /// Admit a push and queue it for the feed writer; the receipt answers
    /// one verdict per change, in order, once they are committed. Blocks
    /// for as long as admission takes (tens of µs a change) and while work
    /// runs alone (enrolment: one commit).
    pub fn push(&self, caller: Caller, changes: Vec<Incoming>) -> PushReceipt {
        let (reply, receipt) = oneshot::channel();
        let door = lock(&self.door);
        let admitted = admit(
            self,
            Push {
                caller,
                changes,
                reply,
            },
        );
        // If the writer stopped, the reply is dropped with the batch and
        // the receipt says so.
        let _ = door.send(admitted);
        receipt
    }

    /// Run `work` alone: after every admitted change is committed, before
    /// the next push is admitted (enrolment writes the feed itself). Not
    /// on a state that is ahead of its database: then the caller is told
    /// to try again, on the reloaded team.
    /// Wait until the writer has committed (or refused) everything
    /// admitted before now. A failed team's writer may still be committing
    /// pushes admitted before the failure: its reload waits for that, or it
    /// would read the feed without those rows and give their seqs again.
    fn drain(&self) {
        let (done, drained) = mpsc::sync_channel(1);
        if lock(&self.door).send(Admitted::Flush(done)).is_ok() {
            // Gone: the writer stopped, and commits nothing more.
            let _ = drained.recv();
        }
    }

    fn alone<T>(&self, work: impl FnOnce(&LoadedTeam) -> T) -> Result<T> {
        let stopped = || Error::Storage("the feed writer stopped".into());
        let door = lock(&self.door);
        let (done, flushed) = mpsc::sync_channel(1);
        door.send(Admitted::Flush(done)).map_err(|_| stopped())?;
        flushed.recv().map_err(|_| stopped())?;
        if self.failed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        Ok(work(self))
    }
}

/// Where a push's verdicts go.
type Reply = oneshot::Sender<Result<Pushed>>;

/// How a push is answered: one verdict per change, and where the newest
/// change it stored, or a duplicate of it, stands in the feed (its seq and
/// tag), if any. A duplicate of a change not yet committed names where it
/// will stand: its answer goes out after that commit, and a failed commit
/// fails every answer after it (the writer's `failure` stays set).
#[derive(Debug, Default)]
pub struct Pushed {
    pub verdicts: Vec<Verdict>,
    pub newest: Option<(u64, u32)>,
}

/// One push being admitted.
struct Push {
    caller: Caller,
    changes: Vec<Incoming>,
    reply: Reply,
}

/// Changes admitted into the state, waiting to be committed.
enum Admitted {
    Batch {
        rows: Vec<(FeedRow, Arc<str>)>,
        answers: Vec<(Reply, Pushed)>,
        /// Older generations of redacted tasks, deleted once `rows` are in.
        retire: Vec<Arc<str>>,
        /// Redactions and changes copying earlier events into a redacted
        /// task, and the relay's own carrying events over to one, noted beside the
        /// database before `rows` are committed ([`Db::note_vouched`]).
        vouch: Vec<Vouched>,
    },
    /// Acknowledged once everything before it is committed.
    Flush(mpsc::SyncSender<()>),
    /// A push answered at admission (its member was deactivated).
    Nothing,
    /// Admission failed (a panic) or the team had failed already: nothing
    /// of it is written, and the committer writes nothing more.
    Failed(Vec<Reply>),
}

/// A push's answer, once the feed writer has taken it.
pub type PushReceipt = oneshot::Receiver<Result<Pushed>>;

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
                team.fail();
            }
            tracing::error!("a feed writer stopped with a panic; the team is reloaded on next use");
        }
    }
}

/// Admit every change of a push in order. The admitted changes get their
/// seqs now (after those still being committed).
fn admit(team: &LoadedTeam, push: Push) -> Admitted {
    let Push {
        caller,
        changes,
        reply,
    } = push;
    let mut st = team.state();
    if team.failed.load(Ordering::Acquire) {
        // The state is not to be trusted; the next request reloads it.
        return Admitted::Failed(vec![reply]);
    }
    // A member the team deactivated writes nothing more (checked here,
    // under the lock admission holds anyway; nothing to commit).
    if !st.is_active_member(&caller.user_id) {
        let _ = reply.send(Err(Error::NotAMember));
        return Admitted::Nothing;
    }
    let mut rows: Vec<(FeedRow, Arc<str>)> = Vec::new();
    let mut retire = Vec::new();
    let mut vouch = Vec::new();
    let relay_actor = st.team_doc.get_actor().to_hex_string();
    let relay_actor = st.actor_key(&relay_actor);
    let actor = st.actor_key(&caller.actor);
    // Compared with each change's actor without writing that out in hex.
    let caller_bytes = hex::decode(&*caller.actor).unwrap_or_default();
    let mut verdicts = Vec::with_capacity(changes.len());
    let mut newest = None;
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
        // one) must not stop the team. The state may be half changed:
        // nothing of this push is written, it is answered with an error to
        // retry, the team is reloaded from its feed on next use, and the
        // change is remembered, so that when its phone sends it again it
        // is refused at once.
        let admitted =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| st.admit(&caller, &change)));
        let Ok(admitted) = admitted else {
            team.fail();
            tracing::error!("admitting a change panicked; the team is reloaded on next use");
            lock(poisoned()).extend(hash);
            return Admitted::Failed(vec![reply]);
        };
        match admitted {
            Ok(true) => {
                let Ok((c, _)) = &change.decoded else {
                    continue;
                };
                // One a phone offered for its author (a restored relay
                // takes it again): the feed names the author, as it does
                // once reloaded.
                let written_by = match c.actor_id().to_bytes() == caller_bytes.as_slice() {
                    true => actor.clone(),
                    false => st.actor_key(&c.actor_id().to_hex_string()),
                };
                let row = st.next_row(change.doc, c);
                newest = Some((row.seq, tag_of_chain(row.chain)));
                rows.push((row, written_by));
                verdicts.push(Verdict::Stored);
                for (doc, carried) in std::mem::take(&mut st.carry_over) {
                    st.admit_carry_over(&doc, &carried);
                    let row = st.next_row(doc, &carried);
                    newest = Some((row.seq, tag_of_chain(row.chain)));
                    rows.push((row, relay_actor.clone()));
                    vouch.push(Vouched {
                        hash: carried.hash().0,
                        by_relay: Some(relay_actor.to_string()),
                    });
                }
                retire.append(&mut st.retiring);
                vouch.extend(st.vouching.drain(..).map(|h| Vouched {
                    hash: h.0,
                    by_relay: None,
                }));
            }
            Ok(false) => {
                verdicts.push(Verdict::Duplicate);
                // Where it stands too: a phone whose first push of it was
                // stored, but whose reply was lost, hears it now.
                if let Some(at) = hash.and_then(|h| st.position_of(&change.doc, &h.0)) {
                    newest = newest.max(Some(at));
                }
            }
            Err(v) => verdicts.push(v),
        }
    }
    Admitted::Batch {
        rows,
        answers: vec![(reply, Pushed { verdicts, newest })],
        retire,
        vouch,
    }
}

/// Changes whose admission panicked, relay-wide: refused when sent again.
fn poisoned() -> &'static Mutex<HashSet<ChangeHash>> {
    static POISONED: std::sync::OnceLock<Mutex<HashSet<ChangeHash>>> = std::sync::OnceLock::new();
    POISONED.get_or_init(Default::default)
}

/// The feed writer: commit every admitted push waiting in one
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
        let mut vouch = Vec::new();
        for a in waiting {
            match a {
                Admitted::Batch {
                    rows: r,
                    answers: a,
                    retire: t,
                    vouch: v,
                } => {
                    rows.extend(r);
                    answers.extend(a);
                    retire.extend(t);
                    vouch.extend(v);
                }
                Admitted::Flush(done) => flushes.push(done),
                Admitted::Nothing => {}
                Admitted::Failed(replies) => {
                    failure.get_or_insert_with(|| {
                        "the relay could not take this team's changes; try again".to_owned()
                    });
                    answers.extend(replies.into_iter().map(|r| (r, Pushed::default())));
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
        // Noted before the rows are committed, so that no committed change
        // goes unnoted. (A change noted whose commit then fails passed
        // every check all the same; its phone sends it again.)
        if failure.is_none() && !vouch.is_empty() {
            if let Err(e) = db.note_vouched(team_id, &vouch) {
                team.fail();
                tracing::error!("{e}; the team is reloaded on next use");
                failure = Some(e.to_string());
            }
        }
        if failure.is_none() && !rows.is_empty() {
            let written = db.append_feed_batch(team_id, rows.iter().map(|(r, _)| r));
            if let Err(e) = written {
                team.fail();
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
                for (reply, pushed) in answers {
                    let _ = reply.send(Ok(pushed));
                }
                if !retire.is_empty() {
                    if let Err(e) = retire_docs(db, team_id, &team, &retire) {
                        // Hidden and refused already; the reload deletes them.
                        team.fail();
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
        // Answered and woken first: the pushes do not wait for it.
        db.finish_checkpoint_if_asked();
    }
}

/// Rebuild a team's state from its stored feed. The relay writes with a
/// new actor each time it loads a team (`teams.relay_actor` is only its
/// first): restored from a backup, it lost the changes it wrote since, which
/// phones have, and writing on under the same actor would give its next
/// change a sequence number those phones already hold another change
/// under. automerge refuses such a change, and every change after it.
fn load_team(db: &Db, row: &TeamRow) -> Result<TeamState> {
    let mut relay_actor = vec![0u8; 16];
    rand::rng().fill_bytes(&mut relay_actor);
    let relay_actor = ActorId::from(relay_actor);
    let mut replay = Replay::new(db.read(|conn| Db::retired_events(conn, &row.team_id))?);
    db.read(|conn| Db::feed(conn, &row.team_id, |r| replay.entry(r)))?;
    let exits = db.read(|conn| Db::exits(conn, &row.team_id))?;
    let (mut st, superseded) = replay.finish(relay_actor, exits)?;
    st.vouch_for(db.vouched(&row.team_id)?);
    // The relay stopped between committing a newer generation and
    // deleting the older: delete it now.
    if !superseded.is_empty() {
        let plan = st.retirement_plan(&superseded);
        let hashes = db.retire_docs(&row.team_id, &plan)?;
        st.forget_retired(&superseded, &hashes);
    }
    Ok(st)
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
            tokens: Mutex::new(Tokens::default()),
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
        let (state, mut teams) = loop {
            let failed = lock(&self.teams).get(team_id).cloned();
            if let Some(failed) = &failed {
                failed.drain();
            }
            let state = load_team(&self.db, &row)?;
            let teams = lock(&self.teams);
            match teams.get(team_id) {
                Some(t) if !t.failed.load(Ordering::Acquire) => return Ok(t.clone()),
                // Another load was put in place meanwhile, and has failed
                // too: its writer may have committed rows this load did
                // not read. Load again, after draining it.
                Some(t) if !failed.as_ref().is_some_and(|f| Arc::ptr_eq(f, t)) => continue,
                _ => break (state, teams),
            }
        };
        let (tx, rx) = mpsc::channel();
        let team = Arc::new(LoadedTeam {
            state: Mutex::new(state),
            door: Mutex::new(tx),
            failed: AtomicBool::new(false),
            replaced: watch::Sender::new(false),
            revoked: Mutex::new(RevokedDevices::default()),
            last_reply: Mutex::new(SharedReply::default()),
        });
        let (db, weak, id) = (self.db.clone(), Arc::downgrade(&team), team_id.to_owned());
        std::thread::Builder::new()
            .name("feed-commit".into())
            .spawn(move || committer(&db, &id, weak, rx))
            .map_err(|e| Error::Storage(format!("cannot start a feed writer: {e}")))?;
        teams.insert(team_id.to_owned(), team.clone());
        Ok(team)
    }

    pub fn loaded_feed_length(&self) -> u64 {
        let teams: Vec<_> = lock(&self.teams).values().cloned().collect();
        teams.iter().map(|t| t.state().head()).sum()
    }

    /// The feed length of every team, loaded or not (for /metrics): a
    /// loaded team's head as it has it, the others' as stored.
    pub fn feed_length(&self) -> Result<u64> {
        let stored = self.db.read(Db::feed_heads)?;
        let loaded: Vec<_> = lock(&self.teams)
            .iter()
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect();
        let loaded: HashMap<String, u64> = loaded
            .into_iter()
            .map(|(id, t)| (id, t.state().head()))
            .collect();
        Ok(stored
            .into_iter()
            .map(|(id, head)| loaded.get(&id).map_or(head, |&l| l.max(head)))
            .sum())
    }

    /// Who is calling, from the bearer token: a token checked before is
    /// taken from memory while no revocation was noted since (one `stat`
    /// of the revocations file, where a database read cost ~12% of the
    /// relay's CPU per edit), so a revocation by the admin command still
    /// counts from the very next request. Unknown, revoked and new tokens
    /// are read from the database.
    pub fn authenticate(&self, token: &str) -> Result<Caller> {
        let hash = sha256(token.as_bytes());
        let stamp = self.db.revocation_stamp();
        let forgotten = {
            let mut known = lock(&self.tokens);
            if known.stamp != stamp {
                known.devices.clear();
                known.stamp = stamp;
            }
            if let Some(caller) = known.devices.get(&hash) {
                return Ok(caller.clone());
            }
            known.forgotten
        };
        let device = self
            .db
            .read(|c| Db::device_by_token(c, &hash))?
            .ok_or(Error::InvalidToken)?;
        if device.revoked_at.is_some() {
            return Err(Error::DeviceRevoked);
        }
        let caller = Caller {
            actor: device.actor.into(),
            team_id: device.team_id.into(),
            user_id: device.user_id.into(),
        };
        let mut known = lock(&self.tokens);
        // Kept only if nothing was revoked since it was read: a revocation
        // noted or found meanwhile may not have been in that read.
        if known.stamp == stamp && known.forgotten == forgotten {
            if known.devices.len() >= MAX_TOKENS {
                known.devices.clear();
            }
            known.devices.insert(hash, caller.clone());
        }
        Ok(caller)
    }

    /// Forget every token checked: a revocation reached the database by
    /// some other way than the admin command.
    fn forget_tokens(&self) {
        let mut known = lock(&self.tokens);
        known.devices.clear();
        known.forgotten += 1;
    }

    /// Has the caller's device been revoked since the feed's entry `seq`
    /// (or before it) was written? A long-poll that waited asks this before
    /// it sends what woke it (a stolen phone gets the 401, not the news).
    /// One answer serves every poll the same change woke, where a read per
    /// poll took a third of the time it takes one change to wake 10,000 of
    /// them; and the team's revoked devices are read again only when a
    /// revocation was noted since (as for [`Relay::authenticate`]), where
    /// a read at every change cost ~5% of the relay's CPU per edit.
    pub fn revoked_since(&self, team: &LoadedTeam, caller: &Caller, seq: u64) -> Result<bool> {
        let mut known = lock(&team.revoked);
        if known.as_of < seq {
            let head = team.state().head();
            let read_at = Some((self.db.revocation_stamp(), lock(&self.tokens).forgotten));
            if known.read_at != read_at {
                let actors = self.db.read(|c| Db::revoked_devices(c, &caller.team_id))?;
                known.actors = actors.into_iter().collect();
                known.read_at = read_at;
            }
            known.as_of = head;
        }
        Ok(known.actors.contains(&*caller.actor))
    }

    /// Every change of a document the caller may be sent that is not behind
    /// `have` (heads the caller holds; unknown ones are ignored), in the
    /// order it can be applied, cut after `page_bytes` (at least one): a
    /// prefix, so the device takes it and asks again from its new heads.
    /// As a pull would send them: all of a document the caller may read,
    /// and of one taken from them, what came up to the change that took it
    /// (a phone that had archived the task needs that history to apply the
    /// change its pull brought).
    pub fn repair(
        &self,
        caller: &Caller,
        doc: &str,
        have: &[[u8; 32]],
        page_bytes: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let team = self.team(&caller.team_id)?;
        let seqs = {
            let st = team.state();
            let seqs: Vec<u64> = st
                .seqs_by_doc
                .get(doc)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&seq| st.delivers(seq, doc, &caller.user_id))
                .collect();
            if seqs.is_empty() {
                return Err(Error::NotFound("no such document"));
            }
            seqs
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
        let mut bytes = 0;
        Ok(am
            .get_changes(&known)
            .into_iter()
            .take_while(|c| {
                let first = bytes == 0;
                bytes += c.raw_bytes().len();
                first || bytes <= page_bytes
            })
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
            // The admin command noted it already, unless the database was
            // changed by hand: then this is the first the relay hears of it.
            self.forget_tokens();
            // Runs alone, like enrolment (a failed team is reloaded and
            // brought up to date at the next tick).
            let written = team.alone(|team| mark_revoked(&self.db, team, &team_id, &pending));
            if let Err(e) = written.and_then(|w| w) {
                tracing::warn!("writing a revocation into the team document failed: {e}");
            }
        }
        Ok(())
    }

    /// Redeem an invite: bind the device's actor and the token it chose to
    /// the invited user, write the member and the device into the team
    /// document. An older app chooses no token: the relay makes one and
    /// returns it (and such an app cannot retry a lost enrolment).
    pub fn enrol(
        &self,
        invite: &str,
        actor: &str,
        token: Option<&str>,
    ) -> Result<(Option<String>, InviteRow)> {
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
        if token.is_some_and(|t| t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(Error::BadRequest(
                "bad_token",
                "the device's token must be 32 random bytes in hex".into(),
            ));
        }
        let made = token.is_none().then(|| random_hex(32));
        let token_hash = sha256(token.or(made.as_deref()).unwrap_or_default().as_bytes());
        let code_hash = sha256(normalize_invite(invite).as_bytes());
        let row = self
            .db
            .read(|c| Db::invite(c, &code_hash))?
            .ok_or(Error::NotFound("no such invite"))?;
        let now = now_ms();
        if let Some(redeemed_at) = row.redeemed_at {
            // The same phone again, soon after: its enrolment's reply was
            // lost (a dead zone, a timeout), and it could never enrol
            // again with its actor. It shows it is that phone with the
            // token it enrolled with (the invite and the actor id are not
            // secret enough: every member's phone holds the actor), and is
            // answered with its team and user again; nothing changes.
            let again = made.is_none()
                && row.redeemed_by.as_deref() == Some(actor.as_str())
                && now.saturating_sub(redeemed_at) < ENROL_AGAIN_WITHIN_MS
                && self
                    .db
                    .read(|c| Db::device_token_is(c, &row.team_id, &actor, &token_hash))?;
            return if again {
                Ok((None, row))
            } else {
                Err(Error::InviteUsed)
            };
        }
        if row.expires_at <= now {
            return Err(Error::InviteExpired);
        }
        let role = Role::parse(&row.role).ok_or(Error::Storage("invite has a bad role".into()))?;
        let team = self.team(&row.team_id)?;
        // Enrolment writes the team document and the feed itself: it runs
        // alone, between two pushes.
        let redemption = Redemption {
            code_hash,
            actor,
            token_hash,
            now,
        };
        let row = team.alone(|team| enrol_device(&self.db, team, redemption, row, role))??;
        Ok((made, row))
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
            team.fail();
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

/// What a device brings to an invite it redeems.
struct Redemption {
    /// The invite's code, hashed.
    code_hash: [u8; 32],
    actor: String,
    /// The token the device chose, hashed.
    token_hash: [u8; 32],
    now: i64,
}

/// Bind a device (and, the first time, its user) in the team document and
/// the relay's database, in one transaction with the invite's redemption.
fn enrol_device(
    db: &Db,
    team: &LoadedTeam,
    redemption: Redemption,
    mut row: InviteRow,
    role: Role,
) -> Result<InviteRow> {
    let Redemption {
        code_hash,
        actor,
        token_hash,
        now,
    } = redemption;
    let mut st = team.state();
    // The relay's own actors write the team's document (and carry events
    // over to redacted tasks); a device sharing one would share its
    // sequence numbers and never be sent the relay's entries. No device
    // takes an actor that wrote anything before either, nor one the relay
    // carried events over with before a restore (phones hold that change,
    // and offer it again).
    if actor == st.team_doc.get_actor().to_hex_string()
        || st.has_written(&actor)
        || st.carried_over_as(&actor)
    {
        return Err(Error::Conflict("this actor id is the relay's own".into()));
    }
    // A member already in the team keeps the role the team gives them
    // (a manager changes it there; an invite's role is for a new member),
    // and one deactivated gets no device (the invite stays good for when
    // they are active again).
    let role = match st.team.members.get(&row.user_id) {
        Some(m) if !m.active => return Err(Error::NotAMember),
        Some(m) => {
            row.role = m.role.as_str().into();
            m.role
        }
        None => role,
    };
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
    // Taken, and the device still new, in the transaction that binds it:
    // an invite redeemed or a device enrolled meanwhile (by another team's
    // relay on the same database, or the same phone twice at once) is
    // refused before anything is written, not by a failure that reloads
    // the team.
    let conn = db.write();
    let tx = conn.unchecked_transaction()?;
    if !Db::redeem_invite(&tx, &code_hash, &actor, now)? {
        return Err(Error::InviteUsed);
    }
    if Db::device(&tx, &actor)?.is_some() {
        return Err(Error::Conflict("this device is already enrolled".into()));
    }
    // A token another device has (a hand-made client's choice): refused
    // here, not by the table's constraint inside the team's writes below,
    // whose failure would reload the team for every device.
    if Db::device_by_token(&tx, &token_hash)?.is_some() {
        return Err(Error::Conflict("choose another token".into()));
    }
    // Written straight into the team's document: if anything below
    // fails, the whole state is dropped and rebuilt from the feed.
    let written = (|| {
        let mut w = TeamWriter(&mut st.team_doc);
        if let Some(m) = &member {
            w.member(m)?;
        }
        w.device(&device)?;
        let feed_row = st.commit_team_change("enrolment")?;
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
            &token_hash,
        )?;
        Db::append_feed(&tx, &row.team_id, &feed_row)?;
        tx.commit()?;
        Ok(feed_row)
    })();
    let feed_row = match written {
        Ok(w) => w,
        Err(e) => {
            team.fail();
            return Err(e);
        }
    };
    // The team as Team::read would now read it, without re-reading every
    // entry: a new device cannot have written anything yet, so only a
    // new member can change what earlier events derive to, and only where
    // they waited for one.
    st.team.devices.insert(actor, device);
    if let Some(m) = member {
        st.team.members.insert(m.user_id.clone(), m);
        st.rederive(Reach::WaitingForTheTeam);
    }
    let relay_actor = st.team_doc.get_actor().to_hex_string();
    let relay_actor = st.actor_key(&relay_actor);
    st.record(&[(feed_row, relay_actor)]);
    Ok(row)
}

/// Start a team: its row, its document (written by the relay's own actor)
/// as the first feed entry. A name another team has (letter case and
/// surrounding spaces aside) is refused unless `again` says it is meant:
/// `create-team` run twice by mistake would otherwise leave two clinics of
/// one name, and invites issued for the wrong one.
pub fn create_team(db: &Db, name: &str, again: bool) -> Result<TeamRow> {
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
    // Immediate: the name is read before the team is written, and
    // `serve` may write between the two (a deferred read would then fail
    // to become a write, busy, however long it waited).
    let conn = db.write();
    let tx = rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)?;
    if !again {
        let same = |t: &TeamRow| t.name.trim().to_lowercase() == name.to_lowercase();
        if let Some(other) = Db::teams(&tx)?.into_iter().find(same) {
            return Err(Error::Conflict(format!(
                "team {} is named {:?} already (--again makes another of that name)",
                other.team_id, other.name
            )));
        }
    }
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
            chain: chain_after(0, &change.hash().0),
        },
    )?;
    tx.commit()?;
    Ok(row)
}

/// What an invite names, checked before anything is written (so that
/// `create-team` makes no team whose first invite it then refuses).
pub fn check_invite(user_id: &str, name: &str, valid_for_hours: u32) -> Result<()> {
    if !is_valid_id(user_id) {
        return Err(Error::BadRequest(
            "bad_user",
            "a user id is 1-64 letters, digits or . _ - @".into(),
        ));
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > handoff_core::input::MAX_NAME {
        return Err(Error::BadRequest(
            "bad_name",
            format!(
                "a member's name is 1-{} characters",
                handoff_core::input::MAX_NAME
            ),
        ));
    }
    if !(1..=MAX_INVITE_HOURS).contains(&valid_for_hours) {
        return Err(Error::BadRequest(
            "bad_hours",
            format!("an invite lasts 1-{MAX_INVITE_HOURS} hours"),
        ));
    }
    Ok(())
}

/// The longest an invite may stay open: a month.
pub const MAX_INVITE_HOURS: u32 = 24 * 31;

/// Issue a one-time invite; returns the code (shown once, stored hashed).
pub fn create_invite(
    db: &Db,
    team_id: &str,
    user_id: &str,
    name: &str,
    role: Role,
    valid_for_hours: u32,
) -> Result<String> {
    check_invite(user_id, name, valid_for_hours)?;
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
            redeemed_by: None,
        },
        now,
    )?;
    Ok(code)
}
