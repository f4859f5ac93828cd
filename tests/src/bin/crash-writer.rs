//! Writes to a Handoff store in a loop, printing `ack <n> <task>` after each
//! write call has returned. The crash test kills it at random moments.
//!
//! Usage: `crash-writer <store path> <first n> [<task for an odd first n>]`
//! Even n: delegate a new task titled `w<n>`; odd n: log a call with notes
//! `w<n>` on the task of n-1.

use std::io::Write;

use handoff_core::*;
use handoff_tests::TEST_KEY;

fn main() {
    if let Err(e) = run() {
        eprintln!("crash-writer: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("missing store path")?;
    let mut n: u64 = args.next().ok_or("missing first n")?.parse()?;
    let mut task = args.next().unwrap_or_default();
    let store = Store::open(&path, &TEST_KEY, StoreOptions::default())?;
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let title = format!("w{n}");
        if n.is_multiple_of(2) {
            task = store.delegate(NewTask {
                handoff: Handoff {
                    title,
                    outcome: "crash test".into(),
                    why: String::new(),
                    due: None,
                    priority: Priority::Normal,
                    category: Category::FollowUpCall,
                    level: DelegationLevel::Delegable,
                    sop: None,
                    route_result_to: None,
                },
                patient: None,
                assignee: Some("max".into()),
                pool: None,
            })?;
        } else {
            store.log_call(
                &task,
                CallAttempt {
                    outcome: CallOutcome::NoAnswer,
                    contact_used: None,
                    notes: title,
                    answers: Vec::new(),
                    next_attempt_due: None,
                },
            )?;
        }
        writeln!(out, "ack {n} {task}")?;
        out.flush()?;
        n += 1;
    }
}
