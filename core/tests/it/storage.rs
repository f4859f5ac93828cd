//! Durability, reopening, compaction, archiving and redaction.

use handoff_core::store::Offered;
use handoff_core::*;

use crate::clinic::*;

/// The automerge hash of a change in the outbox.
fn hash_of(c: &store::OutgoingChange) -> [u8; 32] {
    automerge::Change::from_bytes(c.bytes.clone())
        .unwrap()
        .hash()
        .0
}

fn reopen(c: &Clinic, i: usize, user: &str) -> Store {
    Store::open(
        c.dir.path().join(format!("{i}-{user}.db")),
        &KEY,
        options(&c.clock),
    )
    .unwrap()
}

#[test]
fn reopening_restores_every_task_view_and_pending_change() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    c.at("ana").log_call(&t, call(CallOutcome::Busy)).unwrap();
    let (queue, detail, out) = (
        c.at("ana").my_queue().unwrap(),
        c.at("ana").task_detail(&t).unwrap(),
        outbox(c.at("ana")),
    );
    let again = reopen(&c, 1, "ana");
    assert_eq!(again.my_queue().unwrap(), queue);
    assert_eq!(again.task_detail(&t).unwrap(), detail);
    assert_eq!(outbox(&again), out);
    assert_eq!(again.device_actor(), c.at("ana").device_actor());
}

#[test]
fn a_long_history_is_compacted_into_a_snapshot_and_reopens_the_same() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    let comment = |i: i64| {
        c.clock.advance(1000);
        c.at("ana").comment(&t, &format!("note {i}")).unwrap();
    };
    for i in 0..(2 * store::COMPACT_AFTER) {
        comment(i);
    }
    let detail = c.at("ana").task_detail(&t).unwrap();
    assert_eq!(
        detail.state.comments.len(),
        2 * store::COMPACT_AFTER as usize
    );
    let again = reopen(&c, 1, "ana");
    assert_eq!(again.task_detail(&t).unwrap(), detail);
    // Every change is offered to the relay.
    assert_eq!(outbox(&again).len(), 2 * store::COMPACT_AFTER as usize);
    // And another device gets the same task from those changes.
    c.send("ana", "max");
    assert_eq!(c.at("max").task_detail(&t).unwrap().state, detail.state);
    // Sent: kept with the task's changes, and folded into its snapshot by
    // the next write.
    drop(again);
    let sent = c.at("ana").outbox(usize::MAX >> 1).unwrap();
    c.at("ana").outbox_delivered(&sent).unwrap();
    let path = c.dir.path().join("1-ana.db");
    let rows = || -> i64 {
        raw(&path)
            .query_row(
                "SELECT count(*) FROM changes WHERE doc_id = ?1",
                [&t],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(rows() >= 2 * store::COMPACT_AFTER, "{}", rows());
    comment(2 * store::COMPACT_AFTER);
    assert_eq!(rows(), 0, "compacted");
    let detail = c.at("ana").task_detail(&t).unwrap();
    assert_eq!(
        detail.state.comments.len(),
        2 * store::COMPACT_AFTER as usize + 1
    );
    assert_eq!(reopen(&c, 1, "ana").task_detail(&t).unwrap(), detail);
    assert_eq!(outbox(c.at("ana")).len(), 1, "only the last one unsent");
}

#[test]
fn finished_tasks_past_the_window_are_evicted_but_never_with_unsent_changes() {
    let c = Clinic::with(&["max", "tom"]);
    let old = c
        .at("max")
        .delegate(task_for("tom", DelegationLevel::Delegable))
        .unwrap();
    let open = c.handed_to("tom");
    c.at("tom").complete(&old, "").unwrap();
    c.clock.advance(31 * DAY_MS);
    assert_eq!(
        c.at("tom").archive_finished().unwrap(),
        0,
        "the completion is not sent yet"
    );
    let sent = c.at("tom").outbox(1000).unwrap();
    c.at("tom").outbox_delivered(&sent).unwrap();
    assert_eq!(c.at("tom").archive_finished().unwrap(), 1);
    assert!(matches!(
        c.at("tom").task_detail(&old),
        Err(Error::Archived(_))
    ));
    assert_eq!(c.at("tom").task_ids().unwrap(), vec![open.clone()]);
    let k = c
        .at("tom")
        .kpis(MONDAY_9AM - DAY_MS, MONDAY_9AM + DAY_MS)
        .unwrap();
    assert_eq!(
        k.iter().find(|k| k.user_id == "tom").unwrap().done,
        1,
        "KPIs keep archived work"
    );
}

#[test]
fn redaction_recreates_the_task_without_the_patients_history_and_loses_no_work() {
    let c = Clinic::with(&["max", "ana", "lee"]);
    let t = c.handed_to("ana");
    let before: Vec<u8> = outbox(c.at("max"))
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    assert!(
        before.windows(12).any(|w| w == b"Jordan Quill"),
        "control: the name is in the old changes"
    );
    // ana logs a call offline while max redacts.
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.at("max").redact_patient(&t).unwrap();
    let after = outbox(c.at("max"));
    assert!(after
        .iter()
        .all(|(d, b)| d != &t && !b.windows(12).any(|w| w == b"Jordan Quill")));
    let d = c.at("max").task_detail(&t).unwrap();
    assert_eq!(d.patient, None);
    c.sync(); // ana migrates to the new document and carries her call over
    c.sync(); // and everyone gets the carried-over call
    for u in ["max", "ana", "lee"] {
        let d = c.at(u).task_detail(&t).unwrap();
        assert_eq!(d.patient, None, "on {u}");
        assert_eq!(d.state.calls.len(), 1, "the offline call survived on {u}");
        assert_eq!(d.state.calls[0].attempt.outcome, CallOutcome::Reached);
    }
    assert_eq!(
        c.at("ana").task_detail(&t).unwrap().state,
        c.at("lee").task_detail(&t).unwrap().state
    );
    assert!(matches!(
        c.at("ana").redact_patient(&t),
        Err(Error::Refused(Refusal::NotPermitted { .. }))
    ));
}

/// Two delegators remove the patient's details at the same time: the next
/// generation is laid out twice, with two events lists. Every replica reads
/// both, so nothing either wrote after redacting, nor the call only one of
/// them had seen, is lost, and all agree.
#[test]
fn two_redactions_at_once_keep_everyones_events() {
    let c = Clinic::with(&["max", "ana", "lee"]);
    let t = c.handed_to("ana");
    c.at("ana")
        .log_call(&t, call(CallOutcome::NoAnswer))
        .unwrap();
    c.send("ana", "lee");
    c.at("max").redact_patient(&t).unwrap();
    c.at("lee").redact_patient(&t).unwrap();
    c.at("max").comment(&t, "max, after redacting").unwrap();
    c.at("lee").comment(&t, "lee, after redacting").unwrap();
    c.sync();
    c.sync();
    let first = c.at("max").task_detail(&t).unwrap();
    for u in ["max", "ana", "lee"] {
        let d = c.at(u).task_detail(&t).unwrap();
        assert_eq!(d.state, first.state, "on {u}");
        assert_eq!(d.patient, None, "on {u}");
        assert_eq!(d.state.calls.len(), 1, "on {u}");
        let mut comments: Vec<_> = d.state.comments.iter().map(|c| c.text.as_str()).collect();
        comments.sort_unstable();
        assert_eq!(
            comments,
            ["lee, after redacting", "max, after redacting"],
            "on {u}"
        );
    }
    // Later work lands once, whoever writes it.
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.sync();
    for u in ["max", "ana", "lee"] {
        assert_eq!(
            c.at(u).task_detail(&t).unwrap().state.calls.len(),
            2,
            "on {u}"
        );
    }
}

#[test]
fn a_document_that_is_not_what_its_id_says_is_ignored() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    let before = c.at("ana").task_detail(&t).unwrap();
    // A document named "decoy" whose layout claims to be generation 9 of t.
    let actor = automerge::ActorId::from(hex::decode(c.at("max").device_actor()).unwrap());
    let mut decoy = task_doc::new_doc(&t, 9, &actor).unwrap();
    decoy.commit();
    let bytes = decoy.get_last_local_change().unwrap().raw_bytes().to_vec();
    c.at("ana")
        .apply_remote(&[("decoy".to_owned(), bytes)])
        .unwrap();
    assert_eq!(c.at("ana").task_detail(&t).unwrap(), before);
    assert_eq!(c.at("ana").task_ids().unwrap(), vec![t.clone()]);
    // And the real document still takes work.
    c.at("max").comment(&t, "still here").unwrap();
    c.sync();
    assert_eq!(c.at("ana").task_detail(&t).unwrap().state.comments.len(), 1);
}

/// A change refused only for what it builds on stays where it is: the
/// user's work stays visible on this phone, also after it reopens, and
/// shows in needs attention.
#[test]
fn a_change_refused_for_what_it_builds_on_stays_in_its_task_after_reopening() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    let ana = c.at("ana");
    ana.log_call(&t, call(CallOutcome::Reached)).unwrap();
    let detail = ana.task_detail(&t).unwrap();
    let queued = ana.outbox(10).unwrap();
    let call_change = queued.last().unwrap();
    assert_eq!(
        ana.outbox_refused(
            call_change,
            "missing_dependencies",
            "builds on what the relay lacks"
        )
        .unwrap(),
        Some(0),
        "kept in place, nothing written again"
    );
    assert_eq!(ana.task_detail(&t).unwrap(), detail);
    let reopened = reopen(&c, 1, "ana");
    assert_eq!(reopened.task_detail(&t).unwrap(), detail);
    assert!(
        !reopened.outbox(10).unwrap().contains(call_change),
        "not offered again"
    );
    assert_eq!(reopened.needs_attention().unwrap().len(), 1);
}

#[test]
fn a_refused_change_is_set_aside_and_the_work_built_on_it_is_written_again() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    let ana = c.at("ana");
    ana.log_call(&t, call(CallOutcome::Reached)).unwrap();
    ana.submit(&t, "done").unwrap();
    ana.comment(&t, "left the plan at the desk").unwrap();
    let queued = ana.outbox(10).unwrap();
    assert_eq!(queued.len(), 3);
    // The relay took the call, refused the submission, and so the comment.
    ana.outbox_delivered(&queued[..1]).unwrap();
    assert_eq!(
        ana.outbox_refused(&queued[1], "not_permitted", "not allowed")
            .unwrap(),
        Some(0),
        "held: a relay restored from a backup may lack what allowed it"
    );
    assert_eq!(
        ana.outbox_refused(&queued[2], "missing_dependencies", "builds on it")
            .unwrap(),
        Some(0),
        "kept in place: it builds on the held one"
    );
    // No restore known (the sync engine's call): set aside, and the
    // comment written again.
    assert_eq!(
        ana.release_held(None).unwrap(),
        Released {
            set_aside: 1,
            written_again: 1,
            taken_back: 1
        }
    );
    assert_eq!(ana.release_held(None).unwrap(), Released::default());
    let d = ana.task_detail(&t).unwrap();
    assert_eq!(
        d.state.status,
        TaskStatus::InProgress,
        "submission set aside"
    );
    assert_eq!((d.state.calls.len(), d.state.comments.len()), (1, 1));
    let again = ana.outbox(10).unwrap();
    assert_eq!(again.len(), 1, "the comment, written again");
    let attention = ana.needs_attention().unwrap();
    assert_eq!(attention.len(), 1, "{attention:?}");
    assert_eq!(attention[0].action, "submitted");
    // What is queued applies on a device that never saw the submission.
    c.at("max")
        .apply_remote(&[
            (queued[0].doc_id.clone(), queued[0].bytes.clone()),
            (again[0].doc_id.clone(), again[0].bytes.clone()),
        ])
        .unwrap();
    assert_eq!(c.at("max").task_detail(&t).unwrap().state, d.state);
    // And the store reopens to the same.
    let reopened = reopen(&c, 1, "ana");
    assert_eq!(reopened.task_detail(&t).unwrap().state, d.state);
    assert_eq!(reopened.outbox(10).unwrap(), again);
}

#[test]
fn a_refused_change_already_folded_into_the_snapshot_is_set_aside_too() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    let ana = c.at("ana");
    ana.submit(&t, "done").unwrap();
    // Enough work on top of it that the document is compacted.
    for i in 0..40 {
        ana.comment(&t, &format!("note {i}")).unwrap();
    }
    let queued = ana.outbox(100).unwrap();
    assert_eq!(queued.len(), 41);
    assert_eq!(
        ana.outbox_refused(&queued[0], "not_permitted", "not allowed")
            .unwrap(),
        Some(0)
    );
    assert_eq!(ana.release_held(None).unwrap().written_again, 40);
    let d = ana.task_detail(&t).unwrap();
    assert_eq!(d.state.status, TaskStatus::Assigned);
    assert_eq!(d.state.comments.len(), 40);
    let again = ana.outbox(100).unwrap();
    assert_eq!(again.len(), 40);
    // Everything queued applies on a phone that never saw the submission.
    c.at("max")
        .apply_remote(
            &again
                .iter()
                .map(|o| (o.doc_id.clone(), o.bytes.clone()))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    assert_eq!(c.at("max").task_detail(&t).unwrap().state, d.state);
    let reopened = reopen(&c, 1, "ana");
    assert_eq!(reopened.task_detail(&t).unwrap().state, d.state);
}

/// Checkpoints run on the store's own thread, and the log still starts over:
/// the WAL stays near SQLite's usual thousand pages instead of growing until
/// the writer's fallback (without the thread it reaches 6,000 here).
#[test]
fn the_write_ahead_log_is_checkpointed_off_the_write_path_and_stays_short() {
    let c = Clinic::with(&["max", "ana"]);
    let tasks: Vec<TaskId> = (0..8)
        .map(|_| {
            c.at("max")
                .delegate(task_for("ana", DelegationLevel::Delegable))
                .unwrap()
        })
        .collect();
    c.sync();
    let wal = c.dir.path().join("1-ana.db-wal");
    let frame = 4096 + 24;
    // About five pages a write: several times the thousand-page threshold.
    let writes = 1500;
    for i in 0..writes {
        c.at("ana")
            .comment(&tasks[i % tasks.len()], &format!("note {i}"))
            .unwrap();
    }
    let longest = std::fs::metadata(&wal).unwrap().len() / frame;
    assert!(
        longest < 2500,
        "the log reached {longest} pages over {writes} writes"
    );
    let again = reopen(&c, 1, "ana");
    let comments: usize = tasks
        .iter()
        .map(|t| again.task_detail(t).unwrap().state.comments.len())
        .sum();
    assert_eq!(comments, writes);
}

/// A store whose team document no longer decodes fails to open with an
/// error, and promptly: the checkpoint thread starts only once nothing can
/// fail (before, an error after it started left `open` waiting on it).
#[test]
fn a_damaged_store_fails_to_open_with_an_error_and_does_not_hang() {
    let c = Clinic::with(&["max", "ana"]);
    let path = c.dir.path().join("1-ana.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
            hex::encode(KEY)
        ))
        .unwrap();
        let damaged = conn
            .execute("UPDATE changes SET bytes = x'00' WHERE doc_id = 'team'", [])
            .unwrap();
        assert!(damaged > 0, "the team document has changes to damage");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let opening = path.clone();
    let clock = c.clock.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Store::open(opening, &KEY, options(&clock)).map(|_| ()));
    });
    let opened = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("Store::open returned");
    assert!(matches!(opened, Err(Error::Corrupt(_))), "{opened:?}");
}

/// Two sync rounds can push the same outbox (pull-to-refresh while live
/// sync runs). When the second answer arrives after the first emptied the
/// outbox and the user wrote again, the new change has the id an answered
/// one had: it must stay queued, and a refusal of the old change must not
/// land on it either.
#[test]
fn a_late_answer_to_an_earlier_push_leaves_a_newer_change_queued() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let max = c.at("max");
    let pushed = max.outbox(100).unwrap();
    max.outbox_delivered(&pushed).unwrap();
    max.comment(&t, "call after lunch").unwrap();
    let newer = max.outbox(100).unwrap();
    assert_eq!(newer.len(), 1);
    assert!(
        pushed.iter().any(|o| o.id == newer[0].id),
        "SQLite gave the new change an answered one's id"
    );
    max.outbox_delivered(&pushed).unwrap();
    let stale = pushed.iter().find(|o| o.id == newer[0].id).unwrap();
    assert_eq!(
        max.outbox_refused(stale, "not_permitted", "late").unwrap(),
        None
    );
    assert_eq!(
        max.outbox(100).unwrap(),
        newer,
        "the comment is still queued"
    );
    assert!(max.needs_attention().unwrap().is_empty());
}

/// A manager's team edit the relay refuses (say the role was taken away
/// while the phone was offline) leaves the team as everyone else has it;
/// the edit made on top of it is refused in turn, both show in needs
/// attention, and the next team edit reaches other phones.
#[test]
fn a_refused_team_change_is_set_aside_and_team_edits_go_on() {
    let c = Clinic::with(&["max", "ana"]);
    c.sync();
    let max = c.at("max");
    let sent = max.outbox(1000).unwrap();
    max.outbox_delivered(&sent).unwrap();
    let everyone_elses = c.at("ana").team().unwrap();
    assert_eq!(max.team().unwrap(), everyone_elses);
    let sop = |id: &str| SopTemplate {
        id: id.into(),
        name: format!("Template {id}"),
        checklist: vec!["Verify identity".into()],
        questions: vec![],
    };
    max.put_sop(&sop("X-1")).unwrap();
    max.put_sop(&sop("X-2")).unwrap();
    let queued = max.outbox(10).unwrap();
    assert_eq!(queued.len(), 2);
    assert_eq!(
        max.outbox_refused(&queued[0], "forbidden", "not a manager")
            .unwrap(),
        Some(0)
    );
    assert_ne!(max.team().unwrap(), everyone_elses, "held");
    assert_eq!(max.release_held(None).unwrap().set_aside, 1);
    assert_eq!(max.team().unwrap(), everyone_elses, "set aside");
    assert_eq!(max.outbox(10).unwrap(), queued[1..], "still queued");
    let waits_for_nothing = || {
        let merged = reopen(&c, 0, "max")
            .apply_remote(&[(sent[0].doc_id.clone(), sent[0].bytes.clone())])
            .unwrap();
        assert!(merged.incomplete.is_empty(), "{merged:?}");
    };
    // The edit built on the one set aside is queued, not part of the team.
    waits_for_nothing();
    assert_eq!(
        max.outbox_refused(&queued[1], "missing_dependencies", "builds on it")
            .unwrap(),
        Some(0)
    );
    assert_eq!(max.needs_attention().unwrap().len(), 2);
    assert_eq!(reopen(&c, 0, "max").team().unwrap(), everyone_elses);
    // Refused in turn, it stays out: the team document waits for nothing
    // (or every pull would ask the relay to repair it).
    waits_for_nothing();

    max.put_sop(&sop("X-3")).unwrap();
    c.at("ana").apply_remote(&outbox(max)).unwrap();
    let ana_team = c.at("ana").team().unwrap();
    assert!(
        ana_team.sops.contains_key("X-3"),
        "{:?}",
        ana_team.sops.keys()
    );
    assert_eq!(ana_team, max.team().unwrap());
}

/// A refused change stays in its author's needs attention when a
/// delegator removes the task's patient details: the redaction's newer
/// document takes the item, with its code and reason, and only the
/// scrubbed form of what was typed. (It was deleted with the older
/// document's unsent changes: the user's one sign of the refusal
/// vanished.)
#[test]
fn a_refused_change_stays_in_needs_attention_through_a_redaction() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    let ana = c.at("ana");
    ana.comment(&t, "patient asked about the biopsy").unwrap();
    let queued = ana.outbox(10).unwrap();
    assert_eq!(
        ana.outbox_refused(queued.last().unwrap(), "not_permitted", "not allowed")
            .unwrap(),
        Some(0)
    );
    assert_eq!(ana.release_held(None).unwrap().set_aside, 1);
    // What the refused change holds, as the file has it.
    let refused_text = || -> Vec<String> {
        let conn = raw(&c.dir.path().join("1-ana.db"));
        let mut stmt = conn
            .prepare("SELECT bytes FROM outbox WHERE refused_code IS NOT NULL")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.flat_map(|b| {
            let change = automerge::Change::from_bytes(b.unwrap()).unwrap();
            handoff_core::task_doc::events_in_change(&change)
        })
        .map(|e| match e.action {
            Action::Commented { text } => text,
            other => panic!("{other:?}"),
        })
        .collect()
    };
    assert_eq!(refused_text(), ["patient asked about the biopsy"]);
    let before = ana.needs_attention().unwrap();
    assert_eq!(before.len(), 1, "{before:?}");

    c.at("max").redact_patient(&t).unwrap();
    c.send("max", "ana");
    assert_eq!(ana.task_ids().unwrap(), vec![t.clone()]);
    assert_eq!(ana.needs_attention().unwrap(), before);
    assert_eq!(refused_text(), ["[redacted]"]);
    // Moved to the newer document, made like a first change, the item does
    // not make the redaction look refused: the phone does not go back to
    // the older document, patient details and all.
    assert!(ana.refused_redactions().unwrap().is_empty());
}

/// Two sync rounds may run at once (live sync and a pull-to-refresh). Each
/// moves the relay cursor only from where it found it, so a round that
/// read it before the other set it back to the feed's start (its user was
/// promoted and may read more) does not move it on again: the tasks she
/// may now read would never be fetched.
#[test]
fn the_relay_cursor_moves_only_from_where_a_round_found_it() {
    let c = Clinic::with(&["max"]);
    let s = c.at("max");
    let at = |seq, tag| FeedCursor { seq, tag };
    let start = FeedCursor::default();
    assert_eq!(s.relay_cursor().unwrap(), start);
    assert!(s.move_relay_cursor(start, at(40, 7)).unwrap());
    assert_eq!(s.relay_cursor().unwrap(), at(40, 7));
    // One round reads 40 and fetches on; the other starts over.
    assert!(s.move_relay_cursor(at(40, 7), start).unwrap());
    assert!(!s.move_relay_cursor(at(40, 7), at(55, 9)).unwrap());
    assert_eq!(s.relay_cursor().unwrap(), start);
    // The same seq under another tag is another place in another feed.
    assert!(s.move_relay_cursor(start, at(40, 8)).unwrap());
    assert!(!s.move_relay_cursor(at(40, 7), at(55, 9)).unwrap());
}

/// The sync engine's transfer budgets are kept for the next start, and
/// never written into a store wiped meanwhile (a round still under way
/// when another was told of the revocation): it stays empty.
#[test]
fn transfer_budgets_are_kept_but_not_in_a_wiped_store() {
    let c = Clinic::with(&["max"]);
    let s = c.at("max");
    assert_eq!(s.transfer_budgets().unwrap(), None);
    s.save_transfer_budgets("65536:1800000000000:4194304:-")
        .unwrap();
    assert_eq!(
        s.transfer_budgets().unwrap().as_deref(),
        Some("65536:1800000000000:4194304:-")
    );
    s.wipe().unwrap();
    assert_eq!(s.transfer_budgets().unwrap(), None);
    s.save_transfer_budgets("16384:-:16384:-").unwrap();
    assert_eq!(s.transfer_budgets().unwrap(), None);
    assert!(s.was_wiped().unwrap());
}

/// Max's task, delivered to the relay, and his comment on it not yet sent.
fn a_comment_unsent() -> (Clinic, TaskId, OutgoingChange) {
    let c = Clinic::with(&["max"]);
    let s = c.at("max");
    let t = s
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    s.outbox_delivered(&s.outbox(100).unwrap()).unwrap();
    s.comment(&t, "Call before noon").unwrap();
    let comment = s.outbox(10).unwrap().pop().unwrap();
    (c, t, comment)
}

/// A change the relay refused for what it builds on marks its document to
/// be offered again (a relay restored from a backup lost this device's
/// earlier changes), and is queued again after that offer, once: refused
/// again, it stays refused, in "needs attention". An offer that still
/// lacks something (another device's lost change) is tried for
/// `MAX_OFFERS` tries: an offer that counts is one, any other a quarter
/// (`OFFERS_PER_TRY`).
#[test]
fn a_change_refused_for_what_it_builds_on_is_queued_again_once_after_its_document_is_offered() {
    let (c, _, comment) = a_comment_unsent();
    let s = c.at("max");
    let doc = comment.doc_id.clone();
    let refuse = || {
        s.outbox_refused(
            &comment,
            "missing_dependencies",
            "it builds on a change the relay does not have",
        )
        .unwrap()
    };
    refuse();
    assert!(s.outbox(10).unwrap().is_empty());
    assert_eq!(s.to_offer_again().unwrap(), vec![(doc.clone(), 0)]);
    // Offered: every change this device wrote to the task, in order.
    let own = s.changes_to_offer(&doc, true).unwrap();
    assert!(own.len() >= 2, "the delegation and the comment");
    assert_eq!(
        own.last(),
        Some(&store::ChangeToOffer {
            hash: hash_of(&comment),
            bytes: comment.bytes.clone(),
            sent: false,
            mine: true,
        }),
        "still in the outbox: never acknowledged"
    );
    assert!(own[0].sent, "the delegation was");
    assert!(s.offered_again(&doc, Offered::All).unwrap(), "queued again");
    assert!(s.to_offer_again().unwrap().is_empty());
    assert_eq!(s.outbox(10).unwrap(), vec![comment.clone()]);
    refuse();
    assert!(s.to_offer_again().unwrap().is_empty(), "marked once");
    assert!(s.outbox(10).unwrap().is_empty());
    assert_eq!(s.needs_attention().unwrap().len(), 1);
    // The relay was restored: every document is to be offered again.
    assert!(
        s.relay_restarted().unwrap() >= 2,
        "the team's and the task's"
    );
    // An offer on news that does not count (the team's, another
    // member's edit) is a quarter of a try; one that counts, a whole one.
    let offered = |counts| {
        assert!(s.to_offer_again().unwrap().iter().any(|(d, _)| *d == doc));
        assert!(!s.offered_again(&doc, Offered::NotAll { counts }).unwrap());
    };
    for _ in 0..store::OFFERS_PER_TRY {
        offered(false);
    }
    assert!(s
        .to_offer_again()
        .unwrap()
        .contains(&(doc.clone(), store::OFFERS_PER_TRY)));
    for _ in 1..store::MAX_OFFERS {
        offered(true);
    }
    assert!(!s.to_offer_again().unwrap().iter().any(|(d, _)| *d == doc));
    // Offers that never count end too.
    s.relay_restarted().unwrap();
    for _ in 0..store::MAX_OFFERS * store::OFFERS_PER_TRY {
        offered(false);
    }
    assert!(!s.to_offer_again().unwrap().iter().any(|(d, _)| *d == doc));
    assert_eq!(s.outbox(10).unwrap(), vec![], "still refused");
}

/// A change refused for what the relay's team document says is held, in
/// its task and in needs attention, its document marked to be offered
/// again (a relay restored from a backup may have lost the team change
/// that allowed it). Offered with all taken, it is queued again; else it
/// is set aside once no restore is known: none found, or the last found
/// longer ago than `RESTORE_WINDOW_MS`.
#[test]
fn a_change_refused_for_what_the_team_says_is_held_while_a_restore_is_known() {
    let (c, t, comment) = a_comment_unsent();
    let s = c.at("max");
    let doc = comment.doc_id.clone();
    let refuse = || {
        s.outbox_refused(&comment, "not_permitted", "ana is not a member")
            .unwrap()
    };
    assert_eq!(refuse(), Some(0));
    assert_eq!(s.task_detail(&t).unwrap().state.comments.len(), 1, "held");
    assert_eq!(s.needs_attention().unwrap().len(), 1);
    assert_eq!(s.to_offer_again().unwrap(), vec![(doc.clone(), 0)]);
    assert!(s.outbox(10).unwrap().is_empty(), "not pushed meanwhile");
    // The relay took all of the document: queued again, once.
    assert!(s.offered_again(&doc, Offered::All).unwrap());
    assert_eq!(s.outbox(10).unwrap(), vec![comment.clone()]);
    assert!(s.needs_attention().unwrap().is_empty());
    assert_eq!(refuse(), Some(0));
    assert_eq!(
        s.task_detail(&t).unwrap().state.comments.len(),
        0,
        "refused again: set aside"
    );
    assert_eq!(s.release_held(None).unwrap(), store::Released::default());

    // Another, with a restore found: held until the window has passed.
    s.comment(&t, "Second try").unwrap();
    let second = s.outbox(10).unwrap().pop().unwrap();
    assert!(!s.restore_known().unwrap());
    s.relay_restarted().unwrap();
    assert!(s.restore_known().unwrap());
    assert_eq!(
        s.outbox_refused(&second, "forbidden", "not hers").unwrap(),
        Some(0)
    );
    c.clock.advance(store::RESTORE_WINDOW_MS - 1);
    assert!(s.restore_known().unwrap());
    c.clock.advance(1);
    assert!(!s.restore_known().unwrap());
    let released = s.release_held(None).unwrap();
    assert_eq!((released.set_aside, released.written_again), (1, 0));
    assert_eq!(s.task_detail(&t).unwrap().state.comments.len(), 0);
    assert_eq!(s.needs_attention().unwrap().len(), 2);

    // A third, held; its document offered again with some change still
    // refused, but this one taken (what it needed came back): queued
    // again to be marked delivered, and never set aside.
    s.relay_restarted().unwrap();
    s.comment(&t, "Third try").unwrap();
    let third = s.outbox(10).unwrap().pop().unwrap();
    assert_eq!(
        s.outbox_refused(&third, "not_permitted", "not a member")
            .unwrap(),
        Some(0)
    );
    assert!(s.outbox(10).unwrap().is_empty());
    assert!(s.taken_on_offer(&doc, &[hash_of(&third)]).unwrap());
    assert_eq!(s.outbox(10).unwrap(), vec![third.clone()]);
    assert_eq!(s.release_held(None).unwrap(), store::Released::default());
    assert_eq!(s.task_detail(&t).unwrap().state.comments.len(), 1, "kept");
    s.outbox_delivered(&[third]).unwrap();
    assert!(s.outbox(10).unwrap().is_empty());

    // A clock set ahead when the restore was seen, then put right: the
    // window counts from when that is noticed, not from the wrong time.
    c.clock.advance(30 * store::RESTORE_WINDOW_MS);
    s.relay_restarted().unwrap();
    c.clock.advance(-30 * store::RESTORE_WINDOW_MS);
    assert!(s.restore_known().unwrap());
    c.clock.advance(store::RESTORE_WINDOW_MS - 1);
    assert!(s.restore_known().unwrap());
    c.clock.advance(1);
    assert!(!s.restore_known().unwrap());
}

/// A remote wipe leaves no row of the user's in any table, a re-read of
/// the feed under way included (its list names the tasks she was sent):
/// only the new identity and the word that the store was wiped.
#[test]
fn a_wipe_mid_reread_leaves_no_row_of_hers_in_any_table() {
    let c = Clinic::with(&["max", "fay"]);
    let max = c.at("max");
    let fay = c.at("fay");
    let task = max.delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    max.put_member(&Member {
        user_id: "fay".into(),
        name: "Fay Obi".into(),
        role: Role::ClinicalAssistant,
        trusted: false,
        active: true,
    })
    .unwrap();
    c.send("max", "fay");
    let reread = fay.rereading().unwrap().unwrap();
    let docs = [task.clone()].into_iter().collect();
    let at = FeedCursor { seq: 10, tag: 1 };
    assert!(fay
        .move_relay_cursor_over(FeedCursor::default(), at, Some(reread), &docs)
        .unwrap());

    fay.wipe().unwrap();
    let conn = raw(&c.dir.path().join("1-fay.db"));
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.contains(&"reread".to_string()), "{tables:?}");
    for table in &tables {
        let rows: i64 = match table.as_str() {
            "meta" => conn.query_row(
                "SELECT count(*) FROM meta WHERE key NOT IN ('actor', 'wiped', 'rules')",
                [],
                |r| r.get(0),
            ),
            _ => conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)),
        }
        .unwrap();
        assert_eq!(rows, 0, "rows left in {table}");
    }
}

/// A re-read of the feed after a change of sight is kept in the store: the
/// documents of each page taken are noted as the cursor moves past it (not
/// those of a page another round took first), and at the head the tasks
/// not among them are dropped, however many rounds it took. A restore ends
/// it without a drop: the relay may just have lost what it did not send.
#[test]
fn a_reread_is_kept_across_rounds_and_drops_only_what_the_relay_did_not_send() {
    let c = Clinic::with(&["max", "fay"]);
    let max = c.at("max");
    let fay = c.at("fay");
    let sent = max.delegate(pooled(Role::FrontDesk)).unwrap();
    let not_sent = max.delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    assert_eq!(fay.rereading().unwrap(), None);
    let fay_as = |role| Member {
        user_id: "fay".into(),
        name: "Fay Obi".into(),
        role,
        trusted: false,
        active: true,
    };
    max.put_member(&fay_as(Role::ClinicalAssistant)).unwrap();
    c.send("max", "fay");
    let first = fay.rereading().unwrap().unwrap();
    let start = FeedCursor::default();
    let at = |seq| FeedCursor { seq, tag: 1 };
    let docs = |d: &[&str]| d.iter().map(|d| d.to_string()).collect();
    // A round that read the cursor before the re-read began, at 0 too
    // (a page the relay judged by the sight before), takes nothing.
    assert!(!fay
        .move_relay_cursor_over(start, at(3), None, &docs(&[not_sent.as_str()]))
        .unwrap());
    assert!(fay
        .move_relay_cursor_over(start, at(10), Some(first), &docs(&[sent.as_str()]))
        .unwrap());
    // Nor does one that read the cursor before this one moved it.
    assert!(!fay
        .move_relay_cursor_over(at(4), at(20), Some(first), &docs(&[not_sent.as_str()]))
        .unwrap());
    assert_eq!(fay.rereading().unwrap(), Some(first), "not at the head yet");
    // Started over meanwhile (her sight changed again): the first one's
    // round finishes nothing, and its pages do not count in the second.
    max.put_member(&fay_as(Role::Manager)).unwrap();
    c.send("max", "fay");
    let second = fay.rereading().unwrap().unwrap();
    assert_ne!(second, first);
    // Where the cursor stood is kept, for the relay to check it still has
    // it while the cursor climbs back (a restore found out even at 0).
    assert_eq!(fay.relay_cursor().unwrap(), start);
    assert_eq!(fay.relay_known_entry().unwrap(), at(10));
    assert_eq!(fay.finish_reread(first).unwrap(), 0);
    assert!(!fay
        .move_relay_cursor_over(start, at(10), Some(first), &docs(&[not_sent.as_str()]))
        .unwrap());
    assert!(fay
        .move_relay_cursor_over(start, at(10), Some(second), &docs(&[sent.as_str()]))
        .unwrap());
    assert_eq!(fay.finish_reread(second).unwrap(), 1);
    assert!(fay.task_detail(&sent).is_ok());
    assert!(matches!(
        fay.task_detail(&not_sent),
        Err(Error::TaskNotFound(_))
    ));
    assert_eq!(fay.rereading().unwrap(), None);
    assert_eq!(fay.finish_reread(second).unwrap(), 0, "none under way");

    // Back at the desk, and the relay found restored meanwhile.
    max.put_member(&fay_as(Role::FrontDesk)).unwrap();
    c.send("max", "fay");
    let third = fay.rereading().unwrap().unwrap();
    fay.relay_restarted().unwrap();
    assert_eq!(fay.rereading().unwrap(), None);
    assert_eq!(fay.relay_known_entry().unwrap(), start, "of the lost feed");
    assert_eq!(fay.finish_reread(third).unwrap(), 0);
    assert!(fay.task_detail(&sent).is_ok());
}

/// While a restore is known, a phone offers the relay every change it
/// holds of a redacted task's document, other devices' too (the relay
/// takes again those it noted: its author's phone may be lost), each
/// after what it builds on. Otherwise, and of any other document, only
/// its own.
#[test]
fn a_redacted_tasks_changes_by_others_are_offered_only_while_a_restore_is_known() {
    let c = Clinic::with(&["max", "ana", "lee"]);
    let t = c.handed_to("ana");
    c.at("max").redact_patient(&t).unwrap();
    c.sync();
    c.at("ana").comment(&t, "left a voicemail").unwrap();
    c.sync();
    let redacted = handoff_core::task_doc::doc_id_of(&t, 1);

    let lee = c.at("lee");
    assert!(lee.changes_to_offer(&redacted, false).unwrap().is_empty());
    let held = lee.changes_to_offer(&redacted, true).unwrap();
    assert!(held.len() >= 2, "max's layout and ana's comment: {held:?}");
    assert!(held.iter().all(|c| !c.mine && c.sent));
    let first = automerge::Change::from_bytes(held[0].bytes.clone()).unwrap();
    assert!(first.deps().is_empty(), "the layout first");

    let ana = c.at("ana").changes_to_offer(&redacted, true).unwrap();
    assert_eq!(ana.len(), held.len());
    assert_eq!(ana.iter().filter(|c| c.mine).count(), 1, "her comment");
    assert!(ana.last().unwrap().mine);
    // Of another document, only her own, restore or not.
    let other = c.handed_to("ana");
    assert!(c.at("ana").task_detail(&other).is_ok(), "she holds it");
    assert!(c
        .at("ana")
        .changes_to_offer(&other, true)
        .unwrap()
        .is_empty());
    assert!(!c
        .at("max")
        .changes_to_offer(&other, true)
        .unwrap()
        .is_empty());
}
