//! The `edits` workload: one clinic's managers delegate follow-up calls to
//! assistants; each assistant logs call attempts on its open tasks and
//! submits each after `calls` attempts; the manager who delegated it
//! approves it and delegates the next. Every edit is one automerge change
//! pushed to the relay; every device long-polls the relay for the others'.
//!
//! The edits are made before the clock starts (by the core's own code, on
//! in-memory documents, each device taking in what the relay would let it
//! read), then replayed over HTTP. A device pushes an edit only once it has
//! pulled every other device's change that the edit builds on, so the
//! relay sees the same causal flow as from live phones, while this process
//! spends its share of the two cores on the wire rather than on automerge.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use automerge::{AutoCommit, Change};
use handoff_core::event::{Action, Event};
use handoff_core::store::TEAM_DOC;
use handoff_core::sync::wire::{self, DocChange, PullReply, PushReply, PushRequest, Verdict};
use handoff_core::task_doc;
use handoff_core::{
    CallAttempt, CallOutcome, Category, DelegationLevel, Handoff, Priority, Role, HOUR_MS,
};
use handoff_server::relay::{now_ms, random_hex};
use tokio::sync::Notify;

use crate::http::Conn;
use crate::{ms, percentile, Enrolled, Report, Result, Server};

#[derive(clap::Args)]
pub struct Args {
    /// Devices in the clinic, managers included.
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// How many of them are managers; the rest are clinical assistants.
    #[arg(long, default_value_t = 2)]
    managers: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Edits per second offered over all devices. 0: closed loop, each
    /// device pushes its next edits as soon as its last push is acknowledged.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Most edits one push carries (a device's outbox since its last push).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Tasks each assistant has open at once.
    #[arg(long, default_value_t = 4)]
    backlog: usize,
    /// Call attempts logged on a task before it is submitted.
    #[arg(long, default_value_t = 8)]
    calls: usize,
    /// Edits planned before the clock starts (the run fails if the devices
    /// get through them all).
    #[arg(long, default_value_t = 300_000)]
    edits: usize,
}

/// One edit a device will push, and the other devices' changes it builds
/// on (by [`fingerprint`]).
struct Planned {
    change: DocChange,
    id: u64,
    needs: Vec<u64>,
}

/// Make every device's edits, in an order the devices could have made them
/// in: each takes in what the relay would let it read as soon as another
/// device writes it.
fn plan(enrolled: &[Enrolled], args: &Args) -> Result<Vec<Vec<Planned>>> {
    let assistants: Vec<String> = enrolled[args.managers..]
        .iter()
        .map(|e| e.user.clone())
        .collect();
    let mut devices: Vec<Local> = enrolled
        .iter()
        .enumerate()
        .map(|(i, me)| {
            let (kind, owed) = if i < args.managers {
                let mine: Vec<String> = assistants
                    .iter()
                    .skip(i)
                    .step_by(args.managers)
                    .cloned()
                    .collect();
                let owed = mine.iter().map(|a| (a.clone(), args.backlog)).collect();
                (Kind::Manager, owed)
            } else {
                (Kind::Assistant, Vec::new())
            };
            Local {
                me: me.clone(),
                kind,
                tasks: HashMap::new(),
                done: HashSet::new(),
                owed,
                to_review: VecDeque::new(),
            }
        })
        .collect();
    let n = devices.len();
    let mut plans: Vec<Vec<Planned>> = (0..n).map(|_| Vec::new()).collect();
    // Per device and document: others' changes taken in since its own last
    // change there.
    let mut taken: Vec<HashMap<String, Vec<u64>>> = vec![HashMap::new(); n];
    let mut total = 0;
    while total < args.edits {
        let mut made = false;
        for d in (0..n).flat_map(|d| {
            // A manager's phone does all its pending reviews in a round; an
            // assistant logs one call.
            let turns = if d < args.managers { 64 } else { 1 };
            std::iter::repeat_n(d, turns)
        }) {
            let Some((change, assignee)) = devices[d].next_edit(args.calls)? else {
                continue;
            };
            made = true;
            total += 1;
            let id = fingerprint(&change.bytes);
            let needs = taken[d].remove(&change.doc).unwrap_or_default();
            for (o, other) in devices.iter_mut().enumerate() {
                let reads = matches!(other.kind, Kind::Manager) || other.me.user == assignee;
                if o != d && reads {
                    other.apply(&change.doc, change.bytes.clone());
                    taken[o].entry(change.doc.clone()).or_default().push(id);
                }
            }
            plans[d].push(Planned { change, id, needs });
        }
        if !made {
            return Err("the workflow stalled while planning".into());
        }
    }
    Ok(plans)
}

#[derive(Clone)]
enum Kind {
    Manager,
    Assistant,
}

/// One device's copy of one task.
struct TaskCopy {
    doc: AutoCommit,
    events: Vec<Event>,
    created_by: String,
    assignee: Option<String>,
    submitted: bool,
}

impl TaskCopy {
    fn observe(&mut self, e: &Event) {
        match &e.action {
            Action::Created { assignee, .. } => {
                self.created_by = e.by.clone();
                self.assignee = assignee.clone();
            }
            Action::Assigned { to } => self.assignee = Some(to.clone()),
            Action::Submitted { .. } => self.submitted = true,
            _ => {}
        }
        self.events.push(e.clone());
    }
}

/// What a device holds while the workload is planned: its open tasks, and
/// what it has finished with.
struct Local {
    me: Enrolled,
    kind: Kind,
    tasks: HashMap<String, TaskCopy>,
    done: HashSet<String>,
    /// Managers: tasks still owed to each assistant (its backlog).
    owed: Vec<(String, usize)>,
    /// Managers: submitted tasks waiting for review, oldest first.
    to_review: VecDeque<String>,
}

impl Local {
    fn actor(&self) -> automerge::ActorId {
        automerge::ActorId::from(hex::decode(&self.me.actor).unwrap_or_default())
    }

    /// Take in a change another device made.
    fn apply(&mut self, doc_id: &str, bytes: Vec<u8>) {
        if doc_id == TEAM_DOC || self.done.contains(doc_id) {
            return;
        }
        let Ok(change) = Change::from_bytes(bytes) else {
            return;
        };
        let events = task_doc::events_in_change(&change);
        let actor = self.actor();
        let copy = self
            .tasks
            .entry(doc_id.to_owned())
            .or_insert_with(|| TaskCopy {
                doc: AutoCommit::new().with_actor(actor),
                events: Vec::new(),
                created_by: String::new(),
                assignee: None,
                submitted: false,
            });
        if copy.doc.apply_changes([change]).is_err() {
            return;
        }
        for e in &events {
            copy.observe(e);
        }
        if let Kind::Manager = self.kind {
            if !copy.created_by.is_empty() && copy.created_by != self.me.user {
                // A manager works only the tasks it delegated.
                self.tasks.remove(doc_id);
                self.done.insert(doc_id.to_owned());
            } else if events
                .iter()
                .any(|e| matches!(e.action, Action::Submitted { .. }))
            {
                // Reviewed oldest first.
                self.to_review.push_back(doc_id.to_owned());
            }
        }
    }

    /// The next thing this person does, as a change, with the task's
    /// assignee (who may read it besides the managers); `None` when nothing
    /// waits for them.
    fn next_edit(&mut self, calls: usize) -> Result<Option<(DocChange, String)>> {
        match self.kind.clone() {
            Kind::Assistant => {
                let me = self.me.user.clone();
                let Some(id) = self
                    .tasks
                    .iter()
                    .find(|(_, t)| t.assignee.as_deref() == Some(me.as_str()) && !t.submitted)
                    .map(|(id, _)| id.clone())
                else {
                    return Ok(None);
                };
                let logged = self.tasks[&id]
                    .events
                    .iter()
                    .filter(|e| matches!(e.action, Action::CallLogged { .. }))
                    .count();
                let action = if logged < calls {
                    Action::CallLogged {
                        attempt: call_attempt(logged),
                    }
                } else {
                    Action::Submitted {
                        note: "all attempts logged".into(),
                    }
                };
                let change = self.write(&id, action)?;
                if logged >= calls {
                    self.tasks.remove(&id);
                    self.done.insert(id);
                }
                Ok(Some((change, me)))
            }
            Kind::Manager => {
                if let Some(slot) = self.owed.iter_mut().find(|(_, n)| *n > 0) {
                    slot.1 -= 1;
                    let assistant = slot.0.clone();
                    let change = self.delegate(&assistant)?;
                    return Ok(Some((change, assistant)));
                }
                let Some(id) = self.to_review.pop_front() else {
                    return Ok(None);
                };
                let assistant = self
                    .tasks
                    .get(&id)
                    .and_then(|t| t.assignee.clone())
                    .unwrap_or_default();
                let heads = self
                    .tasks
                    .get_mut(&id)
                    .ok_or("no such task")?
                    .doc
                    .get_heads()
                    .iter()
                    .map(|h| h.to_string())
                    .collect();
                let change = self.write(
                    &id,
                    Action::Approved {
                        heads,
                        note: String::new(),
                    },
                )?;
                self.tasks.remove(&id);
                self.done.insert(id);
                if let Some(slot) = self.owed.iter_mut().find(|(a, _)| *a == assistant) {
                    slot.1 += 1;
                }
                Ok(Some((change, assistant)))
            }
        }
    }

    fn delegate(&mut self, assistant: &str) -> Result<DocChange> {
        let task_id = random_hex(16);
        let now = now_ms();
        let event = Event::next(
            &[],
            &self.me.actor,
            &self.me.user,
            now,
            Action::Created {
                handoff: Handoff {
                    title: "Post-procedure follow-up call".into(),
                    outcome: "Reach the patient within 48 hours and document recovery status"
                        .into(),
                    why: "Early complications are caught by the follow-up call".into(),
                    due: Some(now + 48 * HOUR_MS),
                    priority: Priority::Normal,
                    category: Category::FollowUpCall,
                    level: DelegationLevel::Delegable,
                    sop: None,
                    route_result_to: None,
                },
                checklist: Vec::new(),
                questions: Vec::new(),
                pool: None,
                assignee: Some(assistant.to_owned()),
            },
        );
        let doc = task_doc::new_doc(&task_id, 0, &self.actor()).map_err(|e| e.to_string())?;
        self.tasks.insert(
            task_id.clone(),
            TaskCopy {
                doc,
                events: Vec::new(),
                created_by: self.me.user.clone(),
                assignee: None,
                submitted: false,
            },
        );
        self.commit(&task_id, event)
    }

    fn write(&mut self, id: &str, action: Action) -> Result<DocChange> {
        let copy = self.tasks.get(id).ok_or("no such task")?;
        let event = Event::next(
            &copy.events,
            &self.me.actor,
            &self.me.user,
            now_ms(),
            action,
        );
        self.commit(id, event)
    }

    fn commit(&mut self, id: &str, event: Event) -> Result<DocChange> {
        let copy = self.tasks.get_mut(id).ok_or("no such task")?;
        task_doc::append(&mut copy.doc, &event).map_err(|e| e.to_string())?;
        copy.doc.commit();
        let change = copy
            .doc
            .get_last_local_change()
            .ok_or("the edit made no change")?;
        copy.observe(&event);
        Ok(DocChange {
            doc: id.to_owned(),
            bytes: change.raw_bytes().to_vec(),
        })
    }
}

fn call_attempt(n: usize) -> CallAttempt {
    const OUTCOMES: [CallOutcome; 4] = [
        CallOutcome::NoAnswer,
        CallOutcome::Voicemail,
        CallOutcome::Busy,
        CallOutcome::Reached,
    ];
    CallAttempt {
        outcome: OUTCOMES[n % OUTCOMES.len()],
        contact_used: Some("mobile".into()),
        notes: "Left a message with the callback number; will try again after 2 pm".into(),
        answers: Vec::new(),
        next_attempt_due: Some(now_ms() + 4 * HOUR_MS),
    }
}

/// What the devices measure together.
struct Measure {
    start: Instant,
    end: Instant,
    /// Stop pushing (pulling goes on while the last edits arrive).
    writing: AtomicBool,
    /// Edits not yet seen by another device (by [`fingerprint`]), and when
    /// they were made.
    unseen: Mutex<HashMap<u64, Instant>>,
    samples: Mutex<Samples>,
}

#[derive(Default)]
struct Samples {
    /// Edits acknowledged inside the window.
    acked: u64,
    /// Made → first seen by another device, for edits made in the window (µs).
    seen_us: Vec<u64>,
    /// Made → acknowledged by the relay, for edits made in the window (µs).
    ack_us: Vec<u64>,
    pushes: u64,
    pulls: u64,
    refused: HashMap<String, u64>,
    errors: Vec<String>,
}

impl Measure {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
    fn samples(&self) -> MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn unseen(&self) -> MutexGuard<'_, HashMap<u64, Instant>> {
        self.unseen.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn error(&self, e: String) {
        self.samples().errors.push(e);
    }
}

/// One device during the run: its planned edits and what it has pulled.
struct Phone {
    token: String,
    plan: Vec<Planned>,
    received: Mutex<HashSet<u64>>,
    news: Notify,
}

impl Phone {
    fn has_received(&self, ids: &[u64]) -> bool {
        let got = self.received.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter().all(|id| got.contains(id))
    }
}

pub async fn run(bin: &Path, args: Args) -> Result<Report> {
    if args.managers == 0 || args.devices <= args.managers {
        return Err("need at least one manager and one assistant".into());
    }
    if args.batch == 0 || args.calls == 0 || args.seconds <= 0.0 {
        return Err("--batch, --calls and --seconds must be positive".into());
    }
    let people: Vec<(String, Role)> = (0..args.devices)
        .map(|i| {
            if i < args.managers {
                (format!("manager-{i}"), Role::Manager)
            } else {
                (format!("assistant-{i}"), Role::ClinicalAssistant)
            }
        })
        .collect();
    let mut codes = Vec::new();
    let server = Server::start(bin, |db| {
        codes = crate::make_team(db, &people)?.1;
        Ok(())
    })?;
    let enrolled = crate::enrol_all(&server.addr, codes, 4).await?;
    let planned_at = Instant::now();
    let plans = plan(&enrolled, &args)?;
    let planning = planned_at.elapsed();

    let warm = Instant::now() + Duration::from_secs_f64(args.warmup);
    let measure = Arc::new(Measure {
        start: warm,
        end: warm + Duration::from_secs_f64(args.seconds),
        writing: AtomicBool::new(true),
        unseen: Mutex::new(HashMap::new()),
        samples: Mutex::new(Samples::default()),
    });
    // The offered rate is shared by each device's part in the work (a
    // manager delegates and approves for nine assistants).
    let planned: usize = plans.iter().map(Vec::len).sum();
    let mut tasks = Vec::new();
    for (me, plan) in enrolled.into_iter().zip(plans) {
        let period = (args.rate > 0 && !plan.is_empty()).then(|| {
            Duration::from_secs_f64(planned as f64 / (f64::from(args.rate) * plan.len() as f64))
        });
        let phone = Arc::new(Phone {
            token: me.token,
            plan,
            received: Mutex::new(HashSet::new()),
            news: Notify::new(),
        });
        tasks.push(tokio::spawn(push_loop(
            server.addr.clone(),
            phone.clone(),
            measure.clone(),
            period,
            args.batch,
        )));
        tasks.push(tokio::spawn(pull_loop(
            server.addr.clone(),
            phone,
            measure.clone(),
        )));
    }

    tokio::time::sleep_until(measure.start.into()).await;
    let cpu_start = server.cpu()?;
    let me_start = crate::cpu_time("/proc/self/stat")?;
    let commits_start = server.metric("handoff_feed_commits_total").await?;
    let committed_start = server
        .metric("handoff_feed_changes_committed_total")
        .await?;
    tokio::time::sleep_until(measure.end.into()).await;
    let cpu = server.cpu()?.saturating_sub(cpu_start);
    let me_cpu = crate::cpu_time("/proc/self/stat")?.saturating_sub(me_start);
    let commits = server.metric("handoff_feed_commits_total").await? - commits_start;
    let per_commit = (server
        .metric("handoff_feed_changes_committed_total")
        .await?
        - committed_start)
        / commits.max(1.0);
    measure.writing.store(false, Ordering::Relaxed);
    // Let the last edits of the window reach another device.
    let drain = Instant::now() + Duration::from_secs(10);
    while Instant::now() < drain && measure.unseen().values().any(|t| measure.in_window(*t)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in &tasks {
        t.abort();
    }
    let unseen = measure
        .unseen()
        .values()
        .filter(|t| measure.in_window(**t))
        .count();

    let mut s = std::mem::take(&mut *measure.samples());
    s.seen_us.sort_unstable();
    s.ack_us.sort_unstable();
    let rate = s.acked as f64 / args.seconds;
    let cpu_per_edit_us = if s.acked > 0 {
        cpu.as_secs_f64() * 1e6 / s.acked as f64
    } else {
        0.0
    };
    let refused: u64 = s.refused.values().sum();
    let mut text = format!(
        "edits: {devices} devices ({managers} managers), {mode}, batch ≤ {batch}, {secs} s measured\n\
         acked edits/s        {rate:.0}\n\
         relay CPU per edit   {cpu_per_edit_us:.1} µs ({cpu:.2} s over the window)\n\
         made → other device  p50 {p50:.2} ms   p99 {p99:.2} ms   ({n} edits; {unseen} not seen)\n\
         made → acked         p50 {a50:.2} ms   p99 {a99:.2} ms\n\
         pushes {pushes}, pulls {pulls}, feed commits {commits:.0} ({per_commit:.1} edits each), refused {refused}, errors {errors}\n\
         load generator CPU   {me:.2} s (planning {planned} edits took {planning:.1} s before the clock started)",
        devices = args.devices,
        managers = args.managers,
        mode = if args.rate == 0 {
            "closed loop".to_string()
        } else {
            format!("{} edits/s offered", args.rate)
        },
        batch = args.batch,
        secs = args.seconds,
        cpu = cpu.as_secs_f64(),
        p50 = ms(percentile(&s.seen_us, 50.0)),
        p99 = ms(percentile(&s.seen_us, 99.0)),
        n = s.seen_us.len(),
        a50 = ms(percentile(&s.ack_us, 50.0)),
        a99 = ms(percentile(&s.ack_us, 99.0)),
        pushes = s.pushes,
        pulls = s.pulls,
        errors = s.errors.len(),
        me = me_cpu.as_secs_f64(),
        planned = args.edits,
        planning = planning.as_secs_f64(),
    );
    for (why, n) in &s.refused {
        text.push_str(&format!("\n  refused ×{n}: {why}"));
    }
    for e in s.errors.iter().take(5) {
        text.push_str(&format!("\n  error: {e}"));
    }
    let json = serde_json::json!({
        "workload": "edits",
        "devices": args.devices,
        "managers": args.managers,
        "rate_offered": args.rate,
        "batch": args.batch,
        "seconds": args.seconds,
        "acked": s.acked,
        "acked_per_s": rate,
        "relay_cpu_us_per_edit": cpu_per_edit_us,
        "seen_p50_ms": ms(percentile(&s.seen_us, 50.0)),
        "seen_p99_ms": ms(percentile(&s.seen_us, 99.0)),
        "seen": s.seen_us.len(),
        "unseen": unseen,
        "ack_p50_ms": ms(percentile(&s.ack_us, 50.0)),
        "ack_p99_ms": ms(percentile(&s.ack_us, 99.0)),
        "pushes": s.pushes,
        "pulls": s.pulls,
        "feed_commits": commits,
        "edits_per_commit": per_commit,
        "refused": refused,
        "errors": s.errors.len(),
        "load_generator_cpu_s": me_cpu.as_secs_f64(),
    });
    Ok(Report { text, json })
}

/// Push the device's planned edits in order: paced by `period` (or as fast
/// as pushes are acknowledged), each only once the device has pulled what
/// it builds on.
async fn push_loop(
    addr: String,
    phone: Arc<Phone>,
    measure: Arc<Measure>,
    period: Option<Duration>,
    batch: usize,
) {
    let mut conn = Conn::new(&addr);
    let mut next = 0;
    let mut due = Instant::now();
    while measure.writing.load(Ordering::Relaxed) {
        let mut outbox: Vec<(usize, Instant)> = Vec::new();
        let mut waiting_on_others = false;
        while outbox.len() < batch && next < phone.plan.len() {
            let now = Instant::now();
            if period.is_some() && due > now {
                break;
            }
            if !phone.has_received(&phone.plan[next].needs) {
                waiting_on_others = true;
                due = due.max(now);
                break;
            }
            // Paced, an edit made late is timed from when it was due.
            outbox.push((next, if period.is_some() { due } else { now }));
            next += 1;
            if let Some(p) = period {
                due += p;
            }
        }
        if outbox.is_empty() {
            if next == phone.plan.len() {
                if Instant::now() < measure.end {
                    measure.error("a device ran out of planned edits: raise --edits".into());
                }
                return;
            }
            let wake = if period.is_some() && !waiting_on_others {
                due
            } else {
                Instant::now() + Duration::from_millis(100)
            };
            tokio::select! {
                () = phone.news.notified() => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            continue;
        }
        {
            let mut unseen = measure.unseen();
            for (i, made) in &outbox {
                unseen.insert(phone.plan[*i].id, *made);
            }
        }
        let body = wire::encode(&PushRequest {
            changes: outbox
                .iter()
                .map(|(i, _)| phone.plan[*i].change.clone())
                .collect(),
        });
        let reply = conn
            .request(
                "POST",
                "/v1/push",
                Some(&phone.token),
                wire::CONTENT_TYPE,
                &body,
            )
            .await;
        let acked_at = Instant::now();
        let verdicts = match reply {
            Ok(r) if r.status == 200 => match wire::decode::<PushReply>(&r.body) {
                Ok(p) => p.verdicts,
                Err(e) => return measure.error(format!("push reply: {e}")),
            },
            Ok(r) => {
                return measure.error(format!(
                    "push: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ))
            }
            Err(e) => return measure.error(format!("push: {e}")),
        };
        let mut s = measure.samples();
        s.pushes += 1;
        for ((_, made), verdict) in outbox.iter().zip(verdicts) {
            match verdict {
                Verdict::Stored | Verdict::Duplicate => {
                    if measure.in_window(acked_at) {
                        s.acked += 1;
                    }
                    if measure.in_window(*made) {
                        s.ack_us
                            .push(acked_at.duration_since(*made).as_micros() as u64);
                    }
                }
                Verdict::Refused { code, reason } => {
                    *s.refused
                        .entry(format!("{}: {reason}", code.as_str()))
                        .or_default() += 1;
                }
            }
        }
    }
}

/// Long-poll the relay; note what arrives, and when.
async fn pull_loop(addr: String, phone: Arc<Phone>, measure: Arc<Measure>) {
    let mut conn = Conn::new(&addr);
    let mut cursor = 0u64;
    loop {
        let path = format!("/v1/pull?cursor={cursor}&wait=5");
        let reply = match conn
            .request("GET", &path, Some(&phone.token), "", &[])
            .await
        {
            Ok(r) if r.status == 200 => r,
            Ok(r) => return measure.error(format!("pull: {}", r.status)),
            Err(e) => return measure.error(format!("pull: {e}")),
        };
        let got_at = Instant::now();
        let Ok(page) = wire::decode::<PullReply>(&reply.body) else {
            return measure.error("pull reply does not decode".into());
        };
        let ids: Vec<u64> = page
            .changes
            .iter()
            .filter(|c| c.doc != TEAM_DOC)
            .map(|c| fingerprint(&c.bytes))
            .collect();
        let made: Vec<Instant> = {
            let mut unseen = measure.unseen();
            ids.iter().filter_map(|id| unseen.remove(id)).collect()
        };
        {
            let mut s = measure.samples();
            s.pulls += 1;
            for m in made.into_iter().filter(|m| measure.in_window(*m)) {
                s.seen_us.push(got_at.duration_since(m).as_micros() as u64);
            }
        }
        phone
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ids);
        cursor = page.cursor;
        phone.news.notify_one();
    }
}

/// Names an edit for timing and gating: cheaper than parsing the change.
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}
