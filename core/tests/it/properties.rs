//! Convergence: replicas that act while partitioned, then exchange their
//! changes in any order with duplicates, end with the same state and views.
//! The manager also changes staff's roles meanwhile: what a role allows is
//! judged when an event is written, so no replica derives differently for
//! having heard of a role change earlier or later. He may also hire
//! someone, whom replicas that have not heard of her yet refuse to hand
//! work to: when they hear, they derive those tasks again.

use std::sync::OnceLock;

use handoff_core::*;
use proptest::prelude::*;

use crate::clinic::*;

const USERS: [&str; 5] = ["max", "lee", "ana", "fay", "fred"];
/// Who work may be handed to: the users above, and nia, whom the manager
/// may hire during the partition. Replicas that have not heard of her yet
/// refuse what names her, until the team's change reaches them.
const ASSIGNEES: [&str; 6] = ["max", "lee", "ana", "fay", "fred", "nia"];

/// Team set up once; each case starts from copies of these files.
fn template() -> &'static tempfile::TempDir {
    static T: OnceLock<tempfile::TempDir> = OnceLock::new();
    T.get_or_init(|| {
        let c = Clinic::with(&USERS);
        let Clinic { dir, devices, .. } = c;
        drop(devices); // closes the files, checkpointing their WAL
        dir
    })
}

#[derive(Debug, Clone)]
enum Op {
    Delegate {
        assignee: Option<usize>,
        clinician_only: bool,
    },
    Assign {
        to: usize,
    },
    Claim,
    Acknowledge,
    Start,
    Tick(u32),
    LogCall(CallOutcome),
    Comment,
    Submit,
    Approve,
    Return,
    Complete,
    Cancel,
    Escalate,
    /// Remove the patient's details (a new document generation).
    Redact,
    /// A partial sync between two replicas while the rest stay apart.
    Deliver {
        to: usize,
    },
    /// The manager gives a member another role (never max: he manages).
    SetRole {
        who: usize,
        role: Role,
    },
    /// The manager adds nia to the team.
    Hire,
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        Just(CallOutcome::Reached),
        Just(CallOutcome::NoAnswer),
        Just(CallOutcome::Voicemail),
        Just(CallOutcome::Busy),
    ];
    prop_oneof![
        3 => (proptest::option::of(0..6usize), proptest::bool::weighted(0.2))
            .prop_map(|(assignee, clinician_only)| Op::Delegate { assignee, clinician_only }),
        1 => (0..6usize).prop_map(|to| Op::Assign { to }),
        2 => Just(Op::Claim),
        1 => Just(Op::Acknowledge),
        1 => Just(Op::Start),
        1 => (0..4u32).prop_map(Op::Tick),
        3 => outcome.prop_map(Op::LogCall),
        1 => Just(Op::Comment),
        2 => Just(Op::Submit),
        2 => Just(Op::Approve),
        1 => Just(Op::Return),
        1 => Just(Op::Complete),
        1 => Just(Op::Cancel),
        1 => Just(Op::Escalate),
        2 => Just(Op::Redact),
        2 => (0..5usize).prop_map(|to| Op::Deliver { to }),
        1 => (
            1..5usize,
            prop_oneof![
                Just(Role::Clinician),
                Just(Role::ClinicalAssistant),
                Just(Role::FrontDesk),
            ]
        )
            .prop_map(|(who, role)| Op::SetRole { who, role }),
        1 => Just(Op::Hire),
    ]
}

fn run_case(replicas: usize, steps: &[(usize, usize, Op)], delivery_seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(MONDAY_9AM);
    let stores: Vec<Store> = (0..replicas)
        .map(|i| {
            let name = format!("{i}-{}.db", USERS[i]);
            std::fs::copy(template().path().join(&name), dir.path().join(&name)).unwrap();
            Store::open(dir.path().join(&name), &KEY, options(&clock)).unwrap()
        })
        .collect();
    let mut tasks: Vec<TaskId> = Vec::new();
    for (who, task, op) in steps {
        let s = &stores[who % replicas];
        clock.advance(7_000);
        let task = tasks
            .get(task % tasks.len().max(1))
            .cloned()
            .unwrap_or_default();
        // Refusals and unknown tasks are expected: the point is what converges.
        let _ = match op {
            Op::Delegate {
                assignee,
                clinician_only,
            } => {
                let level = if *clinician_only {
                    DelegationLevel::ClinicianOnly
                } else {
                    DelegationLevel::Delegable
                };
                let new = match assignee {
                    Some(a) => task_for(ASSIGNEES[*a], level),
                    None => NewTask {
                        handoff: handoff("Pooled", level),
                        ..pooled(Role::FrontDesk)
                    },
                };
                if let Ok(id) = s.delegate(new) {
                    tasks.push(id);
                }
                continue;
            }
            Op::Assign { to } => s.assign(&task, ASSIGNEES[*to]),
            Op::Claim => s.claim(&task),
            Op::Acknowledge => s.acknowledge(&task, "ok"),
            Op::Start => s.start(&task),
            Op::Tick(i) => s.tick_checklist_item(&task, *i),
            Op::LogCall(o) => s.log_call(&task, call(*o)),
            Op::Comment => s.comment(&task, "note"),
            Op::Submit => s.submit(&task, ""),
            Op::Approve => s.approve(&task, ""),
            Op::Return => s.return_work(&task, "again"),
            Op::Complete => s.complete(&task, ""),
            Op::Cancel => s.cancel(&task, "no longer needed"),
            Op::Escalate => s.escalate(&task, "patient upset"),
            Op::Redact => {
                let _ = s.redact_patient(&task);
                continue;
            }
            Op::Deliver { to } => {
                stores[to % replicas].apply_remote(&outbox(s)).unwrap();
                continue;
            }
            Op::SetRole { who, role } => {
                let &(id, name, _, trusted) = STAFF.iter().find(|m| m.0 == USERS[*who]).unwrap();
                stores[0]
                    .put_member(&Member {
                        user_id: id.into(),
                        name: name.into(),
                        role: *role,
                        trusted,
                        active: true,
                    })
                    .unwrap();
                continue;
            }
            Op::Hire => {
                stores[0].put_member(&nia(Role::ClinicalAssistant)).unwrap();
                continue;
            }
        };
    }

    // The partition heals: each replica gets everyone's changes, shuffled,
    // with duplicates, in uneven batches. Twice: a replica that moves a
    // redacted task to its newer document writes the events the redaction
    // missed as new changes, which the others then need.
    let mut rng = delivery_seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _round in 0..2 {
        let everything: Vec<(String, Vec<u8>)> = stores.iter().flat_map(outbox).collect();
        for s in &stores {
            let mut batch: Vec<_> = everything
                .iter()
                .chain(everything.iter().take(5))
                .cloned()
                .collect();
            for i in (1..batch.len()).rev() {
                batch.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let mut rest = &batch[..];
            while !rest.is_empty() {
                let n = (1 + next() % 7) as usize;
                let (now, later) = rest.split_at(n.min(rest.len()));
                s.apply_remote(now).unwrap();
                rest = later;
            }
        }
    }

    let first = &stores[0];
    let ids = first.task_ids().unwrap();
    for s in &stores[1..] {
        assert_eq!(s.task_ids().unwrap(), ids);
        for t in &ids {
            // Everything but the commands offered, which are per user.
            let shared = |d: TaskDetail| TaskDetail {
                available: Vec::new(),
                ..d
            };
            assert_eq!(
                shared(s.task_detail(t).unwrap()),
                shared(first.task_detail(t).unwrap())
            );
        }
        assert_eq!(s.queue_of("nia").unwrap(), first.queue_of("nia").unwrap());
        for u in &USERS[..replicas] {
            assert_eq!(s.queue_of(u).unwrap(), first.queue_of(u).unwrap());
            assert_eq!(s.attention_of(u).unwrap(), first.attention_of(u).unwrap());
        }
        for role in Role::ALL {
            assert_eq!(s.pool_of(role).unwrap(), first.pool_of(role).unwrap());
        }
        assert_eq!(
            s.kpis(0, MONDAY_9AM + 30 * DAY_MS).unwrap(),
            first.kpis(0, MONDAY_9AM + 30 * DAY_MS).unwrap()
        );
    }
    // Reviewers (max; lee, while the manager left her a reviewing role)
    // see the same inbox.
    let lee_reviews = first.team().unwrap().permissions("lee").may_review;
    if lee_reviews {
        assert_eq!(
            stores[0].review_inbox().unwrap(),
            stores[1].review_inbox().unwrap()
        );
    } else {
        assert!(stores[1].review_inbox().unwrap().is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn partitioned_replicas_converge_to_the_same_state_and_views(
        replicas in 3..=5usize,
        steps in proptest::collection::vec((0..5usize, 0..8usize, op()), 1..40),
        seed in 1..u64::MAX,
    ) {
        run_case(replicas, &steps, seed);
    }
}
