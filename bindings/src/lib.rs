#![doc = include_str!("../README.md")]

use std::sync::{Arc, Mutex};

use handoff_core as core;

#[cfg(target_os = "android")]
mod android;
mod error;
mod types;

pub use error::{HandoffError, Result};
pub use types::*;

uniffi::setup_scaffolding!();

/// The phone's encrypted task store, and its sync with the relay.
///
/// Local calls are synchronous and quick (one SQLite transaction each); the
/// apps call them off the main thread. `enrol` and `syncNow` wait on the
/// network. Every command either writes durably or throws and writes nothing.
#[derive(uniffi::Object)]
pub struct TaskStore {
    store: Arc<core::Store>,
    engine: Mutex<Option<Arc<core::SyncEngine>>>,
}

impl TaskStore {
    /// The sync engine (its background runtime starts on first use).
    fn engine(&self) -> Result<Arc<core::SyncEngine>> {
        let mut slot = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = slot.as_ref() {
            return Ok(engine.clone());
        }
        let engine = Arc::new(core::SyncEngine::new(self.store.clone())?);
        *slot = Some(engine.clone());
        Ok(engine)
    }
}

#[uniffi::export]
impl TaskStore {
    /// Open (or create) the store at `path` with the 32-byte `key` from the
    /// Keystore/Keychain. A wrong key throws `WrongKey` and touches nothing.
    /// `utcOffsetMinutes` is the phone's offset, for "today" in my queue.
    /// After an app update that changed the clinic's rules, the first open
    /// derives every task again (seconds on a phone with a year of tasks):
    /// `progress` hears how far it has come, to show; a usual open tells it
    /// nothing.
    #[uniffi::constructor(default(utc_offset_minutes = 0, progress = None))]
    pub fn open(
        path: String,
        key: Vec<u8>,
        utc_offset_minutes: i32,
        progress: Option<Arc<dyn OpenProgressListener>>,
    ) -> Result<Arc<TaskStore>> {
        let options = core::StoreOptions {
            utc_offset_minutes,
            on_open_progress: progress.map(|p| {
                Arc::new(move |o: core::OpenProgress| {
                    p.on_progress(
                        u32::try_from(o.done).unwrap_or(u32::MAX),
                        u32::try_from(o.total).unwrap_or(u32::MAX),
                    );
                }) as Arc<dyn Fn(core::OpenProgress) + Send + Sync>
            }),
            ..core::StoreOptions::default()
        };
        // The open store needs it no more: wiped, not left in freed memory.
        let key = zeroize::Zeroizing::new(key);
        let store = core::Store::open(path, &key, options)?;
        Ok(Arc::new(TaskStore {
            store: Arc::new(store),
            engine: Mutex::new(None),
        }))
    }

    /// This device's automerge actor id (hex).
    pub fn device_actor(&self) -> String {
        self.store.device_actor()
    }

    /// Who this device belongs to; `null` until enrolled (or after a wipe).
    pub fn enrolment(&self) -> Result<Option<Enrolment>> {
        let Some(settings) = self.store.relay_settings()? else {
            return Ok(None);
        };
        let (Some(user), Some(team)) = (self.store.user(), self.store.team()) else {
            return Ok(None);
        };
        Ok(team.member(&user).map(|m| Enrolment {
            team_id: settings.team,
            user_id: user.clone(),
            role: m.role.into(),
        }))
    }

    /// The team as this device knows it (members, SOP templates).
    pub fn team(&self) -> Option<Team> {
        self.store.team().map(Into::into)
    }

    /// Redeem an invite from the practice admin, then fetch the team and
    /// its tasks. `listener` hears how far that has come (`CatchingUp`),
    /// each page that landed (`DataChanged`), then `Synced`: a clinic's
    /// long history can take a while on a poor connection. If the signal
    /// is lost on the way (`Offline`), calling this again fetches the rest.
    pub fn enrol(
        &self,
        relay_url: String,
        invite: String,
        listener: Arc<dyn SyncListener>,
    ) -> Result<Enrolment> {
        let reply =
            self.engine()?
                .enrol_and_catch_up(&relay_url, &invite, Arc::new(Forward(listener)))?;
        Ok(Enrolment {
            team_id: reply.team,
            user_id: reply.user,
            role: reply.role.into(),
        })
    }

    // ---- views ----------------------------------------------------------

    pub fn my_queue(&self) -> Result<MyQueue> {
        Ok(self.store.my_queue()?.into())
    }

    /// Unassigned tasks waiting in my role's pool.
    pub fn shared_pool(&self) -> Result<Vec<TaskSummary>> {
        Ok(self
            .store
            .shared_pool()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub fn review_inbox(&self) -> Result<Vec<ReviewItem>> {
        Ok(self
            .store
            .review_inbox()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub fn needs_attention(&self) -> Result<Vec<AttentionItem>> {
        Ok(self
            .store
            .needs_attention()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub fn dismiss_attention(&self, key: String) -> Result<()> {
        Ok(self.store.dismiss_attention(&key)?)
    }

    pub fn task_detail(&self, task_id: String) -> Result<TaskDetail> {
        Ok(self.store.task_detail(&task_id)?.into())
    }

    /// Key figures per owner for tasks in `[from, to)` (epoch ms).
    pub fn kpis(&self, from_ms: i64, to_ms: i64) -> Result<Vec<OwnerKpis>> {
        Ok(self
            .store
            .kpis(from_ms, to_ms)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    // ---- commands -------------------------------------------------------

    /// Hand a task off; returns its id.
    pub fn delegate(&self, task: NewTask) -> Result<String> {
        Ok(self.store.delegate(task.into())?)
    }

    pub fn assign(&self, task_id: String, to: String) -> Result<()> {
        self.store.assign(&task_id, &to)?;
        Ok(())
    }

    pub fn claim(&self, task_id: String) -> Result<()> {
        self.store.claim(&task_id)?;
        Ok(())
    }

    /// The assignee's "repeat back" of the handoff.
    #[uniffi::method(default(note = ""))]
    pub fn acknowledge(&self, task_id: String, note: String) -> Result<()> {
        self.store.acknowledge(&task_id, &note)?;
        Ok(())
    }

    pub fn start(&self, task_id: String) -> Result<()> {
        self.store.start(&task_id)?;
        Ok(())
    }

    pub fn tick_checklist_item(&self, task_id: String, item: u32) -> Result<()> {
        self.store.tick_checklist_item(&task_id, item)?;
        Ok(())
    }

    pub fn log_call_attempt(&self, task_id: String, attempt: CallAttempt) -> Result<()> {
        self.store.log_call(&task_id, attempt.into())?;
        Ok(())
    }

    pub fn comment(&self, task_id: String, text: String) -> Result<()> {
        self.store.comment(&task_id, &text)?;
        Ok(())
    }

    #[uniffi::method(default(note = ""))]
    pub fn submit(&self, task_id: String, note: String) -> Result<()> {
        self.store.submit(&task_id, &note)?;
        Ok(())
    }

    #[uniffi::method(default(note = ""))]
    pub fn approve(&self, task_id: String, note: String) -> Result<()> {
        self.store.approve(&task_id, &note)?;
        Ok(())
    }

    pub fn return_with_feedback(&self, task_id: String, feedback: String) -> Result<()> {
        self.store.return_work(&task_id, &feedback)?;
        Ok(())
    }

    /// Finish without review (trusted staff, reviewers).
    #[uniffi::method(default(note = ""))]
    pub fn complete(&self, task_id: String, note: String) -> Result<()> {
        self.store.complete(&task_id, &note)?;
        Ok(())
    }

    pub fn cancel(&self, task_id: String, reason: String) -> Result<()> {
        self.store.cancel(&task_id, &reason)?;
        Ok(())
    }

    pub fn escalate(&self, task_id: String, reason: String) -> Result<()> {
        self.store.escalate(&task_id, &reason)?;
        Ok(())
    }

    // ---- sync -----------------------------------------------------------

    /// One full round now: push everything, pull everything.
    pub fn sync_now(&self) -> Result<SyncReport> {
        Ok(self.engine()?.sync_now()?.into())
    }

    /// Live sync in the background until the handle is stopped or closed.
    /// `listener` hears every round, data change, loss of signal, and
    /// revocation, on the sync thread.
    pub fn start_sync(&self, listener: Arc<dyn SyncListener>) -> Result<Arc<SyncHandle>> {
        let handle = self.engine()?.start(Arc::new(Forward(listener)))?;
        Ok(Arc::new(SyncHandle(handle)))
    }
}

/// Hears live sync. Implemented by the app (Kotlin/Swift).
/// Hears how far opening the store has come: `done` of `total` tasks
/// derived again (see `TaskStore.open`).
#[uniffi::export(with_foreign)]
pub trait OpenProgressListener: Send + Sync {
    fn on_progress(&self, done: u32, total: u32);
}

#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    fn on_sync_event(&self, event: SyncEvent);
}

struct Forward(Arc<dyn SyncListener>);

impl core::SyncListener for Forward {
    fn on_sync_event(&self, event: core::SyncEvent) {
        self.0.on_sync_event(event.into());
    }
}

/// Live sync runs while this is open.
#[derive(uniffi::Object)]
pub struct SyncHandle(core::SyncHandle);

#[uniffi::export]
impl SyncHandle {
    /// Something was written locally: push it now rather than after the wait.
    pub fn sync_now(&self) {
        self.0.sync_now();
    }

    pub fn stop(&self) {
        self.0.stop();
    }
}
