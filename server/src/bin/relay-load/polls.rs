//! The `long-polls` workload: front-desk phones of one or more clinics all
//! wait on `/v1/pull`; a manager of the first clinic puts a new task in the
//! front desk's pool, which every front-desk phone of that clinic may read,
//! so each of them wakes. Measures the relay's memory with every poll
//! waiting and, per wake-up, the time from the manager's push to each
//! phone's reply.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_core::event::{Action, Event};
use handoff_core::sync::wire::{self, DocChange, PullReply, PushReply, PushRequest, Verdict};
use handoff_core::task_doc;
use handoff_core::{Category, DelegationLevel, Handoff, Priority, Role};
use handoff_server::relay::{now_ms, random_hex};
use tokio::sync::{mpsc, Semaphore};

use crate::http::Conn;
use crate::{ms, percentile, Enrolled, Report, Result, Server};

#[derive(clap::Args)]
pub struct Args {
    /// Front-desk phones waiting on the relay at once.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Clinics they are spread over (each with one manager); new tasks land
    /// in the first clinic only.
    #[arg(long, default_value_t = 1)]
    teams: usize,
    /// New tasks landed one after another, each a wake-up measured.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Enrolments, and connections being opened, at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
}

/// One phone's reply: which phone, when, how many changes it carried.
type Woke = (usize, Instant, usize);

pub async fn run(bin: &Path, args: Args) -> Result<Report> {
    if args.teams == 0 || args.devices < args.teams || args.rounds == 0 {
        return Err("need --teams ≥ 1, at least one device per team, and --rounds ≥ 1".into());
    }
    let per_team = args.devices / args.teams;
    let mut invites: Vec<Vec<String>> = Vec::new();
    let setup = Instant::now();
    let server = Server::start(bin, |db| {
        for t in 0..args.teams {
            let mut people = vec![(format!("manager-{t}"), Role::Manager)];
            let n = if t + 1 == args.teams {
                args.devices - per_team * (args.teams - 1)
            } else {
                per_team
            };
            people.extend((0..n).map(|i| (format!("desk-{t}-{i}"), Role::FrontDesk)));
            invites.push(crate::make_team(db, &people)?.1);
        }
        Ok(())
    })?;
    let mut managers = Vec::new();
    let mut desks: Vec<(usize, Enrolled)> = Vec::new();
    for (t, codes) in invites.into_iter().enumerate() {
        let mut team = crate::enrol_all(&server.addr, codes, args.parallel).await?;
        desks.extend(team.drain(1..).map(|e| (t, e)));
        managers.extend(team);
    }
    let enrolled_in = setup.elapsed();
    let (rss_idle, _) = server.memory_kib()?;

    // Each clinic's feed head: its phones wait from there (a real phone
    // would first pull the team document; that is not what is measured).
    let mut heads = Vec::new();
    for m in &managers {
        heads.push(catch_up(&server.addr, &m.token).await?);
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Woke>();
    let opening = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut pollers = Vec::new();
    for (i, (t, d)) in desks.iter().enumerate() {
        pollers.push(tokio::spawn(poll(
            server.addr.clone(),
            d.token.clone(),
            heads[*t],
            i,
            tx.clone(),
            opening.clone(),
        )));
    }
    let woken_team: Vec<usize> = desks
        .iter()
        .enumerate()
        .filter(|(_, (t, _))| *t == 0)
        .map(|(i, _)| i)
        .collect();
    // Phones of other clinics that received anything: there must be none.
    let mut stray = wait_for_polls(&server, args.devices as i64, &mut rx).await?;
    let (rss, _) = server.memory_kib()?;

    let manager = &managers[0];
    let mut push_conn = Conn::new(&server.addr);
    let mut all = Vec::new();
    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        let change = pooled_task(manager)?;
        let body = wire::encode(&PushRequest {
            changes: vec![change],
        });
        let sent = Instant::now();
        let reply = push_conn
            .request(
                "POST",
                "/v1/push",
                Some(&manager.token),
                wire::CONTENT_TYPE,
                &body,
            )
            .await
            .map_err(|e| format!("push: {e}"))?;
        let verdicts = wire::decode::<PushReply>(&reply.body)
            .map_err(|e| format!("push reply ({}): {e}", reply.status))?
            .verdicts;
        if verdicts != [Verdict::Stored] {
            return Err(format!("the new task was not stored: {verdicts:?}"));
        }
        let mut latencies = Vec::with_capacity(woken_team.len());
        let mut woke = vec![false; desks.len()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while latencies.len() < woken_team.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((i, at, n))) if n > 0 && !woke[i] => {
                    woke[i] = true;
                    if desks[i].0 == 0 {
                        latencies.push(at.duration_since(sent).as_micros() as u64);
                    } else {
                        stray += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(format!(
                        "only {} of {} phones woke within 60 s",
                        latencies.len(),
                        woken_team.len()
                    ))
                }
            }
        }
        latencies.sort_unstable();
        rounds.push((
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            *latencies.last().unwrap_or(&0),
        ));
        all.extend(latencies);
        // Every phone waits again before the next task lands.
        stray += wait_for_polls(&server, args.devices as i64, &mut rx).await?;
    }
    let (_, peak) = server.memory_kib()?;
    for p in &pollers {
        p.abort();
    }
    all.sort_unstable();
    let (p50, p99, max) = (
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        *all.last().unwrap_or(&0),
    );
    let mut text = format!(
        "long-polls: {devices} phones waiting in {teams} clinic(s); {woken} woken per new task, {rounds_n} tasks\n\
         relay memory         {rss_mb:.1} MB resident with every poll waiting ({idle_mb:.1} MB before they connected; peak {peak_mb:.1} MB)\n\
         wake-up (push → reply)  p50 {p50:.2} ms   p99 {p99:.2} ms   max {max:.2} ms\n\
         phones of other clinics that received anything: {stray}\n\
         set-up: enrolment of {devices} phones took {enrol:.1} s",
        devices = args.devices,
        teams = args.teams,
        woken = woken_team.len(),
        rounds_n = args.rounds,
        rss_mb = rss as f64 / 1024.0,
        idle_mb = rss_idle as f64 / 1024.0,
        peak_mb = peak as f64 / 1024.0,
        p50 = ms(p50),
        p99 = ms(p99),
        max = ms(max),
        enrol = enrolled_in.as_secs_f64(),
    );
    for (i, (a, b, c)) in rounds.iter().enumerate() {
        text.push_str(&format!(
            "\n  task {}: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            i + 1,
            ms(*a),
            ms(*b),
            ms(*c)
        ));
    }
    let json = serde_json::json!({
        "workload": "long-polls",
        "devices": args.devices,
        "teams": args.teams,
        "woken_per_task": woken_team.len(),
        "rounds": args.rounds,
        "rss_mb": rss as f64 / 1024.0,
        "rss_idle_mb": rss_idle as f64 / 1024.0,
        "peak_mb": peak as f64 / 1024.0,
        "wake_p50_ms": ms(p50),
        "wake_p99_ms": ms(p99),
        "wake_max_ms": ms(max),
        "enrol_s": enrolled_in.as_secs_f64(),
        "stray_wakes": stray,
    });
    Ok(Report { text, json })
}

/// Pull everything there is; return the head cursor.
async fn catch_up(addr: &str, token: &str) -> Result<u64> {
    let mut conn = Conn::new(addr);
    let mut cursor = 0;
    loop {
        let reply = conn
            .request(
                "GET",
                &format!("/v1/pull?cursor={cursor}"),
                Some(token),
                "",
                &[],
            )
            .await
            .map_err(|e| format!("pull: {e}"))?;
        let page: PullReply =
            wire::decode(&reply.body).map_err(|e| format!("pull ({}): {e}", reply.status))?;
        cursor = page.cursor;
        if !page.more {
            return Ok(cursor);
        }
    }
}

/// One phone: long-poll from `cursor`, report every reply, poll again.
async fn poll(
    addr: String,
    token: String,
    mut cursor: u64,
    me: usize,
    woke: mpsc::UnboundedSender<Woke>,
    opening: Arc<Semaphore>,
) {
    let mut conn = Conn::new(&addr);
    // Connections are opened a few at a time, as phones come online.
    if let Ok(_permit) = opening.acquire().await {
        let _ = conn.connect().await;
    }
    loop {
        let path = format!("/v1/pull?cursor={cursor}&wait=60");
        let reply = conn.request("GET", &path, Some(&token), "", &[]).await;
        let at = Instant::now();
        let Ok(reply) = reply else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(page) = wire::decode::<PullReply>(&reply.body) else {
            return;
        };
        cursor = page.cursor;
        if woke.send((me, at, page.changes.len())).is_err() {
            return;
        }
    }
}

/// Wait until the relay reports `n` polls waiting; returns how many
/// replies that came meanwhile carried changes.
async fn wait_for_polls(
    server: &Server,
    n: i64,
    rx: &mut mpsc::UnboundedReceiver<Woke>,
) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut with_changes = 0;
    loop {
        while let Ok((_, _, changes)) = rx.try_recv() {
            with_changes += usize::from(changes > 0);
        }
        let waiting = server.waiting_long_polls().await?;
        if waiting >= n {
            while let Ok((_, _, changes)) = rx.try_recv() {
                with_changes += usize::from(changes > 0);
            }
            return Ok(with_changes);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {waiting} of {n} polls were waiting after 180 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new follow-up task in the front desk's pool, as the manager's change.
fn pooled_task(manager: &Enrolled) -> Result<DocChange> {
    let task_id = random_hex(16);
    let actor = automerge::ActorId::from(hex::decode(&manager.actor).map_err(|e| e.to_string())?);
    let mut doc = task_doc::new_doc(&task_id, 0, &actor).map_err(|e| e.to_string())?;
    let event = Event::next(
        &[],
        &manager.actor,
        &manager.user,
        now_ms(),
        Action::Created {
            handoff: Handoff {
                title: "Reminder calls for tomorrow's appointments".into(),
                outcome: "Every patient booked for tomorrow confirmed or rescheduled".into(),
                why: "No-shows cost the clinic a slot each".into(),
                due: None,
                priority: Priority::Normal,
                category: Category::Scheduling,
                level: DelegationLevel::Delegable,
                sop: None,
                route_result_to: None,
            },
            checklist: Vec::new(),
            questions: Vec::new(),
            pool: Some(Role::FrontDesk),
            assignee: None,
        },
    );
    task_doc::append(&mut doc, &event).map_err(|e| e.to_string())?;
    doc.commit();
    let change = doc
        .get_last_local_change()
        .ok_or("the new task made no change")?;
    Ok(DocChange {
        doc: task_id,
        bytes: change.raw_bytes().to_vec(),
    })
}
