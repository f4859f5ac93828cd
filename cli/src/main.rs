#![doc = include_str!("../README.md")]

use std::sync::Arc;

use handoff_core::*;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => {
            if let Err(e) = demo() {
                eprintln!("handoff: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: handoff demo");
            std::process::exit(2);
        }
    }
}

fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::at(SystemClock.now());
    let open = |name: &str| {
        let mut key = [0u8; 32];
        key[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
        Store::open(
            dir.path().join(format!("{name}.db")),
            &key,
            StoreOptions {
                clock: Arc::new(clock.clone()),
                ..StoreOptions::default()
            },
        )
    };
    let (max, ana, fay) = (open("max")?, open("ana")?, open("fay")?);
    let member = |id: &str, name: &str, role| Member {
        user_id: id.into(),
        name: name.into(),
        role,
        trusted: false,
        active: true,
    };
    max.create_team(
        "Riverside Family Practice",
        member("max", "Max (manager)", Role::Manager),
    )?;
    max.put_member(&member("ana", "Ana (assistant)", Role::ClinicalAssistant))?;
    max.put_member(&member("fay", "Fay (front desk)", Role::FrontDesk))?;
    for (store, user) in [(&ana, "ana"), (&fay, "fay")] {
        max.register_device(&store.device_actor(), user)?;
        store.set_enrolled_user(user)?;
    }
    sync(&[&max, &ana, &fay])?;
    println!("Three phones enrolled. Everyone goes offline.\n");

    let follow_up = max.delegate(NewTask {
        handoff: Handoff {
            title: "Post-op follow-up call".into(),
            outcome: "Reach the patient within 48 h and document recovery status".into(),
            why: "Complications caught early".into(),
            due: Some(clock.now() + 4 * HOUR_MS),
            priority: Priority::High,
            category: Category::FollowUpCall,
            level: DelegationLevel::Delegable,
            sop: None,
            route_result_to: None,
        },
        patient: Some(PatientRef {
            display_name: "(demo patient)".into(),
            phone: None,
            record_ref: None,
        }),
        assignee: Some("ana".into()),
        pool: None,
    })?;
    let booking = max.delegate(NewTask {
        handoff: Handoff {
            title: "Book the 6-week check".into(),
            outcome: "Appointment booked".into(),
            why: String::new(),
            due: None,
            priority: Priority::Normal,
            category: Category::Scheduling,
            level: DelegationLevel::Delegable,
            sop: None,
            route_result_to: None,
        },
        patient: None,
        assignee: None,
        pool: Some(Role::FrontDesk),
    })?;
    println!(
        "max (offline): delegated a follow-up call to ana and a booking to the front-desk pool"
    );
    sync(&[&max, &ana, &fay])?;
    clock.advance(60_000);
    ana.log_call(&follow_up, attempt(CallOutcome::NoAnswer))?;
    clock.advance(60_000);
    ana.log_call(&follow_up, attempt(CallOutcome::Reached))?;
    ana.submit(&follow_up, "Reached on second attempt")?;
    println!("ana (basement, no signal): logged two calls and submitted for review");
    fay.claim(&booking)?;
    println!("fay (offline): claimed the booking");
    max.assign(&booking, "ana")?;
    println!("max (offline, at the same time): assigned the booking to ana\n");

    let report = sync(&[&max, &ana, &fay])?;
    println!("Signal is back: {report} changes exchanged.\n");
    max.approve(&follow_up, "Thanks")?;
    sync(&[&max, &ana, &fay])?;

    for (name, store) in [("max", &max), ("ana", &ana), ("fay", &fay)] {
        let q = store.my_queue()?;
        let d = store.task_detail(&follow_up)?;
        println!(
            "{name:>4}: follow-up is {:?} ({} calls); booking is with {:?}; my queue: {} today, {} upcoming; needs attention: {:?}",
            d.state.status,
            d.state.calls.len(),
            store.task_detail(&booking)?.state.assignee.unwrap_or_default(),
            q.today.len(),
            q.upcoming.len(),
            store
                .needs_attention()?
                .iter()
                .map(|a| a.reason.as_str())
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn attempt(outcome: CallOutcome) -> CallAttempt {
    CallAttempt {
        outcome,
        contact_used: None,
        notes: String::new(),
        answers: Vec::new(),
        next_attempt_due: None,
    }
}

/// Stand-in for the relay: every device gets every other device's changes.
fn sync(stores: &[&Store]) -> Result<usize, Error> {
    let outboxes = stores
        .iter()
        .map(|s| {
            s.outbox(usize::MAX >> 1).map(|o| {
                o.into_iter()
                    .map(|c| (c.doc_id, c.bytes))
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut applied = 0;
    for (i, s) in stores.iter().enumerate() {
        let incoming: Vec<_> = outboxes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, o)| o.iter().cloned())
            .collect();
        applied += s.apply_remote(&incoming)?.applied;
    }
    Ok(applied)
}
