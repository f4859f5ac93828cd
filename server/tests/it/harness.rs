//! Start the relay binary, run its admin commands, make devices.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_core::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_handoff-server");

/// The relay binary, serving a database in a temporary directory.
pub struct Relay {
    pub dir: tempfile::TempDir,
    pub url: String,
    child: Option<Child>,
    port: u16,
    /// More arguments for `serve` (TLS).
    extra: Vec<String>,
    /// More environment for the process.
    env: Vec<(String, String)>,
}

impl Relay {
    pub fn start() -> Relay {
        Relay::start_with(&[])
    }

    pub fn start_with(serve_args: &[&str]) -> Relay {
        Relay::start_with_env(serve_args, &[])
    }

    pub fn start_with_env(serve_args: &[&str], env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let mut relay = Relay {
            dir,
            url: String::new(),
            child: None,
            port: 0,
            extra: serve_args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        relay.spawn();
        relay
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("relay.db")
    }

    /// Start the binary (again, on the same port after a restart).
    pub fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(BIN)
                .arg("--db")
                .arg(self.db())
                .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
                .args(&self.extra)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .env("HANDOFF_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                self.url = url.to_owned();
                self.port = url.rsplit(':').next().unwrap().parse().unwrap();
                self.child = Some(child);
                return;
            }
            // The old process may still hold the port for a moment.
            let _ = child.wait();
            assert!(Instant::now() < deadline, "the relay did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop, and start again on the same port and files with `env` instead
    /// of the environment it had.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.kill();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    /// The relay's `/metrics` text (a request that names no rules, as
    /// tools send).
    pub fn metrics(&self) -> String {
        let (rt, client) = http();
        rt.block_on(async {
            let r = client
                .get(format!("{}/metrics", self.url))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        })
    }

    /// [`metric`] as the relay counts it now.
    pub fn metric(&self, name: &str) -> u64 {
        metric(&self.metrics(), name)
    }

    /// Until the relay counts `n` long-polls waiting.
    pub fn wait_for_long_polls(&self, n: usize) {
        let line = format!("handoff_long_polls {n}");
        eventually(10, "the long-polls are waiting", || {
            self.metrics().lines().any(|l| l == line)
        });
    }

    /// SIGKILL: no chance to finish anything.
    /// The night's backup: the relay stopped, its database (with its log)
    /// copied aside, and started again. Returns the copy's path.
    pub fn back_up(&mut self) -> PathBuf {
        assert!(self.terminate().success());
        let backup = self.dir.path().join("backup.db");
        copy_db(&self.db(), &backup);
        self.spawn();
        backup
    }

    /// The relay's disk lost: stopped, `backup` put back in place of its
    /// database, and started again. Files the operator keeps beside the
    /// database (revocations, vouched) stay as they are.
    pub fn restore(&mut self, backup: &Path) {
        assert!(self.terminate().success());
        copy_db(backup, &self.db());
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM: graceful shutdown.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().unwrap()
    }

    pub fn admin(&self, args: &[&str]) -> String {
        admin(&self.db(), args)
    }

    pub fn create_team(&self, name: &str, admin: &str) -> (String, String) {
        let out = self.admin(&[
            "create-team",
            "--name",
            name,
            "--admin",
            admin,
            "--role",
            "manager",
        ]);
        let mut lines = out.lines();
        let team = lines
            .next()
            .unwrap()
            .strip_prefix("team ")
            .unwrap()
            .to_owned();
        let invite = lines
            .next()
            .unwrap()
            .strip_prefix("invite ")
            .unwrap()
            .to_owned();
        (team, invite)
    }

    pub fn invite(&self, team: &str, user: &str, role: &str) -> String {
        self.admin(&[
            "invite", "--team", team, "--user", user, "--name", user, "--role", role,
        ])
        .trim()
        .to_owned()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run an admin command of the relay binary on the database at `db`.
fn run_admin(db: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .env("HANDOFF_LOG", "warn")
        .output()
        .unwrap()
}

pub fn admin(db: &Path, args: &[&str]) -> String {
    let out = run_admin(db, args);
    assert!(
        out.status.success(),
        "admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An admin command that must fail: what it printed to stderr.
pub fn admin_fails(db: &Path, args: &[&str]) -> String {
    let out = run_admin(db, args);
    assert!(!out.status.success(), "admin {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// A phone: its own encrypted store and sync engine.
pub struct Phone {
    pub store: Arc<Store>,
    pub engine: SyncEngine,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

pub const KEY: [u8; 32] = [42; 32];

impl Phone {
    pub fn new() -> Phone {
        Phone::with_clock(Arc::new(SystemClock))
    }

    /// A phone whose store tells time by `clock` (a [`ManualClock`] to
    /// move it days ahead).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Phone {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phone.db");
        let store = Arc::new(
            Store::open(
                &path,
                &KEY,
                StoreOptions {
                    durability: Durability::Normal,
                    clock,
                    ..StoreOptions::default()
                },
            )
            .unwrap(),
        );
        let engine = SyncEngine::new(store.clone()).unwrap();
        Phone {
            store,
            engine,
            path,
            _dir: dir,
        }
    }

    /// The phone's database file opened beside its store, with its key:
    /// what someone holding the file and the key could read.
    pub fn open_file(&self) -> rusqlite::Connection {
        let key: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{key}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;"
        ))
        .unwrap();
        conn
    }

    /// Enrol with an invite and pull the team.
    pub fn enrolled(relay: &Relay, invite: &str) -> Phone {
        Phone::new_enrolled_at(&relay.url, invite)
    }

    /// [`Phone::enrolled`], for a relay at `url` (from another thread).
    pub fn new_enrolled_at(url: &str, invite: &str) -> Phone {
        let d = Phone::new();
        d.engine.enrol(url, invite).unwrap();
        d.sync();
        assert!(d.store.team().is_some());
        d
    }

    pub fn sync(&self) -> SyncReport {
        self.engine.sync_now().unwrap()
    }

    pub fn settings(&self) -> RelaySettings {
        self.store.relay_settings().unwrap().unwrap()
    }
}

/// A handoff with sensible defaults.
pub fn handoff(title: &str) -> Handoff {
    Handoff {
        title: title.into(),
        outcome: "patient reached and recovery documented".into(),
        why: "post-op follow-up within 48 hours".into(),
        due: None,
        priority: Priority::Normal,
        category: Category::FollowUpCall,
        level: DelegationLevel::Delegable,
        sop: None,
        route_result_to: None,
    }
}

pub fn task_for(title: &str, to: Option<&str>, pool: Option<Role>) -> NewTask {
    NewTask {
        handoff: handoff(title),
        patient: Some(PatientRef {
            display_name: "J. Doe".into(),
            phone: Some("555-0100".into()),
            record_ref: None,
        }),
        assignee: to.map(Into::into),
        pool,
    }
}

pub fn call(outcome: CallOutcome) -> CallAttempt {
    CallAttempt {
        outcome,
        contact_used: None,
        notes: "spoke about recovery".into(),
        answers: Vec::new(),
        next_attempt_due: None,
    }
}

/// A long-poll of `phone` from its cursor, waiting up to `wait` seconds,
/// sent over a connection of its own (which the caller may drop, as a
/// phone leaving its poll does).
pub fn raw_poll(relay: &Relay, phone: &Phone, wait: u64) -> std::net::TcpStream {
    use std::io::Write;
    let addr = relay.url.trim_start_matches("http://");
    let cursor = phone.store.relay_cursor().unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET /v1/pull?cursor={}&at={}&wait={wait} HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer {}\r\n\r\n",
        cursor.seq,
        cursor.tag,
        phone.settings().token
    )
    .unwrap();
    conn
}

/// The value of the metric `name` (labels included) in `/metrics` text;
/// 0 when it is not there.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Poll `f` until it holds, for at most `secs`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every device that has a task derives the same detail for it.
pub fn assert_converged(devices: &[&Phone]) {
    for a in devices {
        for task in a.store.task_ids().unwrap() {
            let mine = a.store.task_detail(&task).unwrap();
            for b in devices {
                if let Ok(theirs) = b.store.task_detail(&task) {
                    assert_eq!(mine.state, theirs.state, "task {task} differs");
                }
            }
        }
    }
}

/// A small async HTTP client for raw requests.
pub fn http() -> (tokio::runtime::Runtime, reqwest::Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    (
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        reqwest::Client::new(),
    )
}

/// `POST /v1/enrol` with `body`, as a hand-made client sends it: the
/// answer's status and body.
pub fn enrol_raw(relay: &Relay, body: serde_json::Value) -> (u16, String) {
    let (rt, client) = http();
    rt.block_on(async {
        let r = client
            .post(format!("{}/v1/enrol", relay.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// Pushes a phone's engine would never make (changes written by hand,
/// replayed, or pushed under another device's token), over one client.
pub struct RawPush {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
}

impl RawPush {
    pub fn to(relay: &Relay) -> RawPush {
        let (rt, client) = http();
        RawPush {
            rt,
            client,
            url: format!("{}/v1/push", relay.url),
        }
    }

    /// One push of `changes` as the device holding `token`: the status and
    /// the body of the answer.
    pub fn send(&self, token: &str, changes: Vec<sync::wire::DocChange>) -> (u16, Vec<u8>) {
        self.try_send(token, changes).expect("the relay answers")
    }

    /// [`RawPush::send`], or the error when no answer came.
    pub fn try_send(
        &self,
        token: &str,
        changes: Vec<sync::wire::DocChange>,
    ) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let body = sync::wire::encode(&sync::wire::PushRequest { changes });
        self.rt.block_on(async {
            let r = self
                .client
                .post(&self.url)
                .bearer_auth(token)
                .body(body)
                .send()
                .await?;
            Ok((r.status().as_u16(), r.bytes().await?.to_vec()))
        })
    }

    /// The verdicts on `changes`, which must be answered 200.
    pub fn verdicts(
        &self,
        token: &str,
        changes: Vec<sync::wire::DocChange>,
    ) -> Vec<sync::wire::Verdict> {
        let (status, body) = self.send(token, changes);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        sync::wire::decode::<sync::wire::PushReply>(&body)
            .unwrap()
            .verdicts
    }
}

/// One change of `doc`, as pushes carry it.
pub fn doc_change(doc: &str, bytes: Vec<u8>) -> sync::wire::DocChange {
    sync::wire::DocChange {
        doc: doc.to_owned(),
        bytes,
    }
}

/// A team whose manager `max` and one more member are enrolled, and `max`
/// has heard of the member's enrolment. Returns the team id too.
/// max (re)writes `user`'s membership and syncs it.
pub fn set_member(max: &Phone, user: &str, role: Role, trusted: bool, active: bool) {
    max.store
        .put_member(&Member {
            user_id: user.into(),
            name: user.into(),
            role,
            trusted,
            active,
        })
        .unwrap();
    max.sync();
}

pub fn manager_and(relay: &Relay, user: &str, role: &str) -> (String, Phone, Phone) {
    let (team, invite) = relay.create_team("Clinic", "max");
    let max = Phone::enrolled(relay, &invite);
    let other = Phone::enrolled(relay, &relay.invite(&team, user, role));
    max.sync();
    (team, max, other)
}

/// Like [`manager_and`], but assistant `ana` reaches the relay through
/// `proxy_url` (a counting or cutting proxy); `max` talks to it directly.
pub fn manager_and_proxied(relay: &Relay, proxy_url: &str) -> (Phone, Phone) {
    let (team, invite) = relay.create_team("Clinic", "max");
    let max = Phone::enrolled(relay, &invite);
    let ana = Phone::new();
    ana.engine
        .enrol(proxy_url, &relay.invite(&team, "ana", "clinical_assistant"))
        .unwrap();
    ana.sync();
    max.sync();
    (max, ana)
}

/// `max` hands a call to `user` (on phone `to`); both phones have the task.
pub fn hand_over(max: &Phone, to: &Phone, title: &str, user: &str) -> String {
    let task = max
        .store
        .delegate(task_for(title, Some(user), None))
        .unwrap();
    max.sync();
    to.sync();
    task
}

/// A task's document as `phones` have it between them (a phone is not sent
/// its own changes back), for `writer`'s device to write hand-made changes
/// to: what they pulled of it, with `writer`'s actor.
pub fn task_doc_as(
    relay: &Relay,
    phones: &[&Phone],
    task: &str,
    writer: &Phone,
) -> automerge::AutoCommit {
    let (rt, client) = http();
    let actor = hex::decode(writer.store.device_actor()).unwrap();
    let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(actor));
    for phone in phones {
        for c in pull_all(&rt, &client, &relay.url, &phone.settings().token) {
            if c.doc == task {
                doc.apply_changes([automerge::Change::from_bytes(c.bytes).unwrap()])
                    .unwrap();
            }
        }
    }
    doc
}

/// Everything in the feed `token` may read.
pub fn pull_all(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Vec<sync::wire::DocChange> {
    let mut all = Vec::new();
    let mut cursor = 0;
    loop {
        let reply: sync::wire::PullReply = rt.block_on(async {
            let r = client
                .get(format!("{url}/v1/pull?cursor={cursor}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            sync::wire::decode(&r.bytes().await.unwrap()).unwrap()
        });
        all.extend(reply.changes);
        cursor = reply.cursor;
        if !reply.more {
            return all;
        }
    }
}

/// Text that does not compress: what a real note reads like to deflate.
pub fn varied_text(seed: usize, len: usize) -> String {
    let mut x = seed as u64 * 2_654_435_761 + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// `n` comments of `len` characters that do not compress, from `seed` on.
pub fn long_comments(store: &Store, task: &str, n: usize, len: usize, seed: usize) {
    for i in 0..n {
        store.comment(task, &varied_text(seed + i, len)).unwrap();
    }
}

/// The relay's database file with its log, as a copy taken while it is
/// stopped.
fn copy_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let (from, to) = (
            format!("{}{suffix}", from.display()),
            format!("{}{suffix}", to.display()),
        );
        let _ = std::fs::remove_file(&to);
        if Path::new(&from).exists() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}
