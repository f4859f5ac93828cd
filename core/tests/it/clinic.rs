//! A small clinic of devices for tests: real stores on real (temporary)
//! SQLite files, sharing one hand-set clock, syncing by handing each other
//! their outboxes.

use handoff_core::*;
use tempfile::TempDir;

pub const KEY: [u8; 32] = [7; 32];
/// 2026-03-02 09:00 UTC, a Monday morning.
pub const MONDAY_9AM: Timestamp = 1_772_442_000_000;

pub struct Clinic {
    pub dir: TempDir,
    pub clock: ManualClock,
    pub devices: Vec<(String, Store)>,
}

/// (user id, name, role, trusted)
pub const STAFF: &[(&str, &str, Role, bool)] = &[
    ("max", "Max Ortiz", Role::Manager, false),
    ("lee", "Dr. Lee", Role::Clinician, false),
    ("ana", "Ana Ruiz", Role::ClinicalAssistant, false),
    ("tom", "Tom Chen", Role::ClinicalAssistant, true),
    ("fay", "Fay Obi", Role::FrontDesk, false),
    ("fred", "Fred Kim", Role::FrontDesk, false),
];

pub fn options(clock: &ManualClock) -> StoreOptions {
    StoreOptions {
        durability: Durability::Normal,
        utc_offset_minutes: 0,
        clock: std::sync::Arc::new(clock.clone()),
        ..StoreOptions::default()
    }
}

impl Clinic {
    /// One device for each of `users` (the first must be "max", who sets up
    /// the team), everyone enrolled and the team document everywhere.
    pub fn with(users: &[&str]) -> Clinic {
        assert_eq!(users[0], "max");
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::at(MONDAY_9AM);
        let devices: Vec<(String, Store)> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let path = dir.path().join(format!("{i}-{u}.db"));
                let store = Store::open(path, &KEY, options(&clock)).expect("open store");
                (u.to_string(), store)
            })
            .collect();
        let admin = &devices[0].1;
        let member = |u: &str| {
            let &(id, name, role, trusted) = STAFF.iter().find(|s| s.0 == u).expect("known staff");
            Member {
                user_id: id.into(),
                name: name.into(),
                role,
                trusted,
                active: true,
            }
        };
        admin
            .create_team("Riverside Family Practice", member("max"))
            .expect("create team");
        for &(id, ..) in STAFF.iter().skip(1) {
            admin.put_member(&member(id)).expect("add member");
        }
        for (u, store) in devices.iter().skip(1) {
            admin
                .register_device(&store.device_actor(), u)
                .expect("register device");
            store.set_enrolled_user(u).expect("enrol");
        }
        admin
            .put_sop(&SopTemplate {
                id: "CLN-003".into(),
                name: "Follow-Up Call SOP CLN-003".into(),
                checklist: vec![
                    "Verify identity".into(),
                    "Ask recovery questions".into(),
                    "Document status".into(),
                ],
                questions: vec!["Any fever since the procedure?".into(), "Pain 0-10?".into()],
            })
            .expect("add sop");
        let clinic = Clinic {
            dir,
            clock,
            devices,
        };
        clinic.sync();
        clinic
    }

    pub fn at(&self, user: &str) -> &Store {
        &self
            .devices
            .iter()
            .find(|(u, _)| u == user)
            .expect("device")
            .1
    }

    /// Every device gets every other device's changes.
    /// The task as `user`'s device derives it now.
    pub fn state(&self, user: &str, task: &str) -> TaskState {
        self.at(user).task_detail(task).unwrap().state
    }

    pub fn sync(&self) {
        let all: Vec<Vec<(String, Vec<u8>)>> =
            self.devices.iter().map(|(_, s)| outbox(s)).collect();
        for (i, (_, store)) in self.devices.iter().enumerate() {
            let incoming: Vec<_> = all
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, c)| c.iter().cloned())
                .collect();
            store.apply_remote(&incoming).expect("apply remote");
        }
    }

    /// max hands `user` a delegable task, and every device hears of it.
    pub fn handed_to(&self, user: &str) -> TaskId {
        let task = self
            .at("max")
            .delegate(task_for(user, DelegationLevel::Delegable))
            .expect("delegate");
        self.sync();
        task
    }

    /// One device hands its changes to another.
    pub fn send(&self, from: &str, to: &str) {
        self.at(to)
            .apply_remote(&outbox(self.at(from)))
            .expect("apply remote");
    }
}

/// A raw connection to a store file, keyed as the store keys it.
pub fn raw(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
        hex::encode(KEY)
    ))
    .unwrap();
    conn
}

pub fn outbox(s: &Store) -> Vec<(String, Vec<u8>)> {
    s.outbox(usize::MAX >> 1)
        .expect("outbox")
        .into_iter()
        .map(|c| (c.doc_id, c.bytes))
        .collect()
}

pub fn handoff(title: &str, level: DelegationLevel) -> Handoff {
    Handoff {
        title: title.into(),
        outcome: "Contact all post-treatment patients within 48 hours and document recovery status"
            .into(),
        why: "Early complications are caught on the phone, not in the ER".into(),
        due: Some(MONDAY_9AM + 8 * HOUR_MS),
        priority: Priority::High,
        category: Category::FollowUpCall,
        level,
        sop: Some("CLN-003".into()),
        route_result_to: None,
    }
}

pub fn task_for(assignee: &str, level: DelegationLevel) -> NewTask {
    NewTask {
        handoff: handoff("Post-op follow-up call", level),
        patient: Some(PatientRef {
            display_name: "Jordan Quill".into(),
            phone: Some("555-0142".into()),
            record_ref: Some("MRN-88231".into()),
        }),
        assignee: Some(assignee.into()),
        pool: None,
    }
}

pub fn pooled(role: Role) -> NewTask {
    NewTask {
        handoff: Handoff {
            category: Category::Scheduling,
            sop: None,
            ..handoff("Book the 6-week check", DelegationLevel::Delegable)
        },
        patient: None,
        assignee: None,
        pool: Some(role),
    }
}

pub fn call(outcome: CallOutcome) -> CallAttempt {
    CallAttempt {
        outcome,
        contact_used: Some("mobile".into()),
        notes: "Spoke about wound care".into(),
        answers: vec![ScriptAnswer {
            question: "Pain 0-10?".into(),
            answer: "3".into(),
        }],
        next_attempt_due: match outcome {
            CallOutcome::Reached => None,
            _ => Some(MONDAY_9AM + 4 * HOUR_MS),
        },
    }
}

pub fn refusal<T: std::fmt::Debug>(r: Result<T, Error>) -> Refusal {
    match r {
        Err(Error::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Nia Park, hired after the clinic was set up, in `role`.
pub fn nia(role: Role) -> Member {
    Member {
        user_id: "nia".into(),
        name: "Nia Park".into(),
        role,
        trusted: false,
        active: true,
    }
}
