//! Valid automerge changes with hostile contents, pushed by enrolled
//! phones: events that do not parse or lie about their ids, times and
//! authors, a task document laid out wrongly, values of the wrong type, and
//! from the manager's phone a team document with sections replaced, entries
//! deleted or garbled. The relay answers each one (stored, or refused with a
//! reason) and never fails; the phones that pull what it stored never fail
//! either, agree, and keep every member.
//!
//! Seeded, so a failure replays: `HANDOFF_CRAFTED_SEED=<n>` runs one seed.

use std::collections::HashMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, ScalarValue, ROOT};
use handoff_core::sync::wire::{self, PushReply, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::crafting::{add_author, forget_other_actors, name_another_actor, reframed};
use crate::harness::*;

const PUSHES: usize = 300;

const KINDS: &[&str] = &[
    "created",
    "assigned",
    "acknowledged",
    "claimed",
    "started",
    "checklist_item_done",
    "call_logged",
    "commented",
    "submitted",
    "approved",
    "returned",
    "completed",
    "cancelled",
    "escalated",
    "teleported",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Something in the place of a string, a number or a list.
fn junk(rng: &mut StdRng) -> Value {
    pick(
        rng,
        &[
            json!(null),
            json!(""),
            json!(-1),
            json!(u64::MAX),
            json!(1.5),
            json!([1, "x"]),
            json!({"k": "claimed"}),
            json!("x".repeat(300)),
        ],
    )
    .clone()
}

/// One event as JSON: mostly well formed, with ids, times, authors and
/// fields anywhere from plausible to absurd.
fn event(rng: &mut StdRng, actor: &str, seen: &[String], handoff: &Value) -> String {
    let n: u64 = *pick(rng, &[0, 1, 2, 3, 7, u64::from(u32::MAX), u64::MAX]);
    let mut deps: Vec<Value> = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        deps.push(if !seen.is_empty() && rng.random_bool(0.7) {
            json!(pick(rng, seen))
        } else {
            json!(pick(rng, &["nope", "ab:1", ":", "x:y", ""]))
        });
    }
    let kind = *pick(rng, KINDS);
    let id = if rng.random_bool(0.9) {
        json!(format!("{actor}:{n}"))
    } else {
        junk(rng)
    };
    let mut e = json!({
        "id": id,
        "deps": deps,
        "lt": pick(rng, &[json!(0), json!(1), json!(9), json!(u64::MAX), json!(-3)]),
        "at": pick(rng, &[json!(0), json!(1_772_442_000_000i64), json!(i64::MAX), json!(i64::MIN)]),
        "by": pick(rng, &["ana", "max", "fay", "", "nobody"]),
        "k": kind,
    });
    let fields = e.as_object_mut().unwrap();
    let outcome = *pick(
        rng,
        &["reached", "no_answer", "busy", "left_message", "abducted"],
    );
    match kind {
        "created" => {
            fields.insert("handoff".into(), handoff.clone());
            fields.insert("assignee".into(), json!(pick(rng, &["ana", "fay", "max"])));
            fields.insert("pool".into(), json!(null));
        }
        "assigned" => {
            fields.insert("to".into(), json!(pick(rng, &["ana", "fay", "max", ""])));
        }
        "checklist_item_done" => {
            fields.insert("item".into(), json!(pick(rng, &[0u32, 1, 99, u32::MAX])));
        }
        "call_logged" => {
            fields.insert(
                "attempt".into(),
                json!({"outcome": outcome, "notes": "spoke to the patient", "answers": [],
                       "next_attempt_due": pick(rng, &[json!(null), json!(0), json!(i64::MAX)])}),
            );
        }
        "approved" => {
            fields.insert(
                "heads".into(),
                json!(pick(
                    rng,
                    &[vec!["00".repeat(32)], vec!["zz".into()], vec![]]
                )),
            );
        }
        _ => {
            for key in ["text", "note", "feedback", "reason"] {
                fields.insert(key.into(), json!("a few words"));
            }
        }
    }
    // Now and then a field goes missing or turns into something else.
    if rng.random_bool(0.2) {
        let keys: Vec<String> = fields.keys().cloned().collect();
        let key = pick(rng, &keys).clone();
        if rng.random_bool(0.5) {
            fields.remove(&key);
        } else {
            fields.insert(key, junk(rng));
        }
    }
    match rng.random_range(0..20) {
        0 => "{\"k\": \"claimed\"".into(),
        1 => "[]".into(),
        _ => e.to_string(),
    }
}

/// Apply one to four hostile edits to `doc` as its actor.
fn edit(rng: &mut StdRng, doc: &mut AutoCommit, actor: &str, seen: &[String], handoff: &Value) {
    for _ in 0..rng.random_range(1..5) {
        let events = match doc.get(ROOT, "events") {
            Ok(Some((automerge::Value::Object(ObjType::List), id))) => Some(id),
            _ => None,
        };
        match rng.random_range(0..20) {
            0..=11 => {
                let list = match events {
                    Some(l) => l,
                    None => doc.put_object(ROOT, "events", ObjType::List).unwrap(),
                };
                let at = if rng.random_bool(0.9) {
                    doc.length(&list)
                } else {
                    rng.random_range(0..=doc.length(&list))
                };
                if rng.random_bool(0.9) {
                    let json = event(rng, actor, seen, handoff);
                    doc.insert(&list, at, json).unwrap();
                } else {
                    doc.insert(&list, at, ScalarValue::Int(-7)).unwrap();
                }
            }
            12 => {
                if let Some(list) = events {
                    let len = doc.length(&list);
                    if len > 0 {
                        doc.delete(&list, rng.random_range(0..len)).unwrap();
                    }
                }
            }
            13 => {
                doc.put(ROOT, "events", "not a list").unwrap();
            }
            14 => {
                doc.put_object(ROOT, "events", ObjType::Map).unwrap();
            }
            15 => {
                let g: i64 = *pick(rng, &[-1, 0, 1, 2, 40, i64::MAX]);
                doc.put(ROOT, "generation", g).unwrap();
            }
            16 => {
                let task = *pick(rng, &["", "other-task", "a.1", "x"]);
                doc.put(ROOT, "task_id", task).unwrap();
            }
            17 => {
                doc.put(ROOT, "task_id", 12).unwrap();
            }
            _ => {
                let patient = doc.put_object(ROOT, "patient", ObjType::Map).unwrap();
                doc.put(&patient, "display_name", "J. Doe").unwrap();
                doc.put(&patient, "phone", 5).unwrap();
            }
        }
    }
}

/// Seeds that found a bug once (a task wiped by overwriting its events, a
/// Lamport time of 2^64 - 1, a due time past i64), and one more.
const SEEDS: &[u64] = &[7, 1, 4, 20, 12];

/// One to three edits to the team document, from legitimate (a new member,
/// a new name, a policy at its limits) to destructive.
fn team_edit(rng: &mut StdRng, doc: &mut AutoCommit) {
    // Edits that no longer apply (the document was already broken) are
    // skipped: the test then fails on the members it checks.
    let members = match doc.get(ROOT, "members") {
        Ok(Some((automerge::Value::Object(ObjType::Map), id))) => id,
        _ => return,
    };
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..10) {
            0 => {
                let _ = doc.put(ROOT, "members", "nobody");
            }
            1 => {
                let _ = doc.put_object(ROOT, "policy", ObjType::Map);
            }
            2 => {
                let _ = doc.delete(&members, "ana");
            }
            3 => {
                let _ = doc.put(&members, "ana", "{\"user_id\": \"ana\"");
            }
            4 => {
                let other =
                    r#"{"user_id":"zed","name":"Zed","role":"admin","trusted":true,"active":true}"#;
                let _ = doc.put(&members, "ana", other);
            }
            5 => {
                let _ = doc.put(&members, "ana", 7);
            }
            6 => {
                let _ = doc.put(ROOT, "name", "Clinic, renamed");
            }
            7 => {
                let policy = match doc.get(ROOT, "policy") {
                    Ok(Some((_, id))) => id,
                    _ => continue,
                };
                let hours = *pick(rng, &[0u32, 1, u32::MAX]);
                let json = json!({"follow_up_within_hours": hours, "max_call_attempts": hours,
                    "review_within_hours": hours, "archive_after_days": hours});
                let _ = doc.put(&policy, "current", json.to_string());
            }
            _ => {
                let zed = r#"{"user_id":"zed","name":"Zed","role":"front_desk","trusted":false,"active":true}"#;
                let _ = doc.put(&members, "zed", zed);
            }
        }
    }
}

#[test]
fn hostile_but_valid_changes_are_answered_and_break_no_relay_and_no_phone() {
    let seeds: Vec<u64> = match std::env::var("HANDOFF_CRAFTED_SEED") {
        Ok(s) => vec![s.parse().expect("HANDOFF_CRAFTED_SEED: a number")],
        Err(_) => SEEDS.to_vec(),
    };
    for seed in seeds {
        crafted_pushes(seed);
    }
}

fn crafted_pushes(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    // A second manager's phone sees everything ana's crafted changes do
    // (ana's own phone never pulls back what was pushed in its name).
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    max.sync();
    let task = max
        .store
        .delegate(task_for("Call back", Some("ana"), None))
        .unwrap();
    // The task document as the relay will have it, from max's outbox.
    let mut real = AutoCommit::new();
    for c in max.store.outbox(100).unwrap() {
        if c.doc_id == task {
            real.load_incremental(&c.bytes).unwrap();
        }
    }
    max.sync();
    ana.sync();
    let seen: Vec<String> = ana
        .store
        .task_detail(&task)
        .unwrap()
        .state
        .history
        .iter()
        .map(|h| h.event_id.clone())
        .collect();
    let handoff = serde_json::to_value(handoff("Call back")).unwrap();
    let actor_hex = ana.store.device_actor();
    let actor = ActorId::from(hex::decode(&actor_hex).unwrap());
    let token = ana.settings().token;
    let max_token = max.settings().token;
    let (rt, client) = http();
    let raw = RawPush::to(&relay);
    let max_actor = ActorId::from(hex::decode(max.store.device_actor()).unwrap());
    let mut team_doc = AutoCommit::new();
    for c in pull_all(&rt, &client, &relay.url, &max_token) {
        if c.doc == "team" {
            team_doc.load_incremental(&c.bytes).unwrap();
        }
    }
    let mut team_doc = team_doc.with_actor(max_actor);
    let members_before = max.store.team().unwrap().members;

    // Each document id's state as the relay has it (what it stored).
    let mut docs: HashMap<String, AutoCommit> = HashMap::new();
    let mut earlier: HashMap<String, AutoCommit> = HashMap::new();
    docs.insert(task.clone(), real.with_actor(actor.clone()));
    let mut stored = 0;
    let mut answers: HashMap<String, usize> = HashMap::new();
    for i in 0..PUSHES {
        // One push in eight is the manager's, to the team document.
        let by_manager = rng.random_range(0..8) == 0;
        let (id, mut doc) = if by_manager {
            let mut doc = team_doc.clone();
            team_edit(&mut rng, &mut doc);
            ("team".to_string(), doc)
        } else {
            let id = match rng.random_range(0..10) {
                0 => format!("{task}.1"),
                1 => format!("{task}.{}", rng.random_range(2..5)),
                2 => format!("crafted-{}", rng.random_range(0..3)),
                _ => task.clone(),
            };
            // Now and then the change builds on another document's changes
            // (the team's, or the task's under another id).
            // Or on the document as it was before ana's last stored change:
            // the new change takes that one's sequence number again.
            let base = match rng.random_range(0..12) {
                0 => Some(team_doc.clone().with_actor(actor.clone())),
                1 => docs.get(&task).cloned(),
                2 => earlier.get(&id).cloned(),
                _ => docs.get(&id).cloned(),
            };
            let mut doc = base.unwrap_or_else(|| AutoCommit::new().with_actor(actor.clone()));
            if rng.random_range(0..10) == 0 {
                // A change with no operations at all.
                doc.empty_change(automerge::transaction::CommitOptions::default());
            } else {
                edit(&mut rng, &mut doc, &actor_hex, &seen, &handoff);
            }
            (id, doc)
        };
        if doc.commit().is_none() && doc.get_last_local_change().is_none() {
            continue;
        }
        let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        let (status, body) = raw
            .try_send(
                if by_manager { &max_token } else { &token },
                vec![doc_change(&id, change)],
            )
            .unwrap_or_else(|e| panic!("push {i} (seed {seed}): the relay went away: {e}"));
        assert!(
            status == 200 || (400..500).contains(&status),
            "push {i} (seed {seed}) on {id}: status {status}"
        );
        if status == 200 {
            let reply: PushReply = wire::decode(&body).unwrap();
            let answer = match &reply.verdicts[0] {
                Verdict::Refused { code, .. } => format!("{code:?}"),
                other => format!("{other:?}"),
            };
            *answers.entry(answer).or_default() += 1;
            if matches!(reply.verdicts[0], Verdict::Stored) {
                stored += 1;
                if by_manager {
                    team_doc = doc;
                } else if let Some(before) = docs.insert(id.clone(), doc) {
                    earlier.insert(id, before);
                }
            }
        }
        if i % 50 == 49 {
            // Both phones pull whatever was stored, and the team goes on.
            max.store.comment(&task, &format!("round {i}")).unwrap();
            assert_eq!(max.sync().pushed, 1, "after push {i} (seed {seed})");
            ana.sync();
            lee.sync();
        }
    }
    eprintln!("seed {seed}: {answers:?}");
    assert!(stored > 0, "some hostile changes are valid enough to store");
    for phone in [&max, &ana, &lee, &max, &lee] {
        phone.sync();
    }
    assert_converged(&[&max, &lee]);
    // Whatever the manager's phone sent, nobody lost their place in the team.
    for phone in [&max, &ana, &lee] {
        let members = phone.store.team().unwrap().members;
        for (id, before) in &members_before {
            assert_eq!(members.get(id), Some(before), "seed {seed}: member {id}");
        }
    }
    let detail = max.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.handoff.title, "Call back");
}

/// If admitting a change ever panics (a debug build injects one here: no
/// input is known to), the relay answers that push with an error to retry,
/// writes nothing of the batch, refuses the change when it comes again, and
/// the team goes on.
#[test]
fn a_change_whose_admission_panics_is_refused_when_sent_again_and_the_team_goes_on() {
    let relay = Relay::start_with_env(&[], &[("HANDOFF_TEST_PANIC_ON_DOC", "poison")]);
    let (_team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = max
        .store
        .delegate(task_for("Call back", Some("ana"), None))
        .unwrap();
    max.sync();
    ana.sync();
    let token = ana.settings().token;
    let actor = ActorId::from(hex::decode(ana.store.device_actor()).unwrap());
    let mut doc = AutoCommit::new().with_actor(actor);
    doc.put(ROOT, "task_id", "poison").unwrap();
    doc.commit();
    let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let raw = RawPush::to(&relay);
    let push = |bytes: Vec<u8>| raw.send(&token, vec![doc_change("poison", bytes)]);
    let (status, _) = push(bytes.clone());
    assert_eq!(status, 500, "the first time: an error to retry");
    let (status, body) = push(bytes);
    assert_eq!(status, 200);
    let reply: PushReply = wire::decode(&body).unwrap();
    assert!(matches!(
        reply.verdicts[0],
        Verdict::Refused {
            code: wire::RefusalCode::InvalidChange,
            ..
        }
    ));
    // The team, reloaded from its feed, goes on.
    ana.store.comment(&task, "still here").unwrap();
    assert_eq!(ana.sync().pushed, 1);
    max.store.comment(&task, "me too").unwrap();
    assert_eq!(max.sync().pushed, 1);
    ana.sync();
    assert_converged(&[&max, &ana]);
    assert_eq!(
        max.store.task_detail(&task).unwrap().state.comments.len(),
        2
    );
}

/// A feed writer thread that panics (a bug; nothing known causes one) takes
/// down only the pushes it held: they are answered with an error to retry,
/// and the next request reloads the team with a new writer.
#[test]
fn a_feed_writer_that_panics_is_replaced_and_the_team_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("panic-next-commit");
    let relay = Relay::start_with_env(
        &[],
        &[(
            "HANDOFF_TEST_PANIC_IN_COMMIT_ONCE",
            trigger.to_str().unwrap(),
        )],
    );
    let (_team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back", "ana");
    std::fs::write(&trigger, b"").unwrap();
    ana.store.comment(&task, "still here").unwrap();
    assert!(
        ana.engine.sync_now().is_err(),
        "the push was not acknowledged"
    );
    assert!(!trigger.exists(), "the commit panicked");
    assert_eq!(ana.sync().pushed, 1);
    max.sync();
    assert_converged(&[&max, &ana]);
    assert_eq!(
        max.store.task_detail(&task).unwrap().state.comments.len(),
        1
    );
}

/// Changes framed in ways automerge asserts on instead of refusing (its
/// apply panics, on the relay's copy of the team and on every phone that
/// pulls them): an author in an actor's second change, another actor
/// the document has never had, and operations naming an actor the change
/// does not list. The relay refuses them, keeps serving,
/// and the change as a phone writes it goes through.
#[test]
fn changes_automerge_would_panic_on_are_refused() {
    use handoff_core::event::{Action, Event};
    use handoff_core::task_doc;

    let relay = Relay::start();
    let (_team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back", "ana");
    let token = ana.settings().token;
    let max_token = max.settings().token;
    let (rt, client) = http();
    let mut doc = AutoCommit::new();
    let mut team_doc = AutoCommit::new();
    // What ana's phone is sent: the task and the team as the relay has
    // them (a phone is not sent its own changes back).
    for c in pull_all(&rt, &client, &relay.url, &token) {
        match c.doc.as_str() {
            "team" => team_doc.load_incremental(&c.bytes).unwrap(),
            d if d == task => doc.load_incremental(&c.bytes).unwrap(),
            _ => 0,
        };
    }
    let actor_hex = ana.store.device_actor();
    let mut doc = doc.with_actor(ActorId::from(hex::decode(&actor_hex).unwrap()));
    let mut comment = |text: &str| {
        let (events, _) = task_doc::events(&doc);
        let e = Event::next(
            &events,
            &actor_hex,
            "ana",
            1_900_000_000_000,
            Action::Commented { text: text.into() },
        );
        task_doc::append(&mut doc, &e).unwrap();
        doc_change(
            &task,
            doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
    };
    let raw = RawPush::to(&relay);
    let stored = |token: &str, c: wire::DocChange| {
        let verdicts = raw.verdicts(token, vec![c]);
        assert!(matches!(&verdicts[..], [Verdict::Stored]), "{verdicts:?}");
    };
    let refused = |token: &str, c: wire::DocChange| {
        let verdicts = raw.verdicts(token, vec![c]);
        assert!(
            matches!(
                &verdicts[..],
                [Verdict::Refused {
                    code: wire::RefusalCode::InvalidChange,
                    ..
                }]
            ),
            "{verdicts:?}"
        );
    };
    // Her first change to the document.
    stored(&token, comment("first"));
    let second = comment("second");
    let crafted = |edit: &dyn Fn(&mut Vec<u8>)| wire::DocChange {
        doc: second.doc.clone(),
        bytes: reframed(&second.bytes, edit),
    };
    refused(&token, crafted(&|body| add_author(body, b"ana")));
    refused(
        &token,
        crafted(&|body| name_another_actor(body, &[0xab; 16])),
    );
    // Operations naming an actor the change does not list (automerge
    // panics reading them).
    refused(&token, crafted(&forget_other_actors));
    // The manager's change to the team, likewise.
    let mut team_doc = team_doc.with_actor(ActorId::from(
        hex::decode(max.store.device_actor()).unwrap(),
    ));
    team_doc.put(ROOT, "name", "Renamed").unwrap();
    team_doc.commit();
    let rename = team_doc
        .get_last_local_change()
        .unwrap()
        .raw_bytes()
        .to_vec();
    refused(
        &max_token,
        doc_change(
            "team",
            reframed(&rename, |b| name_another_actor(b, &[0xcd; 16])),
        ),
    );
    // Her second change as her phone wrote it: stored, and the manager's
    // phone takes it in.
    stored(&token, second);
    max.sync();
    let history = max.store.task_detail(&task).unwrap().state.history;
    assert!(history.iter().any(|h| format!("{h:?}").contains("second")));
}
