//! Kill a writer with SIGKILL at random moments, 1,000 times. After each
//! kill the store opens, every write whose call had returned is there, and
//! nothing is there by half: each task in the index has its document and
//! each write its outbox entry.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handoff_core::*;
use handoff_tests::TEST_KEY;
use rand::Rng;

const KILLS: usize = 1000;

#[test]
fn a_writer_killed_at_random_moments_never_loses_an_acknowledged_write_nor_leaves_half_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    {
        let s = Store::open(&path, &TEST_KEY, StoreOptions::default()).unwrap();
        s.create_team(
            "Crash Clinic",
            Member {
                user_id: "max".into(),
                name: "Max".into(),
                role: Role::Manager,
                trusted: true,
                active: true,
            },
        )
        .unwrap();
    }
    let setup_changes = {
        let s = Store::open(&path, &TEST_KEY, StoreOptions::default()).unwrap();
        s.outbox(1 << 20).unwrap().len()
    };

    let mut rng = rand::rng();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new(); // n -> task
    let mut next: u64 = 0;
    let mut task_of_prev = String::new();
    let mut killed_before_first_ack = 0;
    for round in 0..KILLS {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crash-writer"));
        cmd.arg(&path).arg(next.to_string());
        if next % 2 == 1 {
            cmd.arg(&task_of_prev);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill after a random number of acknowledged writes (often zero, to
        // land inside opening or the first write), or a random few hundred µs.
        let want_acks = rng.random_range(0..4u32);
        let extra = Duration::from_micros(rng.random_range(0..1500));
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while got < want_acks {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            record(&line, &mut acked);
            got += 1;
            assert!(Instant::now() < deadline, "writer made no progress");
        }
        std::thread::sleep(extra);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // Whatever it acknowledged before dying is still in the pipe.
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            record(&line, &mut acked);
        }
        if got == 0 {
            killed_before_first_ack += 1;
        }
        if status.success() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("writer exited on its own in round {round}: {err}");
        }

        // The store opens and holds every acknowledged write, whole.
        let s = Store::open(&path, &TEST_KEY, StoreOptions::default()).unwrap();
        let q = s.queue_of("max").unwrap();
        let tasks: Vec<&TaskSummary> = q
            .overdue
            .iter()
            .chain(&q.today)
            .chain(&q.upcoming)
            .collect();
        let by_title: BTreeMap<&str, &TaskSummary> =
            tasks.iter().map(|t| (t.title.as_str(), *t)).collect();
        for (n, task) in &acked {
            if n.is_multiple_of(2) {
                let t = by_title.get(format!("w{n}").as_str());
                assert_eq!(
                    t.map(|t| &t.task_id),
                    Some(task),
                    "acknowledged task w{n} lost in round {round}"
                );
            } else {
                let t = by_title
                    .get(format!("w{}", n - 1).as_str())
                    .expect("task of an acknowledged call");
                assert_eq!(
                    t.call_attempts, 1,
                    "acknowledged call w{n} lost in round {round}"
                );
            }
        }
        let calls: usize = tasks.iter().map(|t| t.call_attempts as usize).sum();
        assert_eq!(
            s.outbox(1 << 20).unwrap().len(),
            setup_changes + tasks.len() + calls,
            "index and outbox disagree in round {round}"
        );
        // The newest task's document agrees with its index row.
        let newest = tasks
            .iter()
            .max_by_key(|t| t.title[1..].parse::<u64>().unwrap());
        if let Some(t) = newest {
            let d = s.task_detail(&t.task_id).unwrap();
            assert_eq!(d.state.calls.len() as u32, t.call_attempts);
            assert_eq!(d.state.handoff.title, t.title);
        }
        // Continue after the last write that made it, acknowledged or not.
        match newest {
            Some(t) if t.call_attempts == 0 => {
                next = t.title[1..].parse::<u64>().unwrap() + 1;
                task_of_prev = t.task_id.clone();
            }
            Some(t) => next = t.title[1..].parse::<u64>().unwrap() + 2,
            None => next = 0,
        }
    }
    eprintln!(
        "{KILLS} kills, {} acknowledged writes, {killed_before_first_ack} kills before the first ack",
        acked.len()
    );
}

fn record(line: &str, acked: &mut BTreeMap<u64, String>) {
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("ack"), "unexpected output: {line:?}");
    let n = parts.next().unwrap().parse().unwrap();
    let task = parts.next().unwrap().to_owned();
    acked.insert(n, task);
}
