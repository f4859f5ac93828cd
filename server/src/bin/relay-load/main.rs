//! `relay-load`: a load generator for the relay. It starts the real
//! `handoff-server` binary on 127.0.0.1 with a fresh SQLite file, enrols
//! devices through the HTTP API, and drives them with the wire protocol the
//! phones speak. Two workloads (see BENCHMARKS.md for the figures):
//!
//! - `edits`: one clinic's managers and assistants work shared tasks
//!   (a manager delegates, the assistant logs calls and submits, the
//!   manager approves and delegates the next). Reports acked edits/s, the
//!   relay's CPU time per acked edit, and how long until another device
//!   has each edit.
//! - `long-polls`: thousands of devices wait on `/v1/pull` at once; a new
//!   task lands in their pool. Reports the relay's memory and the wake-up
//!   latency of every waiting device.
//!
//! Devices here are light (an automerge document per task and its parsed
//! events, no SQLite): the relay is what is measured, and it shares the
//! machine's cores with this process. Each device's changes are built by
//! the core's own code (`Event::next`, `task_doc`), so the relay checks
//! them exactly as it checks a phone's.

mod edits;
mod http;
mod polls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use clap::{Parser, Subcommand};
use handoff_core::sync::wire::{EnrolReply, EnrolRequest};
use handoff_core::Role;
use handoff_server::{relay, Db};

#[derive(Parser)]
#[command(name = "relay-load", about = "Load generator for the Handoff relay")]
struct Cli {
    /// The relay binary (default: handoff-server beside this program).
    #[arg(long, global = true)]
    server: Option<PathBuf>,
    /// Also print the results as one JSON line (for scripts and tests).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Managers and assistants of one clinic work shared tasks.
    Edits(edits::Args),
    /// Many devices long-poll at once; a new pooled task wakes them.
    LongPolls(polls::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = match cli.server.clone().map_or_else(beside_me, Ok) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relay-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.workload {
            Workload::Edits(args) => edits::run(&server, args).await,
            Workload::LongPolls(args) => polls::run(&server, args).await,
        }
    });
    match result {
        Ok(report) => {
            println!("{}", report.text);
            if cli.json {
                println!("{}", report.json);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a workload prints.
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
}

pub type Result<T> = std::result::Result<T, String>;

fn beside_me() -> Result<PathBuf> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let server = me.with_file_name("handoff-server");
    if server.exists() {
        Ok(server)
    } else {
        Err(format!(
            "no relay binary at {} (build it: cargo build --release -p handoff-server), or pass --server",
            server.display()
        ))
    }
}

/// The relay binary, serving a database in a temporary directory.
pub struct Server {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
    pub db: PathBuf,
}

impl Server {
    /// Start the relay on a free loopback port. The database is made first
    /// (teams and invites are written to it directly, as the admin commands
    /// do), so `prepare` runs before the relay opens it.
    pub fn start(bin: &Path, prepare: impl FnOnce(&Db) -> Result<()>) -> Result<Server> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db = dir.path().join("relay.db");
        {
            let handle = Db::open(&db).map_err(|e| e.to_string())?;
            prepare(&handle)?;
        }
        let mut child = Command::new(bin)
            .arg("--db")
            .arg(&db)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("HANDOFF_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .ok_or_else(|| format!("the relay did not start: {line:?}"))?
            .to_owned();
        Ok(Server {
            child,
            addr,
            _dir: dir,
            db,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time the relay process has used so far.
    pub fn cpu(&self) -> Result<Duration> {
        cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

    /// Resident and peak resident memory of the relay, in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| e.to_string())?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// One figure from the relay's own `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let mut conn = http::Conn::new(&self.addr);
        let reply = conn
            .request("GET", "/metrics", None, "", &[])
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&reply.body);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("the relay's metrics lack {name}"))
    }

    /// Waiting long-polls, from the relay's own metrics.
    pub async fn waiting_long_polls(&self) -> Result<i64> {
        Ok(self.metric("handoff_long_polls").await? as i64)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device enrolled with the relay.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub user: String,
    pub actor: String,
    pub token: String,
}

/// Redeem an invite over HTTP, as a phone does.
pub async fn enrol(conn: &mut http::Conn, invite: &str) -> Result<Enrolled> {
    let (actor, token) = (relay::random_hex(16), relay::random_hex(32));
    let body = serde_json::to_vec(&EnrolRequest {
        invite: invite.to_owned(),
        actor: actor.clone(),
        token: Some(token.clone()),
    })
    .map_err(|e| e.to_string())?;
    let reply = conn
        .request("POST", "/v1/enrol", None, "application/json", &body)
        .await
        .map_err(|e| format!("enrol: {e}"))?;
    if reply.status != 200 {
        return Err(format!(
            "enrol: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    let enrolled: EnrolReply = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
    Ok(Enrolled {
        user: enrolled.user,
        actor,
        token,
    })
}

/// Make a team with invites for `people` (user id, role); returns the team
/// id and the invite codes in the same order.
pub fn make_team(db: &Db, people: &[(String, Role)]) -> Result<(String, Vec<String>)> {
    let team = relay::create_team(db, "Load test clinic", true).map_err(|e| e.to_string())?;
    let mut codes = Vec::with_capacity(people.len());
    for (user, role) in people {
        let code = relay::create_invite(db, &team.team_id, user, user, *role, 72)
            .map_err(|e| e.to_string())?;
        codes.push(code);
    }
    Ok((team.team_id, codes))
}

/// Enrol every invite, `parallel` at a time.
pub async fn enrol_all(addr: &str, codes: Vec<String>, parallel: usize) -> Result<Vec<Enrolled>> {
    let codes = std::sync::Arc::new(codes);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..parallel.max(1) {
        let (codes, next, addr) = (codes.clone(), next.clone(), addr.to_owned());
        workers.push(tokio::spawn(async move {
            let mut conn = http::Conn::new(&addr);
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(code) = codes.get(i) else {
                    return Ok::<_, String>(done);
                };
                done.push((i, enrol(&mut conn, code).await?));
            }
        }));
    }
    let mut all = Vec::with_capacity(codes.len());
    for w in workers {
        all.extend(w.await.map_err(|e| e.to_string())??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, e)| e).collect())
}

/// User + system CPU time of a process, from its `/proc/<pid>/stat`.
pub fn cpu_time(stat_path: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(stat_path).map_err(|e| e.to_string())?;
    // The fields after the command name, which ends at the last ')': utime
    // and stime are fields 14 and 15 of proc(5), here 11 and 12. USER_HZ is
    // 100 on Linux x86-64.
    let rest = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
    let ticks: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().map_err(|_| "bad /proc stat".to_string()))
        .collect::<Result<_>>()?;
    Ok(Duration::from_millis(ticks.iter().sum::<u64>() * 10))
}

/// The p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
