//! The device side of sync. One round: push the outbox (each change gets a
//! verdict), then pull the feed from the saved cursor, applying each page in
//! one transaction and repairing documents that arrive with gaps. Live mode
//! repeats rounds with a long-poll, wakes early on local writes, and backs
//! off with jitter while the relay is unreachable.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::budget::{self, Budget, Kept};
use super::wire::{self, codes, DocChange, PullReply, PushReply, PushRequest, Verdict};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::store::{FeedCursor, Offered, RelaySettings, Store, TEAM_DOC};

/// Changes per push request.
const PUSH_BATCH: usize = 256;
/// Change bytes per push request: well inside the relay's body limit.
const PUSH_BYTES: usize = wire::MAX_BODY / 2;
/// A body is given up when it goes slower than this, in bytes a second,
/// on average (a push's on top of [`REPLY_WAIT`], a reply's on top of
/// [`STALL`]): on a weak signal a big batch or a page of a long history
/// may take minutes, and a fixed limit would give it up every time.
const LINK_FLOOR: u64 = 8 * 1024;
/// How long the relay may take to answer a request once it is in.
const REPLY_WAIT: Duration = Duration::from_secs(60);
/// A reply is given up when nothing of it arrives for this long.
const STALL: Duration = Duration::from_secs(30);
/// The largest reply read from the relay (a repair of a long task's whole
/// history can be large); anything longer is a faulty relay.
const MAX_REPLY: usize = 8 * wire::MAX_BODY;
/// How long a live pull waits on the relay for news.
const LIVE_WAIT: Duration = Duration::from_secs(25);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The relay's answers that stop live sync: retrying changes nothing.
/// (`device_revoked` wipes the store and stops it too.)
const FINAL_CODES: [&str; 3] = [
    codes::INVALID_TOKEN,
    codes::NOT_A_MEMBER,
    codes::UPGRADE_REQUIRED,
];

impl Error {
    /// Whether this error ends sync until someone acts: the device was
    /// revoked, or the relay refused its credentials, its member or its
    /// app version (426). Only the relay's own codes: a 401 or 403 page
    /// from a proxy or gateway in front of it (no code of ours) is an
    /// outage to retry, or live sync would stay off until the app restarts.
    /// Live sync stops on these; `sync_now`'s caller shows them the same way.
    pub fn ends_sync(&self) -> bool {
        match self {
            Error::DeviceRevoked | Error::NotEnrolled => true,
            Error::Relay { status, code, .. } => {
                matches!(status, 401 | 403 | 426) && FINAL_CODES.contains(&code.as_str())
            }
            _ => false,
        }
    }
}

/// What one round moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Own changes the relay now has.
    pub pushed: usize,
    /// Own changes the relay refused (now in "needs attention").
    pub refused: usize,
    /// Changes from other devices applied here.
    pub pulled: usize,
    pub tasks_updated: usize,
    /// Changes the relay had lost (restored from a backup) and took again
    /// when offered: this device's own, and others' of a redacted task
    /// ([`crate::store::ChangeToOffer::mine`]).
    pub offered_again: usize,
}

/// What the engine tells the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// A round finished; the device is up to date with the relay.
    Synced(SyncReport),
    /// Tasks or the team (names, roles, policy) changed because of other
    /// devices, or the relay refused this device's own change (set aside,
    /// in "needs attention"): views are worth re-reading. `tasks_updated`
    /// may be 0 when only the team changed. Sent after each page a long catch-up
    /// applies, so views fill in as it goes.
    DataChanged { tasks_updated: usize },
    /// The device is far behind (new, or back after days away) and pulls
    /// page after page: it has come `at` entries of the team's `of` (a
    /// progress bar's `at / of`). Sent after each page while more follow.
    CatchingUp { at: u64, of: u64 },
    /// A long outbox (back after hours offline, on a weak signal) goes up
    /// request after request: `sent` of `of` changes so far (`of` grows if
    /// the user writes meanwhile). Sent after each request while more
    /// follow.
    Sending { sent: u64, of: u64 },
    /// The relay is unreachable; the engine tries again after the delay.
    Offline { message: String, retry_in_ms: u64 },
    /// The relay refuses this device: its credentials, its member, or its
    /// app version (`code` `upgrade_required`: the app must be updated);
    /// sync stopped.
    AuthFailed { code: String, message: String },
    /// The device was revoked: the local store has been wiped; sync stopped.
    Revoked,
}

/// Receives [`SyncEvent`]s: on the sync runtime's thread for live sync, on
/// the calling thread for `sync_now_telling`. Keep it quick (hand work to
/// the app's own threads). The engine holds none of its locks while it
/// tells, so reading the store here is fine, and so is a sync asked of
/// another thread; a sync call made here directly (`sync_now`, `enrol`)
/// is refused with `InvalidInput` rather than block the thread that would
/// have to run it.
pub trait SyncListener: Send + Sync {
    fn on_sync_event(&self, event: SyncEvent);
}

/// Only https leaves the phone, except to this machine (tests, the demo).
pub fn check_relay_url(url: &str) -> Result<()> {
    let bad = || Error::InvalidInput("the relay address must be an https:// URL".into());
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => match parsed.host() {
            Some(url::Host::Domain("localhost")) => Ok(()),
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            _ => Err(Error::InvalidInput(
                "plain http is only allowed to this machine; use https".into(),
            )),
        },
        _ => Err(bad()),
    }
}

/// Syncs one store with its relay. Blocking calls (`enrol`, `sync_now`) run
/// on the engine's runtime; `start` runs live sync there in the background.
pub struct SyncEngine {
    inner: Arc<Inner>,
    runtime: Option<Runtime>,
}

struct Inner {
    store: Arc<Store>,
    http: reqwest::Client,
    wake: Notify,
    live: Mutex<Option<JoinHandle<()>>>,
    /// Held while a round pushes a request, while it takes in what it
    /// pulled, and while the store is wiped; not while a long-poll waits
    /// (nor between a long outbox's requests, when the app hears how far
    /// it has come). Two rounds at
    /// once (pull-to-refresh during live sync) then never answer for the
    /// same outbox together, and nothing pulled is written after a wipe.
    exchange: tokio::sync::Mutex<()>,
    /// Change bytes the next push may carry, and the next pull page or
    /// repair: smaller after transfers lost on the way.
    pushes: Budget,
    pages: Budget,
    /// Held while the budgets are read and kept, so a later write never
    /// carries older figures.
    keeping: Mutex<()>,
    /// Refused redactions of tasks this device's user may no longer read
    /// (the relay answered 404 for every older generation): not asked
    /// about again until she may read the task again (her sight changes,
    /// or an older generation arrives: the task was handed to her) or
    /// [`ASK_AGAIN_MS`] has passed.
    unreadable: Mutex<HashMap<String, Unreadable>>,
}

/// What held when the relay last answered that no older generation of a
/// refused redaction's task is there for this device's user.
struct Unreadable {
    /// [`Store::sight_changes`].
    sight: u64,
    /// [`Store::keeps_older_generation`].
    kept: bool,
    /// The store's clock (ms): the time a phone sleeps counts.
    at: i64,
}

/// How long a refused redaction whose older generations the relay did not
/// show this device's user goes unasked, nothing else changed: a relay
/// restored from a backup may not have had them yet.
const ASK_AGAIN_MS: i64 = 60 * 60 * 1000;

/// Live sync runs until this is dropped or stopped.
pub struct SyncHandle {
    inner: Arc<Inner>,
    task: tokio::task::AbortHandle,
}

impl SyncHandle {
    /// Something was written locally: push it now instead of after the wait.
    pub fn sync_now(&self) {
        self.inner.wake.notify_one();
    }
    /// Stop this live sync (not a newer one the app started since).
    pub fn stop(&self) {
        self.task.abort();
        let mut live = lock(&self.inner.live);
        if live.as_ref().is_some_and(|t| t.id() == self.task.id()) {
            live.take();
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SyncEngine {
    pub fn new(store: Arc<Store>) -> Result<SyncEngine> {
        // reqwest is built without a default TLS provider; ours is ring. A
        // second install (another engine) is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Within the relay's 30 s for a connection's next request
            // (`--read-pause-secs`): a connection it may be closing is not
            // reused.
            .pool_idle_timeout(Duration::from_secs(20))
            // A redirect could send a push's patient data elsewhere, or
            // over plain http: the relay's address is the one enrolled.
            .redirect(reqwest::redirect::Policy::none())
            // Every request says which rules this app derives tasks by.
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::HeaderName::from_static(wire::RULES_HEADER),
                reqwest::header::HeaderValue::from_static(crate::derive::RULES),
            )]))
            .build()
            .map_err(|e| Error::Offline(format!("cannot start the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("handoff-sync")
            .enable_all()
            .build()
            .map_err(|e| Error::Offline(format!("cannot start the sync runtime: {e}")))?;
        let (pushes, pages) = (Budget::new(PUSH_BYTES), Budget::new(wire::PAGE_BYTES));
        // Where the last run of the app left them (a background sync may
        // be a new process each time on a link that drops long transfers).
        if let Some((push, page)) = store
            .transfer_budgets()?
            .as_deref()
            .and_then(Kept::read_pair)
        {
            let (now, wall) = (Instant::now(), SystemClock.now());
            pushes.resume(&push, now, wall);
            pages.resume(&page, now, wall);
        }
        Ok(SyncEngine {
            inner: Arc::new(Inner {
                store,
                http,
                wake: Notify::new(),
                live: Mutex::new(None),
                exchange: tokio::sync::Mutex::new(()),
                pushes,
                pages,
                keeping: Mutex::new(()),
                unreadable: Mutex::new(HashMap::new()),
            }),
            runtime: Some(runtime),
        })
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Inside a runtime (a listener, told on the engine's thread or
            // inside another sync call): tokio panics on a nested
            // `block_on`, and the round telling the listener would wait
            // for this one.
            return Err(Error::InvalidInput(
                "a sync call cannot be made on the sync thread (from a listener); \
                 hand it to another thread"
                    .into(),
            ));
        }
        match &self.runtime {
            Some(rt) => Ok(rt.block_on(f)),
            None => Err(Error::Offline("the sync engine is shut down".into())),
        }
    }

    /// Redeem a one-time invite: the relay binds this device's actor id and
    /// token to the invited user and role.
    pub fn enrol(&self, url: &str, invite: &str) -> Result<wire::EnrolReply> {
        check_relay_url(url)?;
        let store = &self.inner.store;
        if store.relay_settings()?.is_some() {
            return Err(Error::AlreadyEnrolled);
        }
        let url = url.trim_end_matches('/').to_owned();
        let invite = invite.trim();
        // Kept in the store before it is sent: a retry after a lost
        // reply, even from the next launch, sends the same one.
        let token = store.enrolment_token(&url, invite)?;
        let request = wire::EnrolRequest {
            invite: invite.to_owned(),
            actor: store.device_actor(),
            token: Some(token.clone()),
        };
        let inner = self.inner.clone();
        let endpoint = format!("{url}/v1/enrol");
        let reply: wire::EnrolReply = self.block_on(async move {
            let response = inner
                .http
                .post(endpoint)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&request)?)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map_err(offline)?;
            let bytes = check(response).await?;
            serde_json::from_slice::<wire::EnrolReply>(&bytes)
                .map_err(|_| Error::Offline("the relay sent an unreadable reply".into()))
        })??;
        // A relay from before phones chose their tokens sends its own.
        let token = reply.token.clone().unwrap_or(token);
        store.save_enrolment(&url, &token, &reply.team, &reply.user)?;
        Ok(reply)
    }

    /// One full round now: push everything, pull everything, no waiting.
    pub fn sync_now(&self) -> Result<SyncReport> {
        let inner = self.inner.clone();
        self.block_on(async move { inner.round_or_wipe(None, None, None).await })?
    }

    /// [`SyncEngine::sync_now`], telling `listener` of each page that
    /// changed tasks, and, far behind (a phone just enrolled into a clinic
    /// with a long history), how far it has come; then `Synced`.
    pub fn sync_now_telling(&self, listener: Arc<dyn SyncListener>) -> Result<SyncReport> {
        let inner = self.inner.clone();
        let told = listener.clone();
        let report =
            self.block_on(async move { inner.round_or_wipe(None, Some(&*told), None).await })??;
        listener.on_sync_event(SyncEvent::Synced(report.clone()));
        Ok(report)
    }

    /// Redeem an invite, then fetch the team and its tasks, telling
    /// `listener` how far that has come. A first catch-up can be long and
    /// is cut short by a lost signal: called again, this fetches the rest
    /// (the relay bound this device already; the invite is not needed
    /// again). `AlreadyEnrolled` once the phone has its team.
    pub fn enrol_and_catch_up(
        &self,
        url: &str,
        invite: &str,
        listener: Arc<dyn SyncListener>,
    ) -> Result<wire::EnrolReply> {
        let store = &self.inner.store;
        let bound_before = store
            .relay_settings()?
            .filter(|_| self.enrolled_role().is_none());
        let Some(settings) = bound_before else {
            let reply = self.enrol(url, invite)?;
            self.sync_now_telling(listener)?;
            return Ok(reply);
        };
        // Bound by an earlier call whose catch-up was cut short.
        self.sync_now_telling(listener)?;
        Ok(wire::EnrolReply {
            token: None,
            team: settings.team,
            user: store.user().ok_or(Error::NotEnrolled)?,
            role: self.enrolled_role().ok_or(Error::NotEnrolled)?,
        })
    }

    /// This device's user's role, once the team document naming them has
    /// arrived.
    fn enrolled_role(&self) -> Option<crate::model::Role> {
        let store = &self.inner.store;
        let user = store.user()?;
        store.team()?.member(&user).map(|m| m.role)
    }

    /// Live sync in the background, reporting to `listener`.
    pub fn start(&self, listener: Arc<dyn SyncListener>) -> Result<SyncHandle> {
        if self.inner.store.relay_settings()?.is_none() {
            return Err(Error::NotEnrolled);
        }
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Offline("the sync engine is shut down".into()))?;
        let inner = self.inner.clone();
        let task = rt.spawn(async move { inner.live_come_what_may(listener).await });
        let handle = SyncHandle {
            inner: self.inner.clone(),
            task: task.abort_handle(),
        };
        if let Some(old) = lock(&self.inner.live).replace(task) {
            old.abort();
        }
        Ok(handle)
    }
}

impl Drop for SyncEngine {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime may not block inside another runtime.
            rt.shutdown_background();
        }
    }
}

/// A task aborted when its handle is dropped: live sync's loop, which ends
/// with the task that watches it (`SyncHandle::stop` aborts that one).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a loop must have run for a panic to count as a first one again.
const PANICS_FORGOTTEN_AFTER: Duration = Duration::from_secs(600);

impl Inner {
    /// `live`, started again if it panics (an app's listener that threw,
    /// or a bug): without this the app would show live sync running while
    /// nothing synced until it restarted. The app hears `Offline` in
    /// between, and the restarts back off like failed rounds.
    async fn live_come_what_may(self: Arc<Self>, listener: Arc<dyn SyncListener>) {
        let mut panics: u32 = 0;
        loop {
            let started = Instant::now();
            let (inner, heard) = (self.clone(), listener.clone());
            let mut run = AbortOnDrop(tokio::spawn(async move { inner.live(heard).await }));
            match (&mut run.0).await {
                // Revoked, refused credentials, not enrolled: it told the
                // app and ended.
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    if started.elapsed() >= PANICS_FORGOTTEN_AFTER {
                        panics = 0;
                    }
                    panics = panics.saturating_add(1);
                    let delay = backoff(panics);
                    let offline = SyncEvent::Offline {
                        message: "sync stopped on an internal error and starts again".into(),
                        retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    };
                    // The listener may be what panicked: it may do so again.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        listener.on_sync_event(offline);
                    }));
                    // Not cut short by a write: a loop that panics at once
                    // would go round as fast as the user types.
                    tokio::time::sleep(delay).await;
                }
                // Aborted: only by `run` being dropped, which is this task
                // ending.
                Err(_) => return,
            }
        }
    }

    async fn live(&self, listener: Arc<dyn SyncListener>) {
        // The events that end the loop: a listener that panics on one
        // must not have it started again (`live_come_what_may`).
        let last = |event: SyncEvent| {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener.on_sync_event(event);
            }));
        };
        let mut failures: u32 = 0;
        // The first round, and the first after a failure, does not wait:
        // the app hears "synced" at once. Rounds after a success long-poll
        // for news; a local write cuts that wait short (and only the wait:
        // a push or a page under way when the user writes finishes, or a
        // user writing faster than a slow link carries a batch would never
        // see it through).
        let mut wait = None;
        loop {
            let result = self
                .round_or_wipe(wait, Some(&*listener), Some(&self.wake))
                .await;
            wait = None;
            match result {
                Ok(report) => {
                    failures = 0;
                    wait = Some(LIVE_WAIT);
                    listener.on_sync_event(SyncEvent::Synced(report));
                }
                Err(Error::DeviceRevoked) => {
                    last(SyncEvent::Revoked);
                    return;
                }
                // The relay settings are gone: nothing to sync with.
                Err(e @ Error::NotEnrolled) => {
                    last(SyncEvent::AuthFailed {
                        code: "not_enrolled".into(),
                        message: e.to_string(),
                    });
                    return;
                }
                // The relay refused the credentials, the member, or the app
                // version (426): retrying changes nothing.
                Err(e @ Error::Relay { .. }) if e.ends_sync() => {
                    if let Error::Relay { code, message, .. } = e {
                        last(SyncEvent::AuthFailed { code, message });
                    }
                    return;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    listener.on_sync_event(SyncEvent::Offline {
                        message: e.to_string(),
                        retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    });
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.wake.notified() => {}
                    }
                }
            }
        }
    }

    /// A round; on the relay's "revoked" answer, wipe the store first.
    async fn round_or_wipe(
        &self,
        wait: Option<Duration>,
        listener: Option<&dyn SyncListener>,
        wake: Option<&Notify>,
    ) -> Result<SyncReport> {
        match self.round(wait, listener, wake).await {
            Err(Error::DeviceRevoked) => {
                let _exchange = self.exchange.lock().await;
                if let Err(e) = self.store.wipe() {
                    // Its deleting transaction committed when the store says
                    // it was wiped; only the tidying after it failed (the
                    // WAL is emptied again when the store closes).
                    if !self.store.was_wiped()? {
                        return Err(e);
                    }
                }
                Err(Error::DeviceRevoked)
            }
            other => other,
        }
    }

    /// Push the outbox; a refused change was set aside, so its task and
    /// "needs attention" read differently: `listener` hears of it.
    async fn push_telling(
        &self,
        relay: &RelaySettings,
        report: &mut SyncReport,
        listener: Option<&dyn SyncListener>,
    ) -> Result<()> {
        let sent_before = report.pushed + report.refused;
        let mut of = 0;
        loop {
            let refused_before = report.refused;
            // Taken per request, as per pulled page: another round may
            // answer for the outbox in between, never at the same time.
            let more = {
                let _exchange = self.exchange.lock().await;
                self.still_enrolled(relay)?;
                self.push_request(relay, report).await?
            };
            let Some(listener) = listener else {
                if more {
                    continue;
                }
                return Ok(());
            };
            // Told now, not after the last request: a later one may fail.
            if report.refused > refused_before {
                listener.on_sync_event(SyncEvent::DataChanged {
                    tasks_updated: report.refused - refused_before,
                });
            }
            if !more {
                return Ok(());
            }
            // A long outbox (back after hours offline, on a weak signal)
            // shows how far it has come; never backwards, though another
            // round may send some of it.
            let sent = report.pushed + report.refused - sent_before;
            let left = self.store.outbox_waiting()?;
            if left > 0 {
                of = of.max(sent + left);
                listener.on_sync_event(SyncEvent::Sending {
                    sent: sent as u64,
                    of: of as u64,
                });
            }
        }
    }

    /// The relay this store syncs with; `DeviceRevoked` when another round
    /// (pull-to-refresh) was told of the revocation and wiped the store.
    fn enrolment(&self) -> Result<RelaySettings> {
        match self.store.relay_settings()? {
            Some(relay) => Ok(relay),
            None if self.store.was_wiped()? => Err(Error::DeviceRevoked),
            None => Err(Error::NotEnrolled),
        }
    }

    /// The store still syncs with the relay this round started with: not
    /// wiped (by another round) nor enrolled afresh meanwhile.
    fn still_enrolled(&self, relay: &RelaySettings) -> Result<()> {
        if self.enrolment()?.token == relay.token {
            Ok(())
        } else {
            Err(Error::NotEnrolled)
        }
    }

    /// Push, then pull until up to date, telling `listener` of each page
    /// that changed tasks and, while far behind, how far the pull has come.
    /// A first pull that waits for news (`wait`) ends early when `wake` is
    /// told of a local write: that is pushed, and the pull goes on without
    /// waiting.
    async fn round(
        &self,
        wait: Option<Duration>,
        listener: Option<&dyn SyncListener>,
        wake: Option<&Notify>,
    ) -> Result<SyncReport> {
        let relay = self.enrolment()?;
        let mut report = SyncReport::default();
        // An entry past the cursor the relay is to have still: stored by a
        // push an earlier pull did not get past (that round failed after
        // its push), or where a re-read of the feed began. Read before this
        // round pushes, whose own changes its pull gets past.
        let mut known = self.store.relay_known_entry()?;
        self.push_telling(&relay, &mut report, listener).await?;
        let mut cursor = self.store.relay_cursor()?;
        let mut wait = wait;
        // The documents pages brought changes to: what an earlier offer of
        // this device's lost changes lacked may be among them.
        let mut news: HashSet<String> = HashSet::new();
        // Of those, the ones with a change this device held already: what a
        // restored relay lost, offered again by the device that wrote it.
        let mut redelivered: HashSet<String> = HashSet::new();
        let mut started_over = false;
        // The re-read of the feed under way (its user's sight changed;
        // maybe begun in an earlier round, or by this device's own team
        // change), while this round has not lost the cursor to another:
        // once through, what the relay did not send is what this user may
        // no longer read. Its number goes with every cursor move, so that
        // pages of an older one do not count in a newer one.
        let mut reread = self.store.rereading()?;
        loop {
            let secs = wait.take().map_or(0, |w| w.as_secs());
            let mut url = format!(
                "{}/v1/pull?cursor={}&at={}&wait={secs}",
                relay.url, cursor.seq, cursor.tag
            );
            // The relay checks it has it still.
            if known.seq > cursor.seq {
                url += &format!("&pushed={}&pushed_at={}", known.seq, known.tag);
            }
            // Smaller pages after transfers lost on the way.
            if self.pages.reduced() {
                url += &format!("&page={}", self.pages.bytes());
            }
            // The relay holds the head back for the wait only. Nothing
            // long is on the way before the head: a failure then says
            // nothing of what the link carries.
            let request = within(
                Duration::from_secs(secs + 30),
                self.http.get(url).bearer_auth(&relay.token).send(),
                false,
            );
            let response = match wake.filter(|_| secs > 0) {
                Some(wake) => tokio::select! {
                    r = request => r,
                    () = wake.notified() => {
                        self.push_telling(&relay, &mut report, listener).await?;
                        continue;
                    }
                },
                None => request.await,
            }
            .map_err(|f| self.lost(&self.pages, f))?;
            let feed_length = response
                .headers()
                .get(wire::FEED_LENGTH_HEADER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body = check(response)
                .await
                .map_err(|f| self.lost(&self.pages, f))?;
            let reply: PullReply = decode(&body)?;
            let mut page_used = body.len();
            // What the listener is told of this page, once the exchange is
            // let go: the app's code never runs under the engine's lock (a
            // listener that re-reads views, or asks for a sync, would hold
            // up or wait on every other round).
            let mut tell = Vec::new();
            let exchange = self.exchange.lock().await;
            self.still_enrolled(&relay)?;
            let updated_before = report.tasks_updated;
            let mut team_changed = false;
            let mut read_again = false;
            // A failure after the page was applied still tells what it
            // changed, then ends the round.
            let mut outcome = Ok(());
            if reply.restarted && started_over {
                // Not twice in one round: the relay would start it over
                // page after page.
                return Err(Error::Offline(
                    "the relay started this device's pull over twice".into(),
                ));
            }
            if reply.restarted {
                started_over = true;
                // Restored from a backup: the pull starts over, and this
                // device offers again what the relay may have lost (what
                // it pushed included: the next pages do not name that, or
                // the relay would start them over again, page after page).
                // Its cursor named an entry of the lost feed: the store set
                // it back to the start, and ended a re-read under way.
                self.store.relay_restarted()?;
                known = FeedCursor::default();
                cursor = FeedCursor::default();
                reread = self.store.rereading()?;
            }
            let page_docs: BTreeSet<String> = reply.changes.iter().map(|c| c.doc.clone()).collect();
            news.extend(page_docs.iter().cloned());
            let mut page_redelivered = BTreeSet::new();
            if !reply.changes.is_empty() {
                let changes: Vec<(String, Vec<u8>)> = reply
                    .changes
                    .into_iter()
                    .map(|c| (c.doc, c.bytes))
                    .collect();
                let merged = self.store.apply_remote(&changes)?;
                report.pulled += merged.applied;
                report.tasks_updated += merged.tasks_updated;
                team_changed = merged.team_changed;
                read_again = merged.read_again;
                page_redelivered = merged.redelivered;
                for doc in merged.incomplete {
                    match self.repair(&relay, &doc).await {
                        Ok((repaired, used)) => {
                            report.pulled += repaired.applied;
                            report.tasks_updated += repaired.tasks_updated;
                            page_used = page_used.max(used);
                        }
                        // No longer readable by this device (reassigned,
                        // or replaced by a redaction): nothing to repair.
                        Err(Error::Relay { status: 404, .. }) => {}
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
            }
            if outcome.is_ok() {
                // Once its repairs are in too (by the most any of them
                // carried): a page that grew the budget before them would
                // have them fail where the last did.
                self.carried(&self.pages, page_used);
            }
            let tasks_updated = report.tasks_updated - updated_before;
            // The views also read the team (names, roles, policy).
            if tasks_updated > 0 || team_changed {
                tell.push(SyncEvent::DataChanged { tasks_updated });
            }
            let mut done = !reply.more && !read_again;
            if outcome.is_ok() {
                let next = FeedCursor {
                    seq: reply.cursor,
                    tag: reply.cursor_tag,
                };
                if read_again {
                    // This device may read more now (another role,
                    // promoted): the store set its cursor back to the
                    // feed's start.
                    // The end of the page that moved its sight is an
                    // entry it knows the relay had: a relay restored from
                    // a backup taken before it is found out on the way
                    // back up, and a re-read does not end by dropping what
                    // that relay lost.
                    known = self.store.note_known_entry(next)?;
                    cursor = FeedCursor::default();
                    reread = self.store.rereading()?;
                } else if next != cursor {
                    match self
                        .store
                        .move_relay_cursor_over(cursor, next, reread, &page_docs)
                    {
                        // What the page brought back counts only once it is
                        // taken: not a page another round took first, nor
                        // one read again for a change of sight.
                        Ok(true) => {
                            cursor = next;
                            if reread.is_none() {
                                redelivered.extend(std::mem::take(&mut page_redelivered));
                            }
                        }
                        // Another round moved it since this one read it
                        // (set it back to the feed's start after a
                        // promotion, say): that round goes on from there,
                        // and this one stops without undoing it.
                        Ok(false) => {
                            done = true;
                            reread = None;
                        }
                        Err(e) => outcome = Err(e),
                    }
                }
            }
            // The length is the relay's word: never shown below the cursor.
            if let Some(of) = feed_length.filter(|_| reply.more && outcome.is_ok()) {
                tell.push(SyncEvent::CatchingUp {
                    at: cursor.seq,
                    of: of.max(cursor.seq),
                });
            }
            // Read again from the feed's start after the user's sight
            // changed (another role, demoted, back from leave): a task the
            // relay sent nothing of is one they may no longer read, and
            // their copy is as it was when they could (a pooled task
            // claimed since shows as waiting, a demoted manager keeps
            // patient details). Not after a restore: the relay may just
            // have lost it (a restore ends the re-read in the store).
            if let Some(reread) = reread.filter(|_| done && outcome.is_ok() && !started_over) {
                match self.store.finish_reread(reread) {
                    Ok(0) => {}
                    Ok(dropped) => {
                        report.tasks_updated += dropped;
                        tell.push(SyncEvent::DataChanged {
                            tasks_updated: dropped,
                        });
                    }
                    Err(e) => outcome = Err(e),
                }
            }
            // Offer again what a restored relay lost; changes refused for
            // building on it are queued again.
            let mut queued_again = false;
            if done && outcome.is_ok() {
                let updated_before = report.tasks_updated;
                match self
                    .offer_again(&relay, &mut report, &news, &redelivered)
                    .await
                {
                    Ok(queued) => queued_again = queued,
                    Err(e) => outcome = Err(e),
                }
                if outcome.is_ok() {
                    match self.take_back_refused_redactions(&relay, &mut report).await {
                        Ok(taken) => queued_again |= taken,
                        Err(e) => outcome = Err(e),
                    }
                }
                // Held changes set aside change their tasks here.
                if report.tasks_updated > updated_before {
                    tell.push(SyncEvent::DataChanged {
                        tasks_updated: report.tasks_updated - updated_before,
                    });
                }
            }
            // What the pull itself wrote (this device's events carried
            // into a redacted task's newer document) goes out now, not at
            // the next round: "sync now" leaves nothing behind.
            if done && (report.pulled > 0 || queued_again) && outcome.is_ok() {
                let refused_before = report.refused;
                let updated_before = report.tasks_updated;
                outcome = self.push(&relay, &mut report).await;
                // Held there with no restore known: set aside now, not at
                // the next round, and what that wrote again goes too.
                if outcome.is_ok() && report.refused > refused_before {
                    outcome = match self.store.restore_known() {
                        Ok(true) => Ok(()),
                        Ok(false) => match self.release_held(None, true, &mut report) {
                            Ok(true) => self.push(&relay, &mut report).await,
                            Ok(false) => Ok(()),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                }
                // Refused (shown in needs attention) or set aside (the
                // task changed): either way the views have news.
                let changed = report.refused.saturating_sub(refused_before)
                    + report.tasks_updated.saturating_sub(updated_before);
                if changed > 0 {
                    tell.push(SyncEvent::DataChanged {
                        tasks_updated: changed,
                    });
                }
            }
            drop(exchange);
            if let Some(listener) = listener {
                for event in tell {
                    listener.on_sync_event(event);
                }
            }
            outcome?;
            if done {
                return Ok(report);
            }
        }
    }

    /// `failed`'s error, after counting a loss on the way against `budget`.
    fn lost(&self, budget: &Budget, failed: Failed) -> Error {
        if failed.on_the_way && budget.lost(Instant::now()) {
            self.keep_budgets();
        }
        failed.error
    }

    /// A transfer of `used` bytes went through.
    fn carried(&self, budget: &Budget, used: usize) {
        if budget.carried(used, Instant::now()) {
            self.keep_budgets();
        }
    }

    /// Kept for the app's next start (a background sync may be a new
    /// process each time). Only a hint: a failure to keep it costs the
    /// next start a few losses, and is not the sync's failure.
    fn keep_budgets(&self) {
        let _one_at_a_time = lock(&self.keeping);
        let (now, wall) = (Instant::now(), SystemClock.now());
        let text = Kept::write_pair(&self.pushes.kept(now, wall), &self.pages.kept(now, wall));
        let _ = self.store.save_transfer_budgets(&text);
    }

    /// Push the whole outbox.
    async fn push(&self, relay: &RelaySettings, report: &mut SyncReport) -> Result<()> {
        while self.push_request(relay, report).await? {}
        Ok(())
    }

    /// Push what one request carries of the outbox. Returns whether more
    /// is left to push.
    async fn push_request(&self, relay: &RelaySettings, report: &mut SyncReport) -> Result<bool> {
        loop {
            let mut batch = self.store.outbox(PUSH_BATCH)?;
            if batch.is_empty() {
                return Ok(false);
            }
            let mut more = batch.len() == PUSH_BATCH;
            // What fits one request; a change that fits none (the relay
            // takes at most MAX_CHANGE) is refused here, not sent forever.
            let budget = self.pushes.bytes();
            let mut bytes = 0;
            let fits = batch
                .iter()
                .position(|c| {
                    bytes += c.bytes.len();
                    bytes > budget
                })
                .unwrap_or(batch.len());
            // Over the budget a failure left, not over what the relay
            // takes: sent alone.
            let fits = if fits == 0 && batch[0].bytes.len() <= PUSH_BYTES {
                1
            } else {
                fits
            };
            if fits == 0 {
                let too_large = batch.swap_remove(0);
                self.store.outbox_refused(
                    &too_large,
                    wire::RefusalCode::TooLarge.as_str(),
                    "this change is larger than the relay takes",
                )?;
                report.refused += 1;
                continue;
            }
            if fits < batch.len() {
                batch.truncate(fits);
                more = true;
            }
            let request = PushRequest {
                changes: batch
                    .iter()
                    .map(|c| DocChange {
                        doc: c.doc_id.clone(),
                        bytes: c.bytes.clone(),
                    })
                    .collect(),
            };
            let reply = self.send_push(relay, &request).await?;
            let mut delivered = Vec::with_capacity(batch.len());
            let mut written_again = 0;
            for (change, verdict) in batch.iter().zip(reply.verdicts) {
                match verdict {
                    Verdict::Stored | Verdict::Duplicate => delivered.push(change),
                    Verdict::Refused { code, reason } => {
                        // `None`: set aside with an earlier refusal and
                        // written again; not this change's refusal to count.
                        if let Some(n) =
                            self.store.outbox_refused(change, code.as_str(), &reason)?
                        {
                            report.refused += 1;
                            written_again += n;
                        }
                    }
                }
            }
            self.store.outbox_delivered(delivered.iter().copied())?;
            report.pushed += delivered.len();
            // Work written again after a refusal goes out now, not at the
            // next round.
            return Ok(more || written_again > 0);
        }
    }

    /// Offer the relay again each marked document's own changes (it was
    /// restored from a backup, or refused a change for building on one it
    /// lacks), and while a restore is known every change of a redacted
    /// task's document: it stores what it lost, and answers the rest as
    /// duplicates (or refuses what it never noted of others').
    /// The team's document goes first: a task change may need what a lost
    /// team change allowed. A document some of whose changes the relay
    /// still refused (building on another device's lost change, until that
    /// device offers it again; or needing a lost team change) is offered
    /// again only in a round that pulled changes to it or to the team
    /// (`news`), for `MAX_OFFERS` tries. While a restore is known, a whole
    /// try is a round that brought back a change of it or of the team this
    /// device held already (`redelivered`: what was lost, offered again);
    /// afterwards, any news of it. Other rounds cost a quarter of one
    /// (`OFFERS_PER_TRY`): a task busy with other members' news while the
    /// device that can mend it is away must not use up its tries, and a
    /// document whose cause never comes back must not be offered for good.
    /// A change refused for what the relay's team document says
    /// is held while a restore is known (the team change it needs may come
    /// back from the device that holds it), and set aside otherwise: a
    /// refusal with no restore behind it is shown in the round that got it.
    /// Returns whether outbox rows were queued (or written) again.
    async fn offer_again(
        &self,
        relay: &RelaySettings,
        report: &mut SyncReport,
        news: &HashSet<String>,
        redelivered: &HashSet<String>,
    ) -> Result<bool> {
        let mut queued = false;
        let restore_known = self.store.restore_known()?;
        if !restore_known {
            queued |= self.release_held(None, true, report)?;
        }
        for (doc, attempts) in self.store.to_offer_again()? {
            if attempts > 0 && !news.contains(&doc) && !news.contains(TEAM_DOC) {
                continue;
            }
            let mut offer = self.store.changes_to_offer(&doc, restore_known)?;
            // One larger than the relay takes was refused when first pushed.
            offer.retain(|c| c.bytes.len() <= wire::MAX_CHANGE);
            // Whose, and what the relay acknowledged before (not what
            // waits in the outbox), for the report.
            let acknowledged: Vec<(bool, bool, [u8; 32])> =
                offer.iter().map(|c| (c.mine, c.sent, c.hash)).collect();
            let mut acknowledged = acknowledged.into_iter();
            // The relay's own word on each: what it took is never set aside.
            let mut taken = Vec::new();
            let batches = in_requests(
                &doc,
                offer.into_iter().map(|c| c.bytes).collect(),
                self.pushes.bytes(),
            );
            let mut complete = true;
            for batch in batches {
                let reply = self
                    .send_push(relay, &PushRequest { changes: batch })
                    .await?;
                for verdict in reply.verdicts {
                    let Some((mine, was_sent, hash)) = acknowledged.next() else {
                        break;
                    };
                    match verdict {
                        Verdict::Stored if was_sent => report.offered_again += 1,
                        // Another's, refused: not this phone's to mend (a
                        // change of its own built on it is refused too).
                        Verdict::Refused { .. } if !mine => {}
                        Verdict::Stored | Verdict::Duplicate if was_sent => {}
                        Verdict::Stored | Verdict::Duplicate => taken.push(hash),
                        // Refused now, though acknowledged once (or built
                        // on what was): what it needs is lost too, until
                        // another device, or the team's document, brings
                        // it back.
                        Verdict::Refused { .. } => complete = false,
                    }
                }
            }
            let offered = match complete {
                true => Offered::All,
                false => Offered::NotAll {
                    counts: match restore_known {
                        true => redelivered.contains(&doc) || redelivered.contains(TEAM_DOC),
                        false => news.contains(&doc),
                    },
                },
            };
            // Taken though the phone holds it refused or held (what it
            // needed came back): delivered, never set aside.
            queued |= self.store.taken_on_offer(&doc, &taken)?;
            queued |= self.store.offered_again(&doc, offered)?;
            // The tries ran out: what is held for it is set aside.
            if !complete && !self.store.to_offer_again()?.iter().any(|(d, _)| *d == doc) {
                queued |= self.release_held(Some(&doc), false, report)?;
            }
        }
        Ok(queued)
    }

    /// A redaction of this device's the relay refused for good (its user
    /// may no longer remove patient details, say): the task goes back to
    /// the older generation the relay has, fetched whole (a repair from
    /// what the phone holds of it, in pages on a weak link; nothing
    /// switches before the last) from the one the redaction replaced down
    /// (this device may have redacted it again before the relay heard),
    /// what this device wrote since carried back to it
    /// ([`Store::take_back_redaction`]). Older generations kept while a
    /// redaction was withdrawn that no longer is are retired first
    /// ([`Store::retire_kept_generations`]). Returns whether a task went
    /// back (there is something to push). A task whose fetch fails is
    /// tried again next round, and fails nothing else: only an error that
    /// ends sync (revoked, not a member) ends the round. One its user may
    /// no longer read (404 for every generation) stays as it is, and is
    /// not asked about again until she may read it again
    /// ([`Inner::unreadable`]).
    async fn take_back_refused_redactions(
        &self,
        relay: &RelaySettings,
        report: &mut SyncReport,
    ) -> Result<bool> {
        self.store.retire_kept_generations()?;
        let mut taken = false;
        let sight = self.store.sight_changes()?;
        let refused = self.store.refused_redactions()?;
        lock(&self.unreadable).retain(|redacted, _| refused.contains(redacted));
        for redacted in refused {
            let kept = self.store.keeps_older_generation(&redacted)?;
            let now = self.store.now();
            let asked = lock(&self.unreadable).get(&redacted).is_some_and(|u| {
                u.sight == sight && u.kept == kept && (u.at..u.at + ASK_AGAIN_MS).contains(&now)
            });
            if asked {
                continue;
            }
            let (task, generation) = crate::task_doc::split_doc_id(&redacted);
            let mut unreadable = true;
            for older in (0..generation).rev() {
                let older = crate::task_doc::doc_id_of(task, older);
                let fetched = match self.repair(relay, &older).await {
                    Ok((merged, _)) => {
                        report.pulled += merged.applied;
                        true
                    }
                    Err(Error::Relay { status: 404, .. }) => continue,
                    Err(e) if e.ends_sync() => return Err(e),
                    Err(_) => false,
                };
                unreadable = false;
                if fetched && self.store.take_back_redaction(&older)? {
                    report.tasks_updated += 1;
                    taken = true;
                }
                break;
            }
            let mut known = lock(&self.unreadable);
            if unreadable {
                known.insert(
                    redacted,
                    Unreadable {
                        sight,
                        kept,
                        at: now,
                    },
                );
            } else {
                known.remove(&redacted);
            }
        }
        Ok(taken)
    }

    /// Set aside held changes (of `doc`, or all); the tasks they change are
    /// counted as updated. Changes refused for building on them and
    /// written again are no longer refused: taken off this round's count
    /// when `this_round` (held by its pushes with no restore known).
    /// Returns whether changes were written again.
    fn release_held(
        &self,
        doc: Option<&str>,
        this_round: bool,
        report: &mut SyncReport,
    ) -> Result<bool> {
        let released = self.store.release_held(doc)?;
        report.tasks_updated += released.set_aside;
        if this_round {
            report.refused = report.refused.saturating_sub(released.taken_back);
        }
        Ok(released.written_again > 0)
    }

    /// Push changes: one verdict each, and where the newest stored stands
    /// in the feed, kept for the next pull to check.
    async fn send_push(&self, relay: &RelaySettings, request: &PushRequest) -> Result<PushReply> {
        let reply: PushReply = self
            .post(relay, "/v1/push", request)
            .await
            .map_err(|f| self.lost(&self.pushes, f))?;
        self.carried(
            &self.pushes,
            request.changes.iter().map(|c| c.bytes.len()).sum(),
        );
        if reply.verdicts.len() != request.changes.len() {
            return Err(Error::Offline(
                "the relay answered a different number of changes".into(),
            ));
        }
        if reply.stored_at > 0 {
            self.store.note_known_entry(FeedCursor {
                seq: reply.stored_at,
                tag: reply.stored_tag,
            })?;
        }
        Ok(reply)
    }

    /// POST a binary body to the relay and decode its binary reply.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        relay: &RelaySettings,
        path: &str,
        body: &impl serde::Serialize,
    ) -> std::result::Result<T, Failed> {
        let body = wire::encode(body);
        // However slow the signal, a body that keeps going up at the
        // floor's pace is not given up.
        let going_up_bytes = body.len();
        let going_up = Duration::from_secs(going_up_bytes as u64 / LINK_FLOOR);
        let request = self
            .http
            .post(format!("{}{path}", relay.url))
            .bearer_auth(&relay.token)
            .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
            .body(body)
            .send();
        // A body too short for a smaller one to help is never lost on the
        // way (a repair's request, a push of a few changes).
        let uploading = going_up_bytes >= budget::MIN_TRANSFER_BYTES;
        let response = within(going_up + REPLY_WAIT, request, uploading).await?;
        let reply = check(response).await.map_err(|mut failed| {
            // The relay gave up on a body that stopped going up.
            if uploading && matches!(failed.error, Error::Relay { status: 408, .. }) {
                failed.on_the_way = true;
            }
            failed
        })?;
        decode(&reply).map_err(Failed::before)
    }

    /// Fetch what a document is missing: everything the relay has that is
    /// not behind our heads. After pulls lost on the way, in pages of the
    /// size pulls ask for, each taken in before the next is asked for
    /// (from the new heads) until one comes back empty. A page with nothing
    /// new (the relay knows none of our heads, which are our own unsent
    /// changes, so it pages from the document's start) is followed by one
    /// request for everything, as without pages.
    ///
    /// Also returns the most change bytes one reply carried, for the page
    /// budget to grow by once the page that needed the repair is in.
    async fn repair(
        &self,
        relay: &RelaySettings,
        doc: &str,
    ) -> Result<(crate::MergeReport, usize)> {
        let mut report = crate::MergeReport::default();
        let mut most_used = 0;
        let mut more_paged = true;
        loop {
            let request = wire::RepairRequest {
                doc: doc.to_owned(),
                have: self.store.doc_heads(doc)?,
            };
            let paged = more_paged && self.pages.reduced();
            let path = if paged {
                format!("/v1/repair?page={}", self.pages.bytes())
            } else {
                "/v1/repair".to_owned()
            };
            let reply: wire::RepairReply = self
                .post(relay, &path, &request)
                .await
                .map_err(|f| self.lost(&self.pages, f))?;
            most_used = most_used.max(reply.changes.iter().map(|c| c.len()).sum());
            let last = !paged || reply.changes.is_empty();
            let changes: Vec<(String, Vec<u8>)> = reply
                .changes
                .into_iter()
                .map(|b| (doc.to_owned(), b.into_vec()))
                .collect();
            let merged = self.store.apply_remote(&changes)?;
            more_paged = merged.applied > 0;
            report.applied += merged.applied;
            // One document: its task counts once however many pages.
            report.tasks_updated = report.tasks_updated.max(merged.tasks_updated);
            if last {
                return Ok((report, most_used));
            }
        }
    }
}

/// A document's changes, in order, in push requests of at most `budget`
/// change bytes (or one change).
fn in_requests(doc: &str, changes: Vec<Vec<u8>>, budget: usize) -> Vec<Vec<DocChange>> {
    let mut requests: Vec<Vec<DocChange>> = Vec::new();
    let mut bytes = 0;
    for change in changes {
        let full = requests
            .last()
            .is_none_or(|r| r.len() == PUSH_BATCH || bytes + change.len() > budget);
        if full {
            requests.push(Vec::new());
            bytes = 0;
        }
        bytes += change.len();
        if let Some(request) = requests.last_mut() {
            request.push(DocChange {
                doc: doc.to_owned(),
                bytes: change,
            });
        }
    }
    requests
}

fn offline(e: reqwest::Error) -> Error {
    // Not the URL: it may carry nothing secret, but keep errors short.
    Error::Offline(
        if e.is_timeout() {
            "the relay did not answer in time"
        } else if e.is_connect() {
            "no connection to the relay"
        } else {
            "the connection to the relay broke"
        }
        .into(),
    )
}

/// A request that failed, and whether on the way: it broke or stalled
/// while bytes moved, which a smaller transfer may get through. Not one
/// that never reached the relay, nor the relay's own answer.
struct Failed {
    error: Error,
    on_the_way: bool,
}

impl Failed {
    fn before(error: Error) -> Failed {
        Failed {
            error,
            on_the_way: false,
        }
    }
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        f.error
    }
}

/// A request's reply head within `limit`. `uploading`: the request carries
/// a body that may take long to go up, so a failure before the head
/// (other than not connecting) is a loss on the way.
async fn within(
    limit: Duration,
    request: impl Future<Output = reqwest::Result<reqwest::Response>>,
    uploading: bool,
) -> std::result::Result<reqwest::Response, Failed> {
    match tokio::time::timeout(limit, request).await {
        Err(_) => Err(Failed {
            error: Error::Offline("the relay did not answer in time".into()),
            on_the_way: uploading,
        }),
        Ok(Err(e)) => Err(Failed {
            on_the_way: uploading && !e.is_connect(),
            error: offline(e),
        }),
        Ok(Ok(response)) => Ok(response),
    }
}

/// The body of a 2xx reply, or the relay's error. A body is read for as
/// long as it keeps coming at [`LINK_FLOOR`] on average: one that stops
/// for [`STALL`], or trickles slower than that, is given up.
async fn check(mut response: reqwest::Response) -> std::result::Result<Vec<u8>, Failed> {
    let status = response.status();
    let mut bytes = Vec::new();
    let mut deadline = tokio::time::Instant::now() + STALL;
    loop {
        let until = deadline.min(tokio::time::Instant::now() + STALL);
        let chunk = match tokio::time::timeout_at(until, response.chunk()).await {
            Err(_) => {
                return Err(Failed {
                    error: Error::Offline("the relay's reply stopped arriving".into()),
                    on_the_way: true,
                })
            }
            Ok(Err(e)) => {
                return Err(Failed {
                    error: offline(e),
                    on_the_way: true,
                })
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        if bytes.len() + chunk.len() > MAX_REPLY {
            return Err(Failed::before(Error::Offline(
                "the relay sent an oversized reply".into(),
            )));
        }
        deadline += Duration::from_millis(chunk.len() as u64 * 1000 / LINK_FLOOR);
        bytes.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(bytes);
    }
    if status.is_server_error() {
        return Err(Failed::before(Error::Offline(format!(
            "the relay had a problem ({status})"
        ))));
    }
    let body: wire::ErrorBody =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| wire::ErrorBody {
            code: "unknown".into(),
            message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        });
    if status.as_u16() == 401 && body.code == codes::DEVICE_REVOKED {
        return Err(Failed::before(Error::DeviceRevoked));
    }
    Err(Failed::before(Error::Relay {
        status: status.as_u16(),
        code: body.code,
        message: body.message,
    }))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    wire::decode(bytes).map_err(|_| Error::Offline("the relay sent an unreadable reply".into()))
}

fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.min(8));
    let cap = exp.min(BACKOFF_MAX);
    // Full jitter over the upper half, so phones that lost signal together
    // do not all come back in the same instant.
    let ms = u64::try_from(cap.as_millis()).unwrap_or(60_000);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_relays_own_final_answers_end_sync() {
        let relay = |status: u16, code: &str| Error::Relay {
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(relay(401, codes::INVALID_TOKEN).ends_sync());
        assert!(relay(403, codes::NOT_A_MEMBER).ends_sync());
        assert!(relay(426, codes::UPGRADE_REQUIRED).ends_sync());
        assert!(Error::DeviceRevoked.ends_sync());
        // A gateway's 401 or 403 page carries none of the relay's codes.
        assert!(!relay(401, "").ends_sync());
        assert!(!relay(403, "forbidden").ends_sync());
        assert!(!relay(400, codes::INVALID_TOKEN).ends_sync());
        assert!(!relay(503, codes::UPGRADE_REQUIRED).ends_sync());
        assert!(!Error::Offline("no signal".into()).ends_sync());
    }

    #[test]
    fn plain_http_is_only_for_this_machine() {
        assert!(check_relay_url("https://relay.example.org").is_ok());
        assert!(check_relay_url("http://127.0.0.1:7878").is_ok());
        assert!(check_relay_url("http://localhost:7878").is_ok());
        assert!(check_relay_url("http://[::1]:7878").is_ok());
        assert!(check_relay_url("http://relay.example.org").is_err());
        assert!(check_relay_url("ftp://relay.example.org").is_err());
        assert!(check_relay_url("not a url").is_err());
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        assert!(backoff(1) <= Duration::from_secs(1));
        assert!(backoff(1) >= Duration::from_millis(500));
        for n in 0..100 {
            assert!(backoff(n) <= BACKOFF_MAX);
        }
        assert!(backoff(30) >= BACKOFF_MAX / 2);
    }
}
