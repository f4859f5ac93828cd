//! Redaction through the relay: the older document of a redacted task is
//! deleted from the relay's files, nothing anyone logged is lost, and the
//! older document stays closed after a restart.

use std::sync::Arc;

use handoff_core::sync::wire::{DocChange, RefusalCode, Verdict};
use handoff_core::*;

use crate::harness::*;

const NAME: &[u8] = b"Jordan Quill";

fn quill_call(outcome: CallOutcome) -> CallAttempt {
    CallAttempt {
        outcome,
        contact_used: Some("mobile".into()),
        notes: "Jordan Quill says the wound is healing".into(),
        answers: Vec::new(),
        next_attempt_due: None,
    }
}

/// max delegates to `assignee` a call about Jordan Quill (phone and record
/// number too), not yet synced.
fn quill_task(max: &Phone, assignee: &str) -> String {
    let mut new = task_for("Post-op call", Some(assignee), None);
    new.patient = Some(PatientRef {
        display_name: "Jordan Quill".into(),
        phone: Some("555-0199".into()),
        record_ref: Some("MRN-4471".into()),
    });
    max.store.delegate(new).unwrap()
}

/// max hands ana a call about Jordan Quill (phone and record number too);
/// she logs one attempt and syncs it.
fn quill_task_with_a_call(max: &Phone, ana: &Phone) -> String {
    let task = quill_task(max, "ana");
    max.sync();
    ana.sync();
    ana.store
        .log_call(&task, quill_call(CallOutcome::NoAnswer))
        .unwrap();
    ana.sync();
    task
}

/// On each phone `task` holds no patient details and `calls` calls, and
/// nothing is in needs attention or waits to go; and all phones agree.
fn assert_redacted_and_settled(task: &str, phones: &[(&str, &Phone)], calls: usize) {
    for (who, phone) in phones {
        let d = phone.store.task_detail(task).unwrap();
        assert!(d.patient.is_none(), "redacted on {who}");
        assert_eq!(d.state.calls.len(), calls, "the calls on {who}");
        assert!(phone.store.needs_attention().unwrap().is_empty(), "{who}");
        assert!(phone.store.outbox(10).unwrap().is_empty(), "{who}");
    }
    assert_converged(&phones.iter().map(|(_, p)| *p).collect::<Vec<_>>());
}

/// Do the relay's files (database and WAL, whichever exist) hold `needle`?
fn relay_files_hold(relay: &Relay, needle: &[u8]) -> bool {
    ["", "-wal"].iter().any(|ext| {
        let path = format!("{}{ext}", relay.db().display());
        std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    })
}

/// How many versions (generations) of `task` the phone's file holds.
fn versions_on(phone: &Phone, task: &str) -> i64 {
    phone
        .open_file()
        .query_row(
            "SELECT count(*) FROM documents WHERE task_id = ?1",
            [task],
            |r| r.get(0),
        )
        .unwrap()
}

/// `n` short comments by `phone` on `task`, not yet synced.
fn pharmacy_comments(phone: &Phone, task: &str, n: usize) {
    for i in 0..n {
        phone
            .store
            .comment(task, &format!("tried the pharmacy, {i}"))
            .unwrap();
    }
}

fn push(relay: &Relay, phone: &Phone, changes: Vec<DocChange>) -> Vec<Verdict> {
    RawPush::to(relay).verdicts(&phone.settings().token, changes)
}

#[test]
fn the_relay_deletes_a_redacted_tasks_history_and_loses_no_call() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    // ana's first call reaches the relay, not max: his redaction misses it.
    let task = quill_task_with_a_call(&max, &ana);
    assert!(
        relay_files_hold(&relay, NAME),
        "control: the relay has the name"
    );

    // max redacts; meanwhile ana logs a second call offline.
    max.store.redact_patient(&task).unwrap();
    ana.store
        .log_call(&task, quill_call(CallOutcome::Reached))
        .unwrap();
    let stale: Vec<DocChange> = ana
        .store
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(|c| DocChange {
            doc: c.doc_id,
            bytes: c.bytes,
        })
        .collect();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].doc, task, "written to the older document");

    max.sync(); // the relay retires the older document, keeps ana's first call
    ana.sync(); // her second call is refused there, and moves to the new one
    ana.sync();
    max.sync();
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    assert_converged(&[&max, &ana, &lee]);
    for (who, phone) in [("max", &max), ("ana", &ana), ("lee", &lee)] {
        let d = phone.store.task_detail(&task).unwrap();
        assert_eq!(d.patient, None, "on {who}");
        let outcomes: Vec<_> = d.state.calls.iter().map(|c| c.attempt.outcome).collect();
        assert_eq!(
            outcomes,
            vec![CallOutcome::NoAnswer, CallOutcome::Reached],
            "both calls, once each, on {who}"
        );
        assert!(d
            .state
            .calls
            .iter()
            .all(|c| c.attempt.notes == "[redacted]"));
        assert!(phone.store.needs_attention().unwrap().is_empty(), "{who}");
        assert!(phone.store.outbox(10).unwrap().is_empty(), "{who}");
    }

    // Nothing of the older document is left in the relay's files.
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME));
    assert!(!relay_files_hold(&relay, b"MRN-4471"));

    // After a restart the older document stays closed, and the newer one
    // still serves a phone that has never seen the task.
    relay.spawn();
    let verdicts = push(&relay, &ana, stale);
    assert!(
        matches!(
            verdicts.as_slice(),
            [Verdict::Refused {
                code: RefusalCode::Retired,
                ..
            }]
        ),
        "{verdicts:?}"
    );
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_eq!(
        mia.store.task_detail(&task).unwrap().state,
        max.store.task_detail(&task).unwrap().state
    );
}

#[test]
fn only_a_delegator_may_start_a_tasks_next_generation() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    // ana's phone, tampered with, re-creates the task as if redacting it.
    let actor = automerge::ActorId::from(hex::decode(ana.store.device_actor()).unwrap());
    let mut doc = task_doc::new_doc(&task, 1, &actor).unwrap();
    doc.commit();
    let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let verdicts = push(
        &relay,
        &ana,
        vec![DocChange {
            doc: format!("{task}.1"),
            bytes: change,
        }],
    );
    assert!(
        matches!(
            verdicts.as_slice(),
            [Verdict::Refused {
                code: RefusalCode::Forbidden,
                ..
            }]
        ),
        "{verdicts:?}"
    );
    // A generation is laid out as its id says.
    let max_actor = automerge::ActorId::from(hex::decode(max.store.device_actor()).unwrap());
    for (doc_id, generation) in [(format!("{task}.5"), 4), (format!("{task}.1"), 2)] {
        let mut doc = task_doc::new_doc(&task, generation, &max_actor).unwrap();
        doc.commit();
        let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        let verdicts = push(&relay, &max, vec![DocChange { doc: doc_id, bytes }]);
        assert!(
            matches!(
                verdicts.as_slice(),
                [Verdict::Refused {
                    code: RefusalCode::InvalidChange,
                    ..
                }]
            ),
            "{verdicts:?}"
        );
    }
    // The task is untouched and still takes ana's work.
    ana.store.log_call(&task, call(CallOutcome::Busy)).unwrap();
    ana.sync();
    max.sync();
    assert_eq!(max.store.task_detail(&task).unwrap().state.calls.len(), 1);
}

/// A task's next generation holds no patient details, and its copies of
/// earlier events are scrubbed. A phone that did not scrub them (an older
/// app, a fault, a hand-made change) would have put in the feed for good
/// what the redaction is there to delete.
#[test]
fn a_redaction_that_keeps_the_patients_details_is_refused() {
    use automerge::transaction::Transactable;
    use automerge::ReadDoc;

    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = quill_task_with_a_call(&max, &ana);
    max.sync();
    let (events, _) = task_doc::events(&task_doc_as(&relay, &[&ana, &max], &task, &max));
    assert_eq!(events.len(), 2, "{events:?}");
    let actor = automerge::ActorId::from(hex::decode(max.store.device_actor()).unwrap());
    let next_generation = |patient: bool, scrub: bool| {
        let mut doc = task_doc::new_doc(&task, 1, &actor).unwrap();
        if patient {
            let (_, obj) = doc.get(automerge::ROOT, "patient").unwrap().unwrap();
            doc.put(&obj, "display_name", "Jordan Quill").unwrap();
        }
        for e in &events {
            let copy = if scrub { e.scrubbed() } else { e.clone() };
            task_doc::append(&mut doc, &copy).unwrap();
        }
        doc.commit();
        let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        doc_change(&format!("{task}.1"), bytes)
    };
    // The patient's name kept in the layout; the call's notes kept in its copy.
    for (patient, scrub) in [(true, true), (false, false)] {
        let verdicts = push(&relay, &max, vec![next_generation(patient, scrub)]);
        assert!(
            matches!(verdicts.as_slice(), [Verdict::Refused { .. }]),
            "patient {patient}, scrubbed {scrub}: {verdicts:?}"
        );
    }
    // Without them, it is the redaction a phone makes.
    let verdicts = push(&relay, &max, vec![next_generation(false, true)]);
    assert_eq!(verdicts, [Verdict::Stored]);
}

/// A phone drops, after its user's sight changed, the tasks the relay no
/// longer sends it. The relay never sends a phone its own changes, so a
/// task only this phone wrote to (here a redaction: its document holds
/// copies of others' events, in the redactor's change) is sent nothing,
/// and must stay.
#[test]
fn a_task_a_phone_redacted_stays_on_it_when_its_users_role_changes() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task_with_a_call(&max, &ana);
    lee.sync();
    lee.store.redact_patient(&task).unwrap();
    lee.sync();
    // Still sees every task, with another role: her phone reads the feed
    // again, and is sent nothing of the task (only she wrote to its newer
    // document, and none of its events is hers).
    set_member(&max, "lee", Role::Clinician, false, true);
    lee.sync();
    let detail = lee.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.calls.len(), 1);
    max.sync();
    ana.sync();
    assert_converged(&[&max, &lee, &ana]);
}

#[test]
fn a_relay_stopped_between_a_redaction_and_its_cleanup_finishes_it_when_it_loads() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = quill_task_with_a_call(&max, &ana);
    max.sync();
    assert_eq!(relay.terminate().code(), Some(0));

    // The state a crash leaves: the new generation is in the feed, the
    // older one not yet deleted.
    max.store.redact_patient(&task).unwrap();
    let root = max.store.outbox(10).unwrap().remove(0);
    assert_eq!(root.doc_id, format!("{task}.1"));
    let hash = automerge::Change::from_bytes(root.bytes.clone())
        .unwrap()
        .hash();
    {
        let db = rusqlite::Connection::open(relay.db()).unwrap();
        let seq: i64 = db
            .query_row(
                "SELECT max(seq) FROM feed WHERE team_id = ?1",
                [&team],
                |r| r.get(0),
            )
            .unwrap();
        db.execute(
            "INSERT INTO feed (team_id, seq, doc_id, hash, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![team, seq + 1, root.doc_id, &hash.0[..], root.bytes],
        )
        .unwrap();
    }
    assert!(relay_files_hold(&relay, NAME), "control");

    relay.spawn();
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    max.sync();
    ana.sync();
    assert_converged(&[&max, &ana, &lee]);
    let d = lee.store.task_detail(&task).unwrap();
    assert_eq!(d.patient, None);
    assert_eq!(d.state.calls.len(), 1);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME));
}

/// Two managers remove the patient's details from one task at the same
/// time, each offline, and each writes to the task after: the next
/// generation is laid out twice. The relay takes both layouts (also after a
/// restart between them and what follows), and every phone ends with the
/// same task, with everyone's work and no patient details, in whichever
/// order they sync.
#[test]
fn two_managers_redacting_at_once_lose_nothing_and_converge() {
    for lee_first in [false, true] {
        let mut relay = Relay::start();
        let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
        let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
        let task = quill_task_with_a_call(&max, &ana);
        lee.sync();
        max.store.redact_patient(&task).unwrap();
        lee.store.redact_patient(&task).unwrap();
        max.store.comment(&task, "max, after redacting").unwrap();
        lee.store.comment(&task, "lee, after redacting").unwrap();
        let (first, second) = if lee_first {
            (&lee, &max)
        } else {
            (&max, &lee)
        };
        first.sync();
        // Only the second layout; the relay restarts before the comment
        // on top of it comes.
        let layout = second.store.outbox(1).unwrap().remove(0);
        assert_eq!(layout.doc_id, format!("{task}.1"));
        let verdicts = push(
            &relay,
            second,
            vec![DocChange {
                doc: layout.doc_id,
                bytes: layout.bytes,
            }],
        );
        assert!(
            matches!(verdicts.as_slice(), [Verdict::Stored]),
            "{verdicts:?}"
        );
        assert_eq!(relay.terminate().code(), Some(0));
        relay.spawn();
        for phone in [second, &ana, first, second] {
            phone.sync();
        }
        assert_converged(&[&max, &lee, &ana]);
        // Work after both redactions reaches everyone too.
        ana.store
            .log_call(&task, call(CallOutcome::Reached))
            .unwrap();
        lee.store.comment(&task, "lee, later").unwrap();
        for phone in [&ana, &lee, &max, &ana, &lee] {
            phone.sync();
        }
        assert_converged(&[&max, &lee, &ana]);
        for (who, phone) in [("max", &max), ("lee", &lee), ("ana", &ana)] {
            let d = phone.store.task_detail(&task).unwrap();
            assert_eq!(d.patient, None, "on {who}");
            let mut comments: Vec<_> = d.state.comments.iter().map(|c| c.text.clone()).collect();
            comments.sort();
            assert_eq!(
                comments,
                ["lee, after redacting", "lee, later", "max, after redacting"],
                "on {who} (lee first: {lee_first})"
            );
            assert_eq!(d.state.calls.len(), 2, "on {who}");
            assert!(
                phone.store.needs_attention().unwrap().is_empty(),
                "on {who}: {:?}",
                phone.store.needs_attention()
            );
            assert!(phone.store.outbox(10).unwrap().is_empty(), "on {who}");
        }
        assert_eq!(relay.terminate().code(), Some(0));
        assert!(!relay_files_hold(&relay, NAME));
    }
}

/// Ana's task went to Bob, then a manager removed the patient's details
/// before her phone synced. Her phone learns both: the task is Bob's, and
/// the copy holding Jordan Quill's details is replaced by the redacted one
/// (also from a relay that restarted in between).
#[test]
fn a_phone_that_lost_sight_of_a_task_drops_its_details_when_it_is_redacted() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let bob = Phone::enrolled(&relay, &relay.invite(&team, "bob", "clinical_assistant"));
    max.sync();
    let task = quill_task_with_a_call(&max, &ana);
    assert!(ana.store.task_detail(&task).unwrap().patient.is_some());
    max.store.assign(&task, "bob").unwrap();
    max.sync();
    max.store.redact_patient(&task).unwrap();
    max.sync();
    relay.kill();
    relay.spawn();
    ana.sync();
    let d = ana.store.task_detail(&task).unwrap();
    assert_eq!(d.patient, None, "the unredacted copy is gone");
    assert_eq!(d.state.assignee.as_deref(), Some("bob"));
    bob.sync();
    assert_eq!(bob.store.task_detail(&task).unwrap().patient, None);
}

/// A phone offline for long may hold many calls on a task redacted
/// meanwhile. It carries them over to the new document in changes of at
/// most 16 events of its own (the relay takes no more in one change), and
/// every call reaches everyone.
#[test]
fn many_calls_logged_offline_carry_over_to_a_redacted_task_and_all_arrive() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = quill_task_with_a_call(&max, &ana);
    max.store.redact_patient(&task).unwrap();
    max.sync();
    for _ in 0..40 {
        ana.store
            .log_call(&task, quill_call(CallOutcome::NoAnswer))
            .unwrap();
    }
    ana.sync(); // refused on the retired document; moved to the new one
    let report = ana.sync();
    assert_eq!(report.refused, 0, "{report:?}");
    max.sync();
    assert_converged(&[&max, &ana]);
    assert_eq!(max.store.task_detail(&task).unwrap().state.calls.len(), 41);
    assert!(ana.store.needs_attention().unwrap().is_empty());
    assert!(ana.store.outbox(100).unwrap().is_empty());
}

/// The manager removes the patient's details from a task before his phone
/// ever synced it: the task reaches the team at that generation. It used
/// to be refused ("no such generation"), and never reached anyone.
#[test]
fn a_task_redacted_before_it_was_ever_synced_reaches_the_team() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let t = max
        .store
        .delegate(task_for("Check", None, Some(Role::ClinicalAssistant)))
        .unwrap();
    max.store.redact_patient(&t).unwrap();
    assert_eq!(max.sync().refused, 0);
    ana.sync();
    assert_eq!(
        ana.store.task_detail(&t).unwrap().state,
        max.store.task_detail(&t).unwrap().state
    );
    assert_eq!(ana.store.shared_pool().unwrap().len(), 1);
}

/// Redacted twice between two syncs: only the last generation leaves the
/// phone (each redaction retired the one before, unsent), and the relay
/// takes it though it skips a number.
#[test]
fn a_task_redacted_twice_between_syncs_reaches_the_team_with_every_call() {
    let mut relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = quill_task_with_a_call(&max, &ana);
    max.sync();
    max.store.redact_patient(&task).unwrap();
    max.store.comment(&task, "between the two").unwrap();
    max.store.redact_patient(&task).unwrap();
    assert_eq!(max.store.outbox(10).unwrap()[0].doc_id, format!("{task}.2"));
    assert_eq!(max.sync().refused, 0);
    ana.store
        .log_call(&task, quill_call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    max.sync();
    let theirs = ana.store.task_detail(&task).unwrap().state;
    assert_eq!(theirs, max.store.task_detail(&task).unwrap().state);
    assert_eq!((theirs.calls.len(), theirs.comments.len()), (2, 1));
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME));
}

/// After a redaction the relay empties its WAL, so that no page of the
/// removed details stays in it. A reader in the way (an operator's backup,
/// a team loading its feed) is waited out tick by tick, not while holding
/// the write lock: every push meanwhile goes through at once, where each
/// waited up to 5 s and could fail. Once the reader is done, the details
/// leave the files.
#[test]
fn emptying_the_wal_after_a_redaction_holds_up_no_push_while_a_reader_is_in_the_way() {
    use std::time::{Duration, Instant};
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = quill_task_with_a_call(&max, &ana);
    let reader = rusqlite::Connection::open(relay.db()).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let rows: i64 = reader
        .query_row("SELECT count(*) FROM feed", [], |r| r.get(0))
        .unwrap();
    assert!(rows > 0);
    max.store.redact_patient(&task).unwrap();
    assert_eq!(max.sync().pushed, 1);
    ana.sync();
    // Over several of the timer's ticks (every 500 ms).
    let started = Instant::now();
    let mut pushes = 0;
    while started.elapsed() < Duration::from_secs(3) {
        ana.store.comment(&task, "called again").unwrap();
        let push = Instant::now();
        assert_eq!(ana.sync().pushed, 1);
        assert!(
            push.elapsed() < Duration::from_secs(2),
            "a push took {:?}",
            push.elapsed()
        );
        pushes += 1;
    }
    assert!(pushes > 3, "{pushes}");
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay_files_hold(&relay, NAME) {
        assert!(
            Instant::now() < deadline,
            "the details are still in the files"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A manager demoted while her phone was offline redacts a task that stays
/// hers (its call is hers): the relay refuses the redaction. Her phone
/// used to stay on the redacted document for good, where no one's later
/// work reached her and none of hers reached anyone. It goes back to the
/// task as the relay has it, with what others wrote meanwhile and the
/// call she logged after the redaction; the refused redaction stays in
/// her needs attention.
#[test]
fn a_redaction_the_relay_refuses_gives_the_task_back_to_its_author() {
    refused_redactions_give_the_task_back(1);
}

/// The same, redacted twice before her phone reached the relay: the task
/// goes back past the generation the relay never had.
#[test]
fn a_task_redacted_twice_and_refused_goes_back_to_what_the_relay_has() {
    refused_redactions_give_the_task_back(2);
}

fn refused_redactions_give_the_task_back(redactions: usize) {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let zed = Phone::enrolled(&relay, &relay.invite(&team, "zed", "manager"));
    max.sync();
    let task = quill_task(&max, "zed");
    max.sync();
    zed.sync();
    // Demoted; her phone has not heard.
    set_member(&max, "zed", Role::ClinicalAssistant, false, true);
    for _ in 0..redactions {
        zed.store.redact_patient(&task).unwrap();
    }
    zed.store
        .log_call(&task, quill_call(CallOutcome::NoAnswer))
        .unwrap();
    max.store.comment(&task, "she prefers mornings").unwrap();
    max.sync();

    zed.sync();
    let mine = zed.store.task_detail(&task).unwrap();
    assert_eq!(mine.state.calls.len(), 1, "her call is kept");
    assert_eq!(
        mine.state.calls[0].attempt.notes, "Jordan Quill says the wound is healing",
        "as she typed it"
    );
    assert_eq!(mine.state.comments.len(), 1, "max's comment reached her");
    assert!(mine.patient.is_some(), "the task as the relay has it");
    let attention = zed.store.needs_attention().unwrap();
    assert_eq!(attention.len(), 1, "{attention:?}");
    assert_eq!(attention[0].code, RefusalCode::Forbidden.as_str());
    assert!(zed.store.outbox(10).unwrap().is_empty());

    max.sync();
    ana.sync();
    assert_eq!(
        max.store.task_detail(&task).unwrap().state.calls.len(),
        1,
        "her call reached the team"
    );
    assert_converged(&[&max, &zed, &ana]);
    // Later work goes both ways.
    max.store.comment(&task, "try after 9").unwrap();
    max.sync();
    zed.sync();
    assert_eq!(
        zed.store.task_detail(&task).unwrap().state.comments.len(),
        2
    );
}

/// The same over a link that drops long downloads, for a task with a long
/// history: the older generation comes in pages, and the task goes back
/// only once it is all there (a task taken back from part of it would
/// carry back, as hers, what the rest holds).
#[test]
fn a_refused_redaction_of_a_long_task_goes_back_over_a_weak_link() {
    let (_relay, proxy, max, zed, task) = long_task_redacted_by_a_demoted_manager();
    zed.store
        .log_call(&task, quill_call(CallOutcome::NoAnswer))
        .unwrap();
    proxy.cut_downloads_over(100_000);
    proxy.close_all();
    let mut rounds = 0;
    while zed.store.task_detail(&task).unwrap().patient.is_none() {
        rounds += 1;
        assert!(rounds <= 40, "not taken back after 40 rounds");
        let _ = zed.engine.sync_now();
    }
    let mine = zed.store.task_detail(&task).unwrap();
    assert_eq!(mine.state.comments.len(), 40);
    assert_eq!(mine.state.calls.len(), 1, "her call is kept");
    assert_eq!(zed.store.needs_attention().unwrap().len(), 1);

    proxy.cut_downloads_over(0);
    proxy.close_all();
    zed.sync();
    assert!(zed.store.outbox(10).unwrap().is_empty());
    max.sync();
    assert_converged(&[&max, &zed]);
}

/// A task with ~370 KB of notes, which zed (a manager reached through a
/// proxy) redacts after max demoted her, her phone not yet told.
fn long_task_redacted_by_a_demoted_manager() -> (Relay, crate::proxy::Proxy, Phone, Phone, String) {
    let relay = Relay::start();
    let proxy = crate::proxy::Proxy::to(&relay.url);
    let (team, invite) = relay.create_team("Clinic", "max");
    let max = Phone::enrolled(&relay, &invite);
    let zed = Phone::new();
    zed.engine
        .enrol(&proxy.url, &relay.invite(&team, "zed", "manager"))
        .unwrap();
    zed.sync();
    max.sync();
    let task = quill_task(&max, "zed");
    long_comments(&max.store, &task, 40, 9_000, 0);
    max.sync();
    zed.sync();
    set_member(&max, "zed", Role::ClinicalAssistant, false, true);
    zed.store.redact_patient(&task).unwrap();
    (relay, proxy, max, zed, task)
}

/// A redaction the relay refused is withdrawn while the older version
/// comes in over a weak link, part of it kept on the phone; then another
/// manager redacts the same version, which the relay takes. Once that
/// reaches her, her redaction stands after all: the part of the older
/// version she kept, with the patient's details, is removed from her
/// phone's file.
#[test]
fn a_kept_older_version_goes_once_another_managers_redaction_reaches_her() {
    let (_relay, proxy, max, zed, task) = long_task_redacted_by_a_demoted_manager();
    proxy.cut_downloads_over(100_000);
    proxy.close_all();
    let versions = |phone: &Phone| versions_on(phone, &task);
    let mut rounds = 0;
    while versions(&zed) < 2 {
        rounds += 1;
        assert!(rounds <= 40, "no part of the older version after 40 rounds");
        let _ = zed.engine.sync_now();
    }
    assert!(
        zed.store.task_detail(&task).unwrap().patient.is_none(),
        "not taken back from part of the older version"
    );

    max.store.redact_patient(&task).unwrap();
    max.sync();
    proxy.cut_downloads_over(0);
    proxy.close_all();
    zed.sync();
    assert_eq!(versions(&zed), 1, "the older version she kept is gone");
    let mine = zed.store.task_detail(&task).unwrap();
    assert!(mine.patient.is_none());
    assert_eq!(mine.state.comments.len(), 40);
    max.sync();
    assert_converged(&[&max, &zed]);
}

/// A manager demoted while offline redacts a task she may then no longer
/// read (neither hers nor her pool's): the relay refuses it, and has no
/// older version to show her. Her phone keeps her copy and shows the
/// refusal, and does not ask again every round. Once the task is handed to
/// her, she may read it again: her phone asks, and the task goes back to
/// what the relay has.
#[test]
fn a_refused_redaction_of_a_task_she_may_no_longer_read_waits_until_it_is_handed_to_her() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let zed = Phone::enrolled(&relay, &relay.invite(&team, "zed", "manager"));
    max.sync();
    let task = quill_task(&max, "ana");
    max.sync();
    zed.sync();
    ana.sync();
    set_member(&max, "zed", Role::ClinicalAssistant, false, true);
    zed.store.redact_patient(&task).unwrap();
    let repairs = |relay: &Relay, status: u16| {
        relay.metric(&format!(
            r#"handoff_requests_total{{route="/v1/repair",status="{status}"}}"#
        ))
    };
    zed.sync();
    let attention = zed.store.needs_attention().unwrap();
    assert_eq!(attention.len(), 1, "{attention:?}");
    assert_eq!(attention[0].code, RefusalCode::Forbidden.as_str());
    assert_eq!(repairs(&relay, 404), 1, "asked once");
    zed.sync();
    zed.sync();
    assert_eq!(repairs(&relay, 404), 1, "not asked again every round");
    assert_eq!(zed.store.task_ids().unwrap(), vec![task.clone()], "kept");

    max.store.assign(&task, "zed").unwrap();
    max.sync();
    let mut rounds = 0;
    while zed.store.task_detail(&task).unwrap().patient.is_none() {
        rounds += 1;
        assert!(rounds <= 5, "not taken back after 5 rounds");
        zed.sync();
    }
    assert!(repairs(&relay, 200) >= 1, "asked again");
    assert_eq!(repairs(&relay, 404), 1);
    let attention = zed.store.needs_attention().unwrap();
    assert_eq!(
        attention.len(),
        1,
        "her redaction stays refused: {attention:?}"
    );
    max.sync();
    assert_converged(&[&max, &zed]);
}

/// The same refused redaction, but max makes her a manager again before
/// the task is handed to her: she may now redact it, so her phone offers
/// the redaction again and the relay takes it. Every phone ends with the
/// patient's details gone, her refusal no longer shown, and nothing of
/// the task's work lost.
#[test]
fn a_refused_redaction_stands_once_its_author_is_a_manager_again() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let zed = Phone::enrolled(&relay, &relay.invite(&team, "zed", "manager"));
    max.sync();
    let task = quill_task_with_a_call(&max, &ana);
    max.sync();
    zed.sync();
    set_member(&max, "zed", Role::ClinicalAssistant, false, true);
    zed.store.redact_patient(&task).unwrap();
    zed.sync();
    let attention = zed.store.needs_attention().unwrap();
    assert_eq!(attention.len(), 1, "{attention:?}");
    assert_eq!(attention[0].code, RefusalCode::Forbidden.as_str());

    set_member(&max, "zed", Role::Manager, false, true);
    let mut rounds = 0;
    while !zed.store.needs_attention().unwrap().is_empty() {
        rounds += 1;
        assert!(rounds <= 5, "her redaction still refused after 5 rounds");
        zed.sync();
    }
    assert!(zed.store.outbox(10).unwrap().is_empty());
    max.sync();
    ana.sync();
    for phone in [&max, &zed, &ana] {
        let detail = phone.store.task_detail(&task).unwrap();
        assert!(detail.patient.is_none(), "redacted on every phone");
        assert_eq!(detail.state.calls.len(), 1, "ana's call is kept");
    }
    assert_converged(&[&max, &zed, &ana]);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME), "the relay keeps no name");
    assert!(!relay_files_hold(&relay, b"MRN-4471"));
}

/// Within a week of a restore the relay may have lost the team change that
/// allowed a refused change, so a redaction refused as `forbidden` is held
/// rather than withdrawn: her phone keeps it, shows the refusal, and does
/// not fetch the older version. Once the week is over it is set aside as
/// any refusal, and the task goes back to what the relay has.
#[test]
fn a_redaction_refused_soon_after_a_restore_is_held_then_withdrawn() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let clock = ManualClock::at(handoff_server::relay::now_ms());
    let zed = Phone::with_clock(Arc::new(clock.clone()));
    zed.engine
        .enrol(&relay.url, &relay.invite(&team, "zed", "manager"))
        .unwrap();
    zed.sync();
    max.sync();
    let task = quill_task(&max, "zed");
    let other = max
        .store
        .delegate(task_for("Order dressings", Some("zed"), None))
        .unwrap();
    max.sync();
    zed.sync();
    ana.sync();

    // The night's backup; the next day zed writes a note the restore loses.
    let backup = relay.back_up();
    zed.store.comment(&other, "ordered by phone").unwrap();
    assert_eq!(zed.sync().pushed, 1);
    relay.restore(&backup);
    zed.sync();
    assert!(
        zed.store.restore_known().unwrap(),
        "her phone saw the restore"
    );

    // Demoted after the restore; her phone has not heard, and redacts.
    set_member(&max, "zed", Role::ClinicalAssistant, false, true);
    zed.store.redact_patient(&task).unwrap();
    for _ in 0..3 {
        zed.sync();
        let attention = zed.store.needs_attention().unwrap();
        assert_eq!(attention.len(), 1, "{attention:?}");
        assert_eq!(attention[0].code, RefusalCode::Forbidden.as_str());
        assert!(
            zed.store.task_detail(&task).unwrap().patient.is_none(),
            "held: her redaction stays on her phone"
        );
    }

    clock.advance(store::RESTORE_WINDOW_MS + 60_000);
    let mut rounds = 0;
    while zed.store.task_detail(&task).unwrap().patient.is_none() {
        rounds += 1;
        assert!(rounds <= 5, "not withdrawn 5 rounds after the week");
        zed.sync();
    }
    assert!(!zed.store.restore_known().unwrap());
    let attention = zed.store.needs_attention().unwrap();
    assert_eq!(attention.len(), 1, "{attention:?}");
    assert_eq!(attention[0].code, RefusalCode::Forbidden.as_str());
    assert!(zed.store.outbox(10).unwrap().is_empty());
    max.sync();
    assert_eq!(
        max.store.task_detail(&other).unwrap().state.comments.len(),
        1,
        "the note the restore lost came back"
    );
    assert_converged(&[&max, &zed, &ana]);
}

/// max redacts a task after the night's backup, and the relay is restored
/// from it: it has the older version again, patient details included.
/// Nothing was logged on the task between the backup and the redaction,
/// so max's phone offers his redaction again, the relay takes it, and
/// the older version is gone from the relay again.
#[test]
fn a_redaction_lost_with_a_restore_is_offered_again_and_stands() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = quill_task_with_a_call(&max, &ana);
    max.sync();
    let backup = relay.back_up();
    max.store.redact_patient(&task).unwrap();
    max.sync();
    ana.sync();
    assert!(ana.store.task_detail(&task).unwrap().patient.is_none());

    relay.restore(&backup);
    let report = max.sync();
    assert!(report.offered_again >= 1, "{report:?}");
    ana.sync();
    max.sync();
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    for (who, phone) in [("max", &max), ("ana", &ana), ("lee", &lee)] {
        let d = phone.store.task_detail(&task).unwrap();
        assert!(d.patient.is_none(), "redacted on {who}");
        assert_eq!(d.state.calls.len(), 1, "ana's call on {who}");
        assert!(phone.store.needs_attention().unwrap().is_empty(), "{who}");
    }
    assert_converged(&[&max, &ana, &lee]);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(
        !relay_files_hold(&relay, NAME),
        "the older version is gone again"
    );
}

/// The same, with a call logged between the backup and the redaction:
/// max's redaction carries a copy of it, which the restored relay never
/// had. The relay noted beside its database that it took that redaction,
/// so it takes it again when max's phone offers it: the older version is
/// gone from the relay again, and every phone, a new one too, ends with
/// both calls and without the patient's details. Work on the task goes on.
#[test]
fn a_redaction_lost_with_a_restore_stands_again_with_the_work_logged_before_it() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task_with_a_call(&max, &ana);
    max.sync();
    lee.sync();
    let backup = relay.back_up();
    ana.store
        .log_call(&task, quill_call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    max.sync();
    max.store.redact_patient(&task).unwrap();
    max.sync();
    ana.sync();
    lee.sync();

    relay.restore(&backup);
    for _ in 0..2 {
        for phone in [&max, &ana, &lee] {
            phone.sync();
        }
    }
    ana.store
        .log_call(&task, call(CallOutcome::NoAnswer))
        .unwrap();
    ana.sync();
    max.sync();
    lee.sync();
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_redacted_and_settled(
        &task,
        &[("max", &max), ("ana", &ana), ("lee", &lee), ("mia", &mia)],
        3,
    );
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(
        !relay_files_hold(&relay, NAME),
        "the older version is gone again"
    );
    assert!(!relay_files_hold(&relay, b"MRN-4471"));
    // The note beside the database: the relay's user's alone, like the rest.
    let mut vouched = relay.db().into_os_string();
    vouched.push("-vouched");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&vouched).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

/// max comments on a task twenty times after the night's backup, then
/// redacts it: his phone lays the task out again in more than one change
/// (a change brings at most 16 new events) and deletes the older version.
/// The relay is restored from the backup, which has none of it: the
/// redaction's changes alone bring the comments back, and the relay takes
/// them again.
#[test]
fn a_redaction_lost_with_a_restore_stands_again_with_much_of_its_authors_work() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = quill_task(&max, "ana");
    max.sync();
    ana.sync();
    let backup = relay.back_up();
    pharmacy_comments(&max, &task, 20);
    max.sync();
    max.store.redact_patient(&task).unwrap();
    max.sync();
    ana.sync();
    assert_eq!(
        versions_on(&max, &task),
        1,
        "max's phone holds the redaction alone"
    );
    let laid_out = max
        .store
        .changes_to_offer(&handoff_core::task_doc::doc_id_of(&task, 1), false)
        .unwrap();
    assert!(laid_out.len() > 1, "{} changes", laid_out.len());

    relay.restore(&backup);
    for _ in 0..2 {
        for phone in [&max, &ana] {
            phone.sync();
        }
    }
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_redacted_and_settled(&task, &[("max", &max), ("ana", &ana), ("mia", &mia)], 0);
    assert_eq!(
        mia.store.task_detail(&task).unwrap().state.comments.len(),
        20
    );
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME));
}

/// max redacts, after the night's backup, a task holding twenty comments
/// of his own: the redaction lays it out in more than one change, the
/// later ones copies of his comments alone. ana logs a call on top of it,
/// and max loses his phone. The relay is restored from the backup; ana and
/// lee hold the redaction, and the relay takes every change of it from
/// them as max's (it noted each one that copies work over), then ana's
/// call.
#[test]
fn a_redaction_in_several_changes_lost_with_a_restore_comes_back_from_other_phones() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task(&max, "ana");
    pharmacy_comments(&max, &task, 20);
    max.sync();
    ana.sync();
    lee.sync();
    let backup = relay.back_up();
    max.store.redact_patient(&task).unwrap();
    max.sync();
    ana.sync();
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    lee.sync();
    drop(max);

    relay.restore(&backup);
    for _ in 0..2 {
        for phone in [&ana, &lee] {
            phone.sync();
        }
    }
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_redacted_and_settled(&task, &[("ana", &ana), ("lee", &lee), ("mia", &mia)], 1);
    assert_eq!(
        mia.store.task_detail(&task).unwrap().state.comments.len(),
        20
    );
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME));
}

/// ana logs a call after the night's backup, which max's phone has not
/// pulled when he redacts the task: the relay carries it over to the new
/// document in a change of its own, and ana logs her next call on top of
/// that change. The relay is restored from the backup and loses its own
/// change, which only the phones hold now. They offer it again with the
/// rest, the relay takes it (it noted beside its database that it wrote
/// it), and ana's next call with it: every phone ends with both calls.
/// Either way round: ana first (the relay takes her call back, and carries
/// it over again when it takes max's redaction), or max first.
#[test]
fn the_relays_carry_over_lost_with_a_restore_comes_back_from_the_phones() {
    for ana_first in [true, false] {
        carry_over_lost_with_a_restore(ana_first);
    }
}

fn carry_over_lost_with_a_restore(ana_first: bool) {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task(&max, "ana");
    max.sync();
    ana.sync();
    lee.sync();
    let backup = relay.back_up();
    ana.store
        .log_call(&task, call(CallOutcome::NoAnswer))
        .unwrap();
    ana.sync();
    max.store.redact_patient(&task).unwrap();
    max.sync(); // the relay carries ana's call over
    ana.sync();
    lee.sync();
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    max.sync();
    lee.sync();

    relay.restore(&backup);
    // No device takes the actor the relay carried ana's call over with:
    // the phones hold that change, and offer it again.
    let devices = ana.store.team().unwrap().devices;
    let carried_as = ana
        .store
        .changes_to_offer(&handoff_core::task_doc::doc_id_of(&task, 1), true)
        .unwrap()
        .into_iter()
        .filter_map(|c| automerge::Change::from_bytes(c.bytes).ok())
        .map(|c| c.actor_id().to_hex_string())
        .find(|a| !devices.contains_key(a))
        .expect("the relay's change");
    let invite = relay.invite(&team, "zoe", "front_desk");
    let (status, body) = enrol_raw(
        &relay,
        serde_json::json!({
            "invite": invite,
            "actor": carried_as,
            "token": "ab".repeat(32),
        }),
    );
    assert_eq!(status, 409, "{body}");
    let order = match ana_first {
        true => [&ana, &max, &lee],
        false => [&max, &lee, &ana],
    };
    for _ in 0..2 {
        for phone in order {
            phone.sync();
        }
    }
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    for (who, phone) in [("max", &max), ("ana", &ana), ("lee", &lee), ("mia", &mia)] {
        let d = phone.store.task_detail(&task).unwrap();
        assert!(d.patient.is_none(), "redacted on {who} ({ana_first})");
        let outcomes: Vec<_> = d.state.calls.iter().map(|c| c.attempt.outcome).collect();
        assert_eq!(
            outcomes,
            vec![CallOutcome::NoAnswer, CallOutcome::Reached],
            "both calls, once each, on {who} ({ana_first})"
        );
        assert!(phone.store.needs_attention().unwrap().is_empty(), "{who}");
        assert!(phone.store.outbox(10).unwrap().is_empty(), "{who}");
    }
    assert_converged(&[&max, &ana, &lee, &mia]);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(
        !relay_files_hold(&relay, NAME),
        "the older version is gone again"
    );
}

/// max redacts a task after the night's backup, with ana's call (logged
/// after the backup) copied into it, and then loses his phone. The relay
/// is restored from the backup: it has the older version again, patient
/// details included, and max's phone will never offer his redaction. ana
/// and lee hold it, and the relay takes it from them as max's (it noted
/// beside its database that it took it): the older version is gone again.
#[test]
fn a_redaction_lost_with_a_restore_comes_back_from_other_phones_once_its_authors_is_lost() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task(&max, "ana");
    max.sync();
    ana.sync();
    lee.sync();
    let backup = relay.back_up();
    ana.store
        .log_call(&task, quill_call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    max.sync();
    max.store.redact_patient(&task).unwrap();
    max.sync();
    ana.sync();
    lee.sync();
    drop(max);

    relay.restore(&backup);
    for _ in 0..2 {
        for phone in [&ana, &lee] {
            phone.sync();
        }
    }
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_redacted_and_settled(&task, &[("ana", &ana), ("lee", &lee), ("mia", &mia)], 1);
    // A change of the redacted task the relay never noted is still only
    // its author's to push.
    ana.store
        .log_call(&task, call(CallOutcome::NoAnswer))
        .unwrap();
    let anas = ana.store.outbox(10).unwrap();
    let verdicts = RawPush::to(&relay).verdicts(
        &lee.settings().token,
        vec![doc_change(&anas[0].doc_id, anas[0].bytes.clone())],
    );
    assert!(
        matches!(
            verdicts[..],
            [Verdict::Refused {
                code: RefusalCode::ActorMismatch,
                ..
            }]
        ),
        "{verdicts:?}"
    );
    ana.sync();
    lee.sync();
    assert_eq!(lee.store.task_detail(&task).unwrap().state.calls.len(), 2);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(
        !relay_files_hold(&relay, NAME),
        "the older version is gone again"
    );
    assert!(!relay_files_hold(&relay, b"MRN-4471"));
}

/// max redacts a task only he ever wrote to, after the night's backup,
/// and then loses his phone. The relay is restored from the backup: it has
/// the older version again, patient details included. ana and lee hold the
/// redaction, and the relay takes it from them as max's (it noted every
/// redaction it took): the older version is gone again.
#[test]
fn a_redaction_of_only_its_authors_work_lost_with_a_restore_comes_back_from_other_phones() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task(&max, "ana");
    max.sync();
    ana.sync();
    lee.sync();
    let backup = relay.back_up();
    max.store.redact_patient(&task).unwrap();
    max.sync();
    ana.sync();
    lee.sync();
    drop(max);

    relay.restore(&backup);
    for _ in 0..2 {
        for phone in [&ana, &lee] {
            phone.sync();
        }
    }
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_redacted_and_settled(&task, &[("ana", &ana), ("lee", &lee), ("mia", &mia)], 0);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(
        !relay_files_hold(&relay, NAME),
        "the older version is gone again"
    );
}

/// lee redacts a task after the night's backup, with ana's call (logged
/// after it) copied in, and then leaves the clinic: max deactivates her,
/// and her phone is gone. The relay is restored from the backup. What the
/// relay took from lee once stands: it takes her redaction again from the
/// phones that hold it, and everyone ends with ana's call and without the
/// patient's details.
#[test]
fn a_redaction_lost_with_a_restore_stands_though_its_author_left_since() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task(&max, "ana");
    max.sync();
    ana.sync();
    lee.sync();
    let backup = relay.back_up();
    ana.store
        .log_call(&task, quill_call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    lee.sync();
    lee.store.redact_patient(&task).unwrap();
    lee.sync();
    ana.sync();
    max.sync();
    // ana's phone has not heard of it yet.
    set_member(&max, "lee", Role::Manager, false, false);
    max.sync();
    drop(lee);

    relay.restore(&backup);
    for _ in 0..2 {
        for phone in [&max, &ana] {
            phone.sync();
        }
    }
    for phone in [&max, &ana] {
        let team = phone.store.team().unwrap();
        assert!(!team.members["lee"].active, "lee's leaving came back too");
    }
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_redacted_and_settled(&task, &[("max", &max), ("ana", &ana), ("mia", &mia)], 1);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME));
}

/// lee's phone takes max's redaction in at the end of a full page: the
/// relay's copy of ana's calls (which max had not seen) comes in the next
/// page, so her phone copies them over itself, and the relay notes that it
/// took lee's copy. ana logs a call on top of it. lee then leaves the
/// clinic and her phone is gone, and the relay is restored from a backup
/// taken before all this. What the relay took from lee once stands: it
/// takes her copy again from the phones that hold it, and ana's call, which
/// builds on it, reaches everyone.
#[test]
fn a_copy_a_phone_made_into_a_redacted_task_stands_after_a_restore_though_its_author_left() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = quill_task(&max, "ana");
    let busy = max
        .store
        .delegate(task_for("Order supplies", Some("max"), None))
        .unwrap();
    max.sync();
    ana.sync();
    ana.store
        .log_call(&task, quill_call(CallOutcome::NoAnswer))
        .unwrap();
    ana.sync();
    lee.sync();
    let backup = relay.back_up();

    // A page ends with the redaction.
    for i in 1..handoff_server::team_state::PAGE_CHANGES {
        max.store.comment(&busy, &format!("box {i}")).unwrap();
    }
    max.store.redact_patient(&task).unwrap();
    max.sync();
    lee.sync();
    let redacted = handoff_core::task_doc::doc_id_of(&task, 1);
    assert!(
        !lee.store
            .changes_to_offer(&redacted, false)
            .unwrap()
            .is_empty(),
        "lee's phone copied ana's call over itself (the relay's copy came in the next page)"
    );
    ana.sync();
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    set_member(&max, "lee", Role::Manager, false, false);
    max.sync();
    drop(lee);

    relay.restore(&backup);
    for _ in 0..2 {
        for phone in [&max, &ana] {
            phone.sync();
        }
    }
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    assert_redacted_and_settled(&task, &[("max", &max), ("ana", &ana), ("mia", &mia)], 2);
    assert_eq!(relay.terminate().code(), Some(0));
    assert!(!relay_files_hold(&relay, NAME));
}
