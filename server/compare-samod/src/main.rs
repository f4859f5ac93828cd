//! The automerge-repo relay written in Rust (samod) under the relay's
//! throughput workload, for a side-by-side comparison with `relay-load
//! edits` (BENCHMARKS.md).
//!
//!     cargo build --release --manifest-path server/compare-samod/Cargo.toml
//!     server/compare-samod/target/release/compare-samod run --seconds 10 --warmup 2 --batch 1
//!
//! `run` starts `compare-samod serve` (a samod repo with its filesystem
//! storage behind an axum WebSocket endpoint on 127.0.0.1, as a sync server
//! is deployed) as a child process, then plays 20 devices against it from
//! this process: 2 managers and 18 assistants, each assistant sharing 4
//! task documents with one manager. Every edit appends one event (a JSON
//! string of the size the relay's call attempts have) to a document's
//! events list. A device makes `--batch` edits on its documents in turn,
//! waits until the relay has them all (samod's `they_have_our_changes`:
//! the relay's sync state holds our heads), and goes on: the closed loop of
//! `relay-load edits`. It reports acked edits/s, the relay process's CPU
//! time per acked edit, and how long an edit takes to reach the other
//! device of its document.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc, ROOT};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use samod::{BackoffConfig, DialError, Dialer, DocHandle, Repo, ShareConfig, Transport, Url};
use tokio_tungstenite::tungstenite::Message;

const MANAGERS: usize = 2;
const ASSISTANTS: usize = 18;
const TASKS_PER_ASSISTANT: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let port: u16 = args[1].parse().expect("serve <port> <data dir>");
            serve(port, args[2].clone());
        }
        Some("run") => run(&args[1..]),
        _ => {
            eprintln!(
                "usage: compare-samod run [--seconds S] [--warmup W] [--batch N] [--js <sync server index.js>]\n       compare-samod serve <port> <data dir>"
            );
            std::process::exit(2);
        }
    }
}

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// The relay: samod with its filesystem storage, a WebSocket endpoint, and
/// the sync server's policy (it answers for documents it is asked about and
/// announces none).
#[tokio::main]
async fn serve(port: u16, data_dir: String) {
    let repo = Repo::build_tokio()
        .with_storage(samod::storage::TokioFilesystemStorage::new(data_dir))
        .with_share_policy(ShareConfig::read_write().with_announce(false))
        .with_peer_id(samod::PeerId::from("relay"))
        .load()
        .await;
    let acceptor = repo
        .make_acceptor(Url::parse("ws://127.0.0.1/").unwrap())
        .expect("acceptor");
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move |ws: axum::extract::ws::WebSocketUpgrade| {
            let acceptor = acceptor.clone();
            async move {
                ws.on_upgrade(move |socket| async move {
                    let _ = acceptor.accept_axum(socket, None);
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

/// A WebSocket client for samod (tokio-tungstenite, no TLS: loopback only).
struct WsDialer {
    url: Url,
}

impl Dialer for WsDialer {
    type Error = Infallible;

    fn url(&self) -> Url {
        self.url.clone()
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let url = self.url.clone();
        Box::pin(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(DialError::transient)?;
            let (sink, stream) = ws.split();
            let stream = stream.filter_map(|m| async move {
                match m {
                    Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            });
            let sink = sink.with(|b: Vec<u8>| async move {
                Ok::<_, tokio_tungstenite::tungstenite::Error>(Message::Binary(b.into()))
            });
            Ok(Transport::new(Box::pin(stream), Box::pin(sink)))
        })
    }
}

/// What the devices saw, in this process.
#[derive(Default)]
struct Log {
    /// When each edit was made, by its id.
    made: HashMap<String, Instant>,
    /// (acknowledged at, made → acknowledged)
    acked: Vec<(Instant, Duration)>,
    /// (seen at, made → the other device has it)
    seen: Vec<(Instant, Duration)>,
}

fn event(id: &str, n: u64) -> String {
    format!(
        concat!(
            r#"{{"id":"{}","lt":{},"at":1772442000000,"by":"staff","k":"call_logged","#,
            r#""attempt":{{"outcome":"busy","contact_used":"mobile","#,
            r#""notes":"Left message with spouse; patient recovering, mild pain","#,
            r#""answers":[{{"question":"Pain 0-10?","answer":"3"}}],"next_attempt_due":null}},"#,
            r#""deps":["00112233445566778899aabbccddeeff:{}"]}}"#
        ),
        id, n, n
    )
}

fn events_list(d: &Automerge) -> automerge::ObjId {
    match d.get(ROOT, "events") {
        Ok(Some((_, id))) => id,
        _ => panic!("no events list"),
    }
}

fn run(args: &[String]) {
    let seconds = flag(args, "--seconds", 10);
    let warmup = flag(args, "--warmup", 2);
    let batch = flag(args, "--batch", 1).max(1) as usize;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let data = std::env::temp_dir().join(format!("compare-samod-{port}"));
    let _ = std::fs::remove_dir_all(&data);
    // `--js <index.js>`: the JS sync server instead (automerge-repo-sync-server,
    // which samod's protocol is compatible with), run by node.
    let js = args
        .iter()
        .position(|a| a == "--js")
        .and_then(|i| args.get(i + 1));
    let mut child = match js {
        Some(index) => std::process::Command::new("node")
            .arg(index)
            .env("PORT", port.to_string())
            .env("DATA_DIR", &data)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the JS sync server"),
        None => std::process::Command::new(std::env::current_exe().unwrap())
            .args(["serve", &port.to_string(), data.to_str().unwrap()])
            .spawn()
            .expect("start the samod relay"),
    };
    let name = if js.is_some() {
        "JS sync server"
    } else {
        "samod relay"
    };
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the samod relay did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(play(port, pid, seconds, warmup, batch));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    result.report(name, seconds, batch);
}

struct Outcome {
    acked: Vec<Duration>,
    seen: Vec<Duration>,
    cpu: Duration,
    /// This process: the devices.
    load_cpu: Duration,
    made_total: usize,
}

impl Outcome {
    fn report(mut self, name: &str, seconds: u64, batch: usize) {
        let q = |v: &mut Vec<Duration>, p: f64| {
            v.sort();
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let n = self.acked.len();
        println!(
            "{name}: 20 devices ({MANAGERS} managers), closed loop, batch ≤ {batch}, {seconds} s measured"
        );
        println!("acked edits/s        {:.0}", n as f64 / seconds as f64);
        println!(
            "relay CPU per edit   {:.1} µs ({:.2} s over the window)",
            self.cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
            self.cpu.as_secs_f64()
        );
        let (s50, s99) = (q(&mut self.seen, 0.5), q(&mut self.seen, 0.99));
        let (a50, a99) = (q(&mut self.acked, 0.5), q(&mut self.acked, 0.99));
        println!(
            "made → other device p50 {:.2} ms   p99 {:.2} ms   ({} seen in the window)",
            s50.as_secs_f64() * 1e3,
            s99.as_secs_f64() * 1e3,
            self.seen.len()
        );
        println!(
            "made → acked         p50 {:.2} ms   p99 {:.2} ms",
            a50.as_secs_f64() * 1e3,
            a99.as_secs_f64() * 1e3
        );
        println!(
            "load generator CPU   {:.2} s; edits made in all {}",
            self.load_cpu.as_secs_f64(),
            self.made_total
        );
    }
}

/// User + system CPU time of a process so far.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

async fn play(port: u16, pid: u32, seconds: u64, warmup: u64, batch: usize) -> Outcome {
    let url = Url::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
    let devices = MANAGERS + ASSISTANTS;
    let mut repos = Vec::new();
    let mut conns = Vec::new();
    for d in 0..devices {
        let repo = Repo::build_tokio()
            .with_peer_id(samod::PeerId::from(format!("device-{d}").as_str()))
            .load()
            .await;
        let dialer = repo
            .dial(
                BackoffConfig::default(),
                Arc::new(WsDialer { url: url.clone() }),
            )
            .unwrap();
        dialer.established().await.expect("connected");
        conns.push(dialer.connection_id().expect("a connection"));
        repos.push((repo, dialer));
    }
    // The task documents: made by the manager, found by the assistant.
    let mut docs: Vec<Vec<DocHandle>> = vec![Vec::new(); devices];
    for a in 0..ASSISTANTS {
        let assistant = MANAGERS + a;
        let manager = a % MANAGERS;
        for _ in 0..TASKS_PER_ASSISTANT {
            let mut doc = Automerge::new();
            doc.transact::<_, _, automerge::AutomergeError>(|tx| {
                let list = tx.put_object(ROOT, "events", ObjType::List)?;
                tx.insert(&list, 0, event(&format!("created-{a}"), 0))?;
                Ok(())
            })
            .unwrap();
            let made = repos[manager].0.create(doc).await.unwrap();
            made.they_have_our_changes(conns[manager]).await;
            let found = repos[assistant]
                .0
                .find(made.document_id().clone())
                .await
                .unwrap()
                .expect("the relay has the document");
            docs[manager].push(made);
            docs[assistant].push(found);
        }
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Each device watches its documents for the other device's edits.
    for (d, handles) in docs.iter().enumerate() {
        for handle in handles {
            let handle = handle.clone();
            let log = Arc::clone(&log);
            let stop = Arc::clone(&stop);
            let mine = format!("d{d}-");
            tasks.push(tokio::spawn(async move {
                let mut changes = handle.changes();
                let mut seen: HashSet<String> = HashSet::new();
                while let Some(_change) = changes.next().await {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let now = Instant::now();
                    let ids: Vec<String> = handle.with_document(|doc| {
                        let list = events_list(doc);
                        let len = doc.length(&list);
                        (len.saturating_sub(8)..len)
                            .filter_map(|i| match doc.get(&list, i) {
                                Ok(Some((v, _))) => v
                                    .as_str()
                                    .map(|s| s.split('"').nth(3).unwrap_or_default().to_owned()),
                                _ => None,
                            })
                            .collect()
                    });
                    let mut log = log.lock().unwrap();
                    for id in ids {
                        if id.starts_with('d') && !id.starts_with(&mine) && seen.insert(id.clone())
                        {
                            if let Some(made) = log.made.get(&id).copied() {
                                log.seen.push((now, now - made));
                            }
                        }
                    }
                }
            }));
        }
    }
    // Each device edits its documents in turn, `batch` at a time.
    for (d, handles) in docs.iter().enumerate() {
        let handles = handles.clone();
        let conn = conns[d];
        let log = Arc::clone(&log);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut pending = Vec::new();
                for _ in 0..batch.min(handles.len()) {
                    let handle = handles[next % handles.len()].clone();
                    next += 1;
                    n += 1;
                    let id = format!("d{d}-{n}");
                    let text = event(&id, n);
                    let made = Instant::now();
                    log.lock().unwrap().made.insert(id, made);
                    handle.with_document(|doc| {
                        let list = events_list(doc);
                        let len = doc.length(&list);
                        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
                            tx.insert(&list, len, text.as_str())?;
                            Ok(())
                        })
                        .unwrap();
                    });
                    pending.push((handle, made));
                }
                for (handle, made) in pending {
                    handle.they_have_our_changes(conn).await;
                    let now = Instant::now();
                    log.lock().unwrap().acked.push((now, now - made));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let me = std::process::id();
    let (from, cpu_from, load_from) = (Instant::now(), cpu_of(pid), cpu_of(me));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (to, cpu_to, load_to) = (Instant::now(), cpu_of(pid), cpu_of(me));
    stop.store(true, Ordering::Relaxed);
    let log = log.lock().unwrap();
    let within = |v: &[(Instant, Duration)]| -> Vec<Duration> {
        v.iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| *d)
            .collect()
    };
    let outcome = Outcome {
        acked: within(&log.acked),
        seen: within(&log.seen),
        cpu: cpu_to.saturating_sub(cpu_from),
        load_cpu: load_to.saturating_sub(load_from),
        made_total: log.made.len(),
    };
    for t in tasks {
        t.abort();
    }
    outcome
}
