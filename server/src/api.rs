//! The HTTP surface under `/v1`, plus `/health` and `/metrics`. Handlers
//! only translate: bodies in, [`Relay`] calls, bodies out. Every error is a
//! 4xx/5xx with a JSON body, and a rejected request stores nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use handoff_core::sync::wire::{
    self, EnrolReply, EnrolRequest, PullReply, PushReply, PushRequest, RepairReply, RepairRequest,
    MAX_BODY, MAX_WAIT_SECS,
};
use handoff_core::Role;
use tokio::sync::watch;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::relay::{Caller, LoadedTeam, PullPage, Relay};
use crate::team_state::{Incoming, PageEntry};

#[derive(Clone)]
pub struct App {
    pub relay: Arc<Relay>,
    pub metrics: Arc<Metrics>,
    /// Turns true when the server is shutting down: long-polls answer at once.
    pub shutdown: watch::Receiver<bool>,
    pub enrol_guard: Arc<EnrolGuard>,
    /// How long a request body may pause between its pieces (see
    /// `read_body`).
    pub read_pause: Duration,
}

/// Failed enrolments one address may make per minute before it is refused
/// (429) without the invite even being looked at: guessing invite codes
/// stays impractical, and an attacker cannot burn through them.
pub const ENROL_FAILURES_PER_MINUTE: u32 = 20;

/// Failed enrolment attempts per client, in one-minute windows. A client
/// is its IPv4 address, or its IPv6 network (/64: one host holds a whole
/// one, and could otherwise try from as many addresses as it likes).
/// Behind a proxy every phone shares the proxy's address.
pub struct EnrolGuard {
    failures: Mutex<Failures>,
    /// Clients kept track of at most: past that (failures from more
    /// clients at once than any clinic has phones), a client not among
    /// them is refused until some age out.
    most: usize,
}

struct Failures {
    by_client: HashMap<IpAddr, (Instant, u32)>,
    /// When those out of the window were last let go: at most once a
    /// second, so a flood does not scan the map at every attempt.
    swept: Option<Instant>,
}

impl Default for EnrolGuard {
    fn default() -> EnrolGuard {
        EnrolGuard::keeping(100_000)
    }
}

impl EnrolGuard {
    fn keeping(most: usize) -> EnrolGuard {
        EnrolGuard {
            failures: Mutex::new(Failures {
                by_client: HashMap::new(),
                swept: None,
            }),
            most,
        }
    }

    fn window() -> Duration {
        Duration::from_secs(60)
    }

    fn client(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(std::net::Ipv6Addr::from(
                    u128::from(v6) & !((1u128 << 64) - 1),
                )),
            },
            v4 => v4,
        }
    }

    /// The failures, those out of the window let go if the map is full.
    fn failures(&self) -> MutexGuard<'_, Failures> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let due = f
            .swept
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if f.by_client.len() >= self.most && due {
            f.by_client
                .retain(|_, (since, _)| since.elapsed() < Self::window());
            f.swept = Some(Instant::now());
        }
        f
    }

    fn blocked(&self, ip: IpAddr) -> bool {
        let f = self.failures();
        match f.by_client.get(&Self::client(ip)) {
            Some((since, n)) => since.elapsed() < Self::window() && *n >= ENROL_FAILURES_PER_MINUTE,
            None => f.by_client.len() >= self.most,
        }
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures();
        let client = Self::client(ip);
        if f.by_client.len() >= self.most && !f.by_client.contains_key(&client) {
            return;
        }
        let entry = f.by_client.entry(client).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Self::window() {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/enrol", post(enrol))
        .route("/v1/push", post(push))
        .route("/v1/pull", get(pull))
        .route("/v1/repair", post(repair))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// A phone that derives tasks by other rules than the relay would read
/// the same changes differently from everyone else: 426 until it is
/// updated. Requests that name no rules (tools, the load generator) pass.
fn same_rules(request: &Request) -> std::result::Result<(), Error> {
    let theirs = request.headers().get(wire::RULES_HEADER).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(16)
            .collect::<String>()
    });
    match theirs {
        Some(v) if v != relay_rules() => Err(Error::UpgradeRequired(v, relay_rules())),
        _ => Ok(()),
    }
}

/// The rules this relay derives by. Debug builds let a test pretend to be
/// a relay of other rules.
fn relay_rules() -> &'static str {
    #[cfg(debug_assertions)]
    {
        static TEST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if let Some(r) = TEST
            .get_or_init(|| std::env::var("HANDOFF_TEST_RULES").ok())
            .as_deref()
        {
            return r;
        }
    }
    handoff_core::derive::RULES
}

/// Count, time and log every request; no bodies, no query strings. The
/// one middleware (each is a boxed future more for every waiting poll):
/// it also turns away phones of other rules ([`same_rules`]).
async fn observe(State(app): State<App>, request: Request, next: Next) -> Response {
    let mut observed = Observed {
        app: &app,
        route: request.extensions().get::<MatchedPath>().cloned(),
        started: Instant::now(),
        answered: false,
    };
    let method = request.method().clone();
    let response = match same_rules(&request) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    let status = response.status().as_u16();
    let elapsed = observed.record(status);
    let route = observed.route();
    tracing::debug!(%method, %route, status, ms = elapsed.as_secs_f64() * 1000.0, "request");
    response
}

/// A request being answered: counted and timed when it is, or, if hyper
/// drops it first (its connection failed, or shutdown ran out of time), as
/// status 499. A client that goes away once its request is read is not
/// noticed until the answer (`serve` allows half-closed connections).
struct Observed<'a> {
    app: &'a App,
    route: Option<MatchedPath>,
    started: Instant,
    answered: bool,
}

impl Observed<'_> {
    fn route(&self) -> &str {
        self.route.as_ref().map_or("other", |p| p.as_str())
    }

    fn record(&mut self, status: u16) -> Duration {
        self.answered = true;
        let elapsed = self.started.elapsed();
        self.app.metrics.record(self.route(), status, elapsed);
        elapsed
    }
}

impl Drop for Observed<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.record(499);
        }
    }
}

async fn not_found() -> Error {
    Error::NotFound("no such endpoint")
}

async fn method_not_allowed() -> Response {
    let body = wire::ErrorBody {
        code: "method_not_allowed".into(),
        message: "this endpoint does not take that method".into(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    let relay = app.relay.clone();
    let length = match blocking(move || relay.feed_length()).await {
        Ok(length) => length,
        Err(e) => return e.into_response(),
    };
    let db = &app.relay.db;
    let feed = (
        length,
        db.feed_commits.load(Ordering::Relaxed),
        db.feed_changes.load(Ordering::Relaxed),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(feed, db.wal_bytes()),
    )
        .into_response()
}

/// Run blocking work (SQLite, derivation) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Storage("a worker failed".into()))?
}

/// The most an enrolment body may be: an invite code and an actor id, read
/// before anyone is authenticated.
const MAX_ENROL_BODY: usize = 4 * 1024;

/// Most changes a push may carry to be admitted on an async worker; more
/// are admitted on a blocking thread (admission takes tens of µs a change).
const INLINE_ADMISSION: usize = 16;

/// The longest a push or repair body may take to arrive: a phone pushes at
/// most 4 MB, ~7 minutes over a poor 2G uplink (10 KB/s). An enrolment's
/// (4 KB, from anyone) gets one pause in all.
const BODY_TIME: Duration = Duration::from_secs(600);

/// Read a request body of at most `limit` bytes. It may pause at most
/// `pause` between its pieces, and take `total` in all (408
/// `body_timeout`): a client that sends a byte now and then holds its
/// connection, and what it sent, that long at most, not as long as it
/// likes.
async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    pause: Duration,
    total: Duration,
) -> Result<Bytes> {
    use axum::body::HttpBody;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // Far too large: answer before reading. Less far: refused once the
    // limit is passed (the client may still be sending; the connection is
    // then closed after the answer).
    if declared.is_some_and(|n| n > 4 * limit) {
        return Err(Error::TooLarge(limit));
    }
    let deadline = tokio::time::Instant::now() + total;
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut read = 0;
    loop {
        let pause_ends = (tokio::time::Instant::now() + pause).min(deadline);
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let piece = match tokio::time::timeout_at(pause_ends, frame).await {
            Err(_) => return Err(Error::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(Error::BadRequest(
                    "bad_body",
                    "the body was cut short".into(),
                ))
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(piece) => piece,
                // Trailers: nothing of the body.
                Err(_) => continue,
            },
        };
        read += piece.len();
        if read > limit {
            return Err(Error::TooLarge(limit));
        }
        pieces.push(piece);
    }
    Ok(match pieces.len() {
        1 => pieces.remove(0),
        _ => Bytes::from(pieces.concat()),
    })
}

async fn caller(app: &App, headers: &HeaderMap) -> Result<Caller> {
    // One indexed SQLite read: quicker inline than handed to a thread.
    app.relay.authenticate(bearer(headers)?)
}

fn bearer(headers: &HeaderMap) -> Result<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or(Error::InvalidToken)
}

/// The caller's team, loading it off the async workers on first use.
///
/// A member the team deactivated reads and writes nothing more (the phone
/// stops syncing; revoking the device also wipes it): 403 `not_a_member`.
/// Push and pull check that where they lock the team's state anyway (the
/// admission of the push, each look at the feed), not here: a second lock
/// of the state on every request made the workers wait for the feed
/// writer and sleep (~1 in 10 of the relay's context switches at one
/// edit per push).
async fn loaded_team(app: &App, caller: &Caller) -> Result<Arc<LoadedTeam>> {
    match app.relay.loaded(&caller.team_id) {
        Some(team) => Ok(team),
        None => {
            let (relay, team_id) = (app.relay.clone(), caller.team_id.clone());
            blocking(move || relay.team(&team_id)).await
        }
    }
}

/// [`loaded_team`], for a caller who is still an active member.
async fn team_of(app: &App, caller: &Caller) -> Result<Arc<LoadedTeam>> {
    let team = loaded_team(app, caller).await?;
    if !team.state().is_active_member(&caller.user_id) {
        return Err(Error::NotAMember);
    }
    Ok(team)
}

fn binary<T: serde::Serialize>(value: &T) -> Response {
    (
        [(header::CONTENT_TYPE, wire::CONTENT_TYPE)],
        wire::encode(value),
    )
        .into_response()
}

fn binary_body(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, wire::CONTENT_TYPE)], body).into_response()
}

/// A pull reply; with more pages to come, the feed's length beside it.
fn pull_reply(body: Bytes, feed_length: Option<u64>) -> Response {
    let mut response = binary_body(body);
    if let Some(n) = feed_length {
        response
            .headers_mut()
            .insert(wire::FEED_LENGTH_HEADER, header::HeaderValue::from(n));
    }
    response
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    wire::decode(bytes)
        .map_err(|_| Error::BadRequest("bad_body", "the body does not decode".into()))
}

async fn enrol(
    State(app): State<App>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let ip = client.ip();
    if app.enrol_guard.blocked(ip) {
        return Err(Error::TooManyAttempts);
    }
    let attempt = async {
        let bytes = read_body(
            &headers,
            body,
            MAX_ENROL_BODY,
            app.read_pause,
            app.read_pause,
        )
        .await?;
        let request: EnrolRequest = serde_json::from_slice(&bytes).map_err(|_| {
            Error::BadRequest(
                "bad_body",
                "expected {\"invite\", \"actor\", \"token\"}".into(),
            )
        })?;
        let relay = app.relay.clone();
        blocking(move || relay.enrol(&request.invite, &request.actor, request.token.as_deref()))
            .await
    };
    let (token, invite) = match attempt.await {
        Ok(enrolled) => enrolled,
        Err(e) => {
            if !matches!(e, Error::Storage(_)) {
                app.enrol_guard.failed(ip);
            }
            return Err(e);
        }
    };
    let role = Role::parse(&invite.role).ok_or(Error::Storage("invite has a bad role".into()))?;
    tracing::info!(team = %invite.team_id, "device enrolled");
    Ok(axum::Json(EnrolReply {
        token,
        team: invite.team_id,
        user: invite.user_id,
        role,
    })
    .into_response())
}

async fn push(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Response> {
    caller(&app, &headers).await?;
    let bytes = read_body(&headers, body, MAX_BODY, app.read_pause, BODY_TIME).await?;
    // Once more with the body in (a remembered token: a map lookup): a
    // device revoked while it sent a slow upload stores nothing of it.
    let caller = caller(&app, &headers).await?;
    let request: PushRequest = decode(&bytes)?;
    // Membership is checked at admission.
    let team = loaded_team(&app, &caller).await?;
    let changes: Vec<Incoming> = request.changes.into_iter().map(Incoming::decode).collect();
    // Admitted here, on the worker the push came in on (a hop to another
    // thread cost more than admitting one change), unless there are many.
    let receipt = if changes.len() <= INLINE_ADMISSION {
        team.push(caller, changes)
    } else {
        let team = team.clone();
        blocking(move || Ok(team.push(caller, changes))).await?
    };
    let pushed = receipt.await.map_err(|_| {
        team.writer_stopped();
        Error::Storage("the feed writer stopped".into())
    })??;
    let (stored_at, stored_tag) = pushed.newest.unwrap_or((0, 0));
    Ok(binary(&PushReply {
        verdicts: pushed.verdicts,
        stored_at,
        stored_tag,
    }))
}

async fn repair(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response> {
    caller(&app, &headers).await?;
    let page = repair_query(query.as_deref())?;
    let bytes = read_body(&headers, body, MAX_BODY, app.read_pause, BODY_TIME).await?;
    // As for a push: a device revoked while it sent reads nothing.
    let caller = caller(&app, &headers).await?;
    team_of(&app, &caller).await?;
    let request: RepairRequest = decode(&bytes)?;
    let relay = app.relay.clone();
    let changes =
        blocking(move || relay.repair(&caller, &request.doc, &request.have, page)).await?;
    Ok(binary(&RepairReply {
        changes: changes
            .into_iter()
            .map(serde_bytes::ByteBuf::from)
            .collect(),
    }))
}

/// A repair's query: how many bytes of changes its reply may carry (a
/// phone on a link that drops long transfers asks for less, and asks again
/// until a reply is empty). Without it, every change missing.
fn repair_query(query: Option<&str>) -> Result<usize> {
    let mut page = usize::MAX;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("page", v)) => {
                page = v
                    .parse::<usize>()
                    .map_err(|_| {
                        Error::BadRequest("bad_query", "page must be a whole number".into())
                    })?
                    .max(wire::MIN_PAGE_BYTES);
            }
            _ => {
                return Err(Error::BadRequest(
                    "bad_query",
                    "repair takes only page".into(),
                ))
            }
        }
    }
    Ok(page)
}

/// A pull's query.
struct PullQuery {
    /// The cursor, and the tag the relay gave with it.
    cursor: u64,
    at: u32,
    /// An entry past the cursor the device knows the feed had, with its
    /// tag: the newest a push of its stored (the pull after that push did
    /// not finish), or where its cursor stood before a re-read of the feed
    /// sent it back to the start.
    pushed: u64,
    pushed_at: u32,
    wait: Duration,
    /// Change bytes the page may carry (a phone on a link that drops long
    /// transfers asks for less).
    page: usize,
}

fn pull_query(query: Option<&str>) -> Result<PullQuery> {
    let (mut cursor, mut at, mut pushed, mut pushed_at, mut wait) = (0, 0, 0, 0, 0);
    let mut page = wire::PAGE_BYTES;
    let tag = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| Error::BadRequest("bad_query", "a tag is a 32-bit number".into()))
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            v.parse::<u64>()
                .map_err(|_| Error::BadRequest("bad_query", format!("{k} must be a whole number")))
        };
        match k {
            "cursor" => cursor = number()?,
            "at" => at = tag(v)?,
            "pushed" => pushed = number()?,
            "pushed_at" => pushed_at = tag(v)?,
            "wait" => wait = number()?.min(MAX_WAIT_SECS),
            "page" => {
                page = usize::try_from(number()?)
                    .unwrap_or(usize::MAX)
                    .clamp(wire::MIN_PAGE_BYTES, wire::PAGE_BYTES)
            }
            _ => {
                return Err(Error::BadRequest(
                    "bad_query",
                    "pull takes cursor, at, pushed, pushed_at, wait and page".into(),
                ))
            }
        }
    }
    Ok(PullQuery {
        cursor,
        at,
        pushed,
        pushed_at,
        wait: Duration::from_secs(wait),
        page,
    })
}

async fn pull(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let caller = caller(&app, &headers).await?;
    let query = pull_query(query.as_deref())?;
    let mut cursor = query.cursor;
    let began = tokio::time::Instant::now();
    let mut deadline = began + query.wait;
    let mut team = loaded_team(&app, &caller).await?;
    let mut shutdown = app.shutdown.clone();
    let mut waited = false;
    let mut restarted = false;
    let mut poll = None;
    loop {
        // Before the state is read: a failure after it wakes the wait.
        let mut replaced = team.replaced();
        let retirements = team.retirements();
        let (seqs, page, next, cursor_tag, more, feed_length, news) = {
            let mut st = team.state();
            // Also after a wait: deactivated meanwhile, she reads nothing.
            if !st.is_active_member(&caller.user_id) {
                return Err(Error::NotAMember);
            }
            let pushed_here = query.pushed <= cursor || st.follows(query.pushed, query.pushed_at);
            if !waited && (!st.follows(cursor, query.at) || !pushed_here) {
                // Not the feed the device followed, or without what it
                // pushed (the relay was restored from a backup): start
                // over, and say so; duplicates are harmless.
                cursor = 0;
                restarted = true;
            }
            // The page is taken with what it may hold, under one lock (a
            // redaction's clean-up may forget entries in between).
            let (seqs, next, more) = st.visible_since(cursor, &caller, query.page);
            let page = st.page(&seqs);
            let tag = st.tag_at(next);
            let news = match query.wait.is_zero() {
                true => None,
                false => Some(st.wait(&caller, &mut poll)),
            };
            (seqs, page, next, tag, more, st.head(), news)
        };
        if let Some((_, true)) = news {
            // The device polls again (it left this poll to push, say): this
            // one is answered soon, but not at once, so that two of its
            // polls at a time (two apps on one store) do not take turns
            // cutting each other short as fast as they can ask.
            deadline = deadline.min(began + OVERLAP);
        }
        let now = tokio::time::Instant::now();
        // A device started over hears it now: what it had sent may be lost.
        let waiting = news.filter(|_| {
            seqs.is_empty() && !more && !restarted && now < deadline && !*shutdown.borrow()
        });
        let Some((mut news, _)) = waiting else {
            if waited && !seqs.is_empty() && app.relay.revoked_since(&team, &caller, next)? {
                // Revoked while its poll waited (a stolen phone): the 401,
                // not the news.
                return Err(Error::DeviceRevoked);
            }
            let reply = PullPage {
                seqs,
                cursor: next,
                restarted,
                more,
                retirements,
            };
            // A phone far behind hears how far it has come.
            let catching_up = more.then_some(feed_length);
            // One change woke many polls of the same page: encoded once.
            if let Some(body) = team.shared_reply(&reply) {
                return Ok(pull_reply(body, catching_up));
            }
            let changes = changes_of(&app, &caller.team_id, page).await?;
            let body = Bytes::from(wire::encode(&PullReply {
                changes,
                cursor: reply.cursor,
                cursor_tag,
                restarted,
                more: reply.more,
            }));
            team.share_reply(reply, body.clone());
            return Ok(pull_reply(body, catching_up));
        };
        cursor = next;
        waited = true;
        // A failed team is reloaded from its feed: changes are recorded
        // there, never in this state again.
        if !team.has_failed() {
            let _waiting = Waiting::new(&app.metrics.long_polls);
            tokio::select! {
                _ = news.changed() => {}
                _ = replaced.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
            }
        }
        if team.has_failed() {
            team = loaded_team(&app, &caller).await?;
        }
    }
}

/// The least a long-poll waits once a newer poll of its device began.
const OVERLAP: Duration = Duration::from_secs(5);

/// The changes of a pull page: from memory, or (older ones) from SQLite.
async fn changes_of(
    app: &App,
    team_id: &str,
    page: Vec<PageEntry>,
) -> Result<Vec<wire::DocChange>> {
    if page.iter().all(|e| e.bytes.is_some()) {
        return Ok(page
            .into_iter()
            .map(|e| wire::DocChange {
                doc: e.doc.to_string(),
                bytes: e.bytes.map(|b| b.to_vec()).unwrap_or_default(),
            })
            .collect());
    }
    let (relay, team_id) = (app.relay.clone(), team_id.to_owned());
    blocking(move || {
        relay.db.read(|conn| {
            let mut out = Vec::with_capacity(page.len());
            for e in page {
                let bytes = match e.bytes {
                    Some(b) => b.to_vec(),
                    None => match Db::feed_at(conn, &team_id, e.seq)? {
                        Some(row) => row.bytes,
                        None => continue,
                    },
                };
                out.push(wire::DocChange {
                    doc: e.doc.to_string(),
                    bytes,
                });
            }
            Ok(out)
        })
    })
    .await
}

/// Counts a waiting long-poll until its wait ends however it ends.
struct Waiting<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a std::sync::atomic::AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn enrolments_are_throttled_per_ipv4_address_and_ipv6_network() {
        let guard = EnrolGuard::default();
        for n in 0..ENROL_FAILURES_PER_MINUTE {
            assert!(!guard.blocked(ip("2001:db8:1:2::1")));
            // Every address of one /64 is the same client.
            guard.failed(ip(&format!("2001:db8:1:2::{:x}", n + 1)));
        }
        assert!(guard.blocked(ip("2001:db8:1:2:ffff::9")));
        assert!(!guard.blocked(ip("2001:db8:1:3::1")), "the next /64");
        for _ in 0..ENROL_FAILURES_PER_MINUTE {
            guard.failed(ip("192.0.2.7"));
        }
        assert!(guard.blocked(ip("192.0.2.7")));
        assert!(guard.blocked(ip("::ffff:192.0.2.7")), "the same, mapped");
        assert!(!guard.blocked(ip("192.0.2.8")));
    }

    #[test]
    fn failures_from_more_clients_than_are_kept_refuse_new_ones_only() {
        let guard = EnrolGuard::keeping(3);
        for c in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            guard.failed(ip(c));
        }
        assert!(!guard.blocked(ip("192.0.2.1")), "one failure is not many");
        assert!(guard.blocked(ip("192.0.2.4")), "full: a new client waits");
        guard.failed(ip("192.0.2.4"));
        assert_eq!(guard.failures().by_client.len(), 3, "not kept");
    }
}
