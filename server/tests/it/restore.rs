//! A relay restored from a backup: it lost changes it had acknowledged,
//! which the phones no longer queue. They learn it from the feed (their
//! cursor names an entry the restored feed does not have) or from a push
//! refused for what it builds on, offer their own changes again, and the
//! relay ends with everything again.

use handoff_core::*;

use crate::harness::*;

#[test]
fn a_relay_restored_from_a_backup_gets_back_what_the_phones_had_sent() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    // mia, a second manager, only reads.
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    let task = hand_over(&max, &ana, "Call back about the referral", "ana");
    mia.sync();

    // The night's backup.
    let backup = relay.back_up();

    // The next day's work, every change acknowledged by the relay; kim
    // joins the front desk (the relay writes her device into the team).
    let kim = Phone::enrolled(&relay, &relay.invite(&team, "kim", "front_desk"));
    kim.sync();
    ana.store
        .log_call(&task, call(CallOutcome::NoAnswer))
        .unwrap();
    ana.store.comment(&task, "left a voicemail").unwrap();
    assert_eq!(ana.sync().pushed, 2);
    max.sync();
    max.store.comment(&task, "try again after lunch").unwrap();
    assert_eq!(max.sync().pushed, 1);
    ana.sync();
    mia.sync();
    assert_eq!(
        mia.store.task_detail(&task).unwrap().state.comments.len(),
        2
    );

    // The relay's disk is lost: last night's backup is put back.
    relay.restore(&backup);
    // lee joins: the relay writes her device into the team, where it had
    // written kim's before it lost that change.
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));

    // max hands over more work: a new task builds on nothing lost, and
    // goes. His round learns the relay was restored (his cursor is past
    // its feed's end) and offers his comment again, which the relay cannot
    // take yet: it builds on ana's comment, lost too.
    let booking = max
        .store
        .delegate(task_for("Book the follow-up", Some("ana"), None))
        .unwrap();
    let report = max.sync();
    assert_eq!((report.pushed, report.offered_again), (1, 0), "{report:?}");
    // ana's next call builds on changes the restored relay lacks: her
    // own, and max's comment. Refused for that, her document is offered
    // again: the relay takes her two changes back, but not the call, until
    // max has offered his comment again.
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    let report = ana.sync();
    assert_eq!((report.refused, report.offered_again), (1, 2), "{report:?}");
    // News of another task, more rounds of it than a document is offered
    // again, does not use up ana's offers.
    lee.sync();
    for i in 0..=store::MAX_OFFERS {
        lee.store.comment(&booking, &format!("note {i}")).unwrap();
        lee.sync();
        assert!(ana.sync().pulled > 0);
    }
    // Nor does news of the team (a busy clinic while max is away): each
    // such round offers her document again, as a lost team change may be
    // what it lacks.
    for i in 0..=store::MAX_OFFERS {
        lee.store
            .put_member(&Member {
                user_id: "zoe".into(),
                name: format!("Zoe {i}"),
                role: Role::FrontDesk,
                trusted: false,
                active: true,
            })
            .unwrap();
        lee.sync();
        assert!(ana.sync().pulled > 0);
    }
    // Nor, while the restore is recent, does news of the task itself from
    // others (lee's notes on it): each such round offers it again, but
    // only a lost change coming back uses up a try.
    for i in 0..=store::MAX_OFFERS {
        lee.store
            .comment(&task, &format!("also tried {i}"))
            .unwrap();
        lee.sync();
        assert!(ana.sync().pulled > 0);
    }
    assert_eq!(ana.store.needs_attention().unwrap().len(), 1);
    // News for max: his comment goes now.
    let report = max.sync();
    assert_eq!(report.offered_again, 1, "{report:?}");
    // News for ana: her document is offered again, and her call goes
    // (not counted as lost: the relay never had it).
    let report = ana.sync();
    assert_eq!((report.pushed, report.offered_again), (1, 0), "{report:?}");
    assert!(ana.store.outbox(10).unwrap().is_empty());
    max.sync();
    // The feed has grown past where mia had pulled to, with entries she
    // never saw below it (the new task): her cursor names an entry the
    // feed does not have there, and she starts over.
    mia.sync();
    assert!(
        mia.store.task_detail(&booking).is_ok(),
        "mia has the new task"
    );

    let detail = mia.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.calls.len(), 2);
    assert_eq!(
        detail.state.comments.len(),
        2 + store::MAX_OFFERS as usize + 1
    );
    lee.sync();
    // kim's enrolment was lost with the rest: the relay does not know her
    // phone (she needs a new invite).
    match kim.engine.sync_now() {
        Err(Error::Relay { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (401, "invalid_token"))
        }
        other => panic!("{other:?}"),
    }
    assert_converged(&[&max, &ana, &mia, &lee]);
    for phone in [&max, &ana, &mia, &lee] {
        assert!(phone.store.needs_attention().unwrap().is_empty());
        let team = phone.store.team().unwrap();
        assert!(
            team.devices.values().any(|d| d.user_id == "lee"),
            "lee's device, as the restored relay wrote it"
        );
    }
    // The relay itself has it all: a phone enrolled now reads the same.
    let noa = Phone::enrolled(&relay, &relay.invite(&team, "noa", "manager"));
    noa.sync();
    assert_eq!(
        noa.store.task_detail(&task).unwrap().state,
        detail.state,
        "a new phone reads what the others do"
    );
    // Offered once: the next rounds move nothing.
    for phone in [&max, &ana, &mia, &lee] {
        let report = phone.sync();
        assert_eq!((report.pushed, report.offered_again), (0, 0));
    }
}

/// A push the relay acknowledged after the backup, whose phone's pull then
/// failed: the phone's cursor still stands before the backup's end, where
/// the restored feed has the same entries. The phone names what its push
/// stored in its next pull, learns the relay was restored, and offers its
/// change again.
#[test]
fn a_push_acknowledged_after_the_backup_comes_back_though_its_pull_failed() {
    let mut relay = Relay::start();
    let proxy = crate::proxy::Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Call back about the referral", "ana");
    // More than a pull page: starting over takes ana several pages.
    for i in 0..=handoff_server::team_state::PAGE_CHANGES {
        max.store.comment(&task, &format!("note {i}")).unwrap();
    }
    max.sync();
    // The bytes of a push's reply: a sync that pushes one change, less one
    // that pushes nothing.
    ana.sync();
    proxy.take_counts();
    ana.sync();
    let (_, empty_pull) = proxy.take_counts();
    ana.store.comment(&task, "calling at noon").unwrap();
    assert_eq!(ana.sync().pushed, 1);
    let (_, push_and_pull) = proxy.take_counts();
    let push_reply = push_and_pull - empty_pull;

    let backup = relay.back_up();

    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    // The push's reply comes through (a few bytes more or less: its seq
    // and tag), the pull's does not.
    proxy.cut_replies_after(push_reply + 8);
    assert!(ana.engine.sync_now().is_err(), "the pull was cut");
    assert!(ana.store.outbox(10).unwrap().is_empty(), "acknowledged");

    relay.restore(&backup);
    let report = ana.sync();
    assert_eq!(report.offered_again, 1, "{report:?}");
    max.sync();
    assert_eq!(max.store.task_detail(&task).unwrap().state.calls.len(), 1);
    assert_converged(&[&max, &ana]);
}

/// Work a team change allowed, where the restored relay lost that change:
/// a manager hands a new task and an old one to a member added after the
/// backup. The relay refuses both (no such member), and her phone holds
/// them, in her tasks and in needs attention, instead of setting them
/// aside for good; once the admin's phone has offered its team change
/// again, they go.
#[test]
fn work_needing_a_team_change_the_relay_lost_goes_once_that_change_is_offered_again() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    let task = hand_over(&max, &ana, "Call back about the referral", "ana");
    mia.sync();
    let backup = relay.back_up();

    // After the backup: max adds kai; mia hears of it, then works offline.
    set_member(&max, "kai", Role::ClinicalAssistant, false, true);
    mia.sync();
    let booking = mia
        .store
        .delegate(task_for("Book the follow-up", Some("kai"), None))
        .unwrap();
    mia.store.assign(&task, "kai").unwrap();

    relay.restore(&backup);
    // mia first: the relay has no kai. Held, not set aside.
    let report = mia.sync();
    assert_eq!((report.pushed, report.refused), (0, 2), "{report:?}");
    assert_eq!(
        mia.store
            .task_detail(&booking)
            .unwrap()
            .state
            .assignee
            .as_deref(),
        Some("kai")
    );
    assert_eq!(mia.store.needs_attention().unwrap().len(), 2);
    // max's round finds the relay restored and offers his team change again.
    assert_eq!(max.sync().offered_again, 1);
    // mia hears of the team: her held work goes, and nothing is left refused.
    let report = mia.sync();
    assert_eq!(report.pushed, 2, "{report:?}");
    assert!(mia.store.needs_attention().unwrap().is_empty());
    assert!(mia.store.outbox(10).unwrap().is_empty());
    max.sync();
    ana.sync();
    for phone in [&max, &mia] {
        for t in [&booking, &task] {
            let detail = phone.store.task_detail(t).unwrap();
            assert_eq!(detail.state.assignee.as_deref(), Some("kai"), "{t}");
        }
    }
    assert_converged(&[&max, &ana, &mia]);
    for phone in [&max, &ana, &mia] {
        let report = phone.sync();
        assert_eq!((report.pushed, report.refused), (0, 0), "{report:?}");
    }
}

/// A device revoked after the backup stays revoked once the backup is
/// restored: the revocations file beside the database outlives it, and
/// the relay revokes again every device it lists when it starts.
#[test]
fn a_device_revoked_after_the_backup_stays_revoked_after_the_restore() {
    let mut relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back about the referral", "ana");

    let backup = relay.back_up();
    // ana's phone is lost; she is revoked before it syncs again.
    relay.admin(&["revoke", "--device", &ana.store.device_actor()]);

    relay.restore(&backup);
    assert!(matches!(ana.engine.sync_now(), Err(Error::DeviceRevoked)));
    assert!(ana.store.was_wiped().unwrap());
    // The team's document lists her device as revoked, for every phone.
    eventually(10, "max hears of the revocation", || {
        max.sync();
        let team = max.store.team().unwrap();
        team.devices
            .values()
            .any(|d| d.user_id == "ana" && d.revoked)
    });
    assert!(max.store.task_detail(&task).is_ok());
}

/// A push answered `Duplicate` (its first answer was lost) still says where
/// the change stands, as the first answer did: the phone's next pull names
/// it, as it would have.
#[test]
fn a_duplicate_is_answered_with_where_the_change_stands() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back about the referral", "ana");
    ana.store
        .log_call(&task, call(CallOutcome::NoAnswer))
        .unwrap();
    let change = ana.store.outbox(10).unwrap().remove(0);
    let push = RawPush::to(&relay);
    let token = ana.settings().token;
    let answer = || {
        let (status, body) = push.send(
            &token,
            vec![doc_change(&change.doc_id, change.bytes.clone())],
        );
        assert_eq!(status, 200);
        sync::wire::decode::<sync::wire::PushReply>(&body).unwrap()
    };
    let first = answer();
    assert_eq!(first.verdicts, vec![sync::wire::Verdict::Stored]);
    assert!(first.stored_at > 0);
    let again = answer();
    assert_eq!(again.verdicts, vec![sync::wire::Verdict::Duplicate]);
    assert_eq!(
        (again.stored_at, again.stored_tag),
        (first.stored_at, first.stored_tag)
    );
}

/// A phone re-reading the feed after its user's role changed, cut short
/// with its cursor back at the feed's start, when the relay is restored
/// from a backup taken before the re-read began: the relay still finds it
/// out, from where the re-read began, and the phone drops none of the
/// tasks the restored relay lost. With the manager's phone lost as well,
/// hers is the last copy.
#[test]
fn a_reread_cut_short_by_a_restore_drops_nothing_the_relay_lost() {
    use crate::proxy::Proxy;

    let mut relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    // Reading the feed again from its start carries her long task, ~370 KB.
    let long = hand_over(&max, &ana, "Post-op call", "ana");
    long_comments(&max.store, &long, 40, 9_000, 0);
    max.sync();
    ana.sync();

    // The night's backup.
    let backup = relay.back_up();

    // The next day a recall is handed to her, and she moves to the front
    // desk; she never pushed anything.
    let recall = hand_over(&max, &ana, "Recall", "ana");
    set_member(&max, "ana", Role::FrontDesk, false, true);
    proxy.cut_downloads_over(100_000);
    proxy.close_all();
    assert!(ana.engine.sync_now().is_err(), "the re-read was not cut");
    assert!(ana.store.rereading().unwrap().is_some());
    assert_eq!(ana.store.relay_cursor().unwrap().seq, 0);

    // The relay's disk is lost: last night's backup is put back.
    relay.restore(&backup);
    proxy.cut_downloads_over(0);
    proxy.close_all();
    ana.sync();
    assert_eq!(ana.store.rereading().unwrap(), None);
    assert!(
        ana.store.task_detail(&recall).is_ok(),
        "the recall the restored relay lost was dropped"
    );
    assert_eq!(
        ana.store.task_detail(&long).unwrap().state.comments.len(),
        40
    );
}

/// ana was away through a restore and a change of her role: the first page
/// after the relay starts her pull over brings the role change, and she
/// reads the feed again. The re-read must not name the entry her cursor
/// stood on in the lost feed, or the relay would start her over again (a
/// round that fails, and offers everything again twice).
#[test]
fn a_restarted_page_that_changes_her_role_reads_the_feed_again() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let kim = Phone::enrolled(&relay, &relay.invite(&team, "kim", "manager"));
    hand_over(&max, &ana, "Call back about the referral", "ana");

    // The night's backup.
    let backup = relay.back_up();

    // Her cursor moves well past where the backup ends: kim's notes, on a
    // phone lost with the relay's disk, are more than the restored feed
    // will hold when she is back.
    let booking = hand_over(&max, &ana, "Book the follow-up", "ana");
    kim.sync();
    for i in 0..12 {
        kim.store.comment(&booking, &format!("note {i}")).unwrap();
    }
    kim.sync();
    let pooled = max
        .store
        .delegate(task_for("Recall", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    ana.sync();

    // The relay's disk is lost: last night's backup is put back.
    relay.restore(&backup);
    // A new task goes first, so what max then offers again stands
    // elsewhere in the feed than before: the entry her cursor names is
    // another one.
    let labs = max
        .store
        .delegate(task_for("Lab results", Some("ana"), None))
        .unwrap();
    assert!(max.sync().offered_again > 0);
    // And he moves her to the front desk.
    set_member(&max, "ana", Role::FrontDesk, false, true);

    ana.engine.sync_now().expect("one round, started over once");
    // Nothing of the lost feed is named in her next pull.
    assert!(ana.store.relay_known_entry().unwrap().seq <= ana.store.relay_cursor().unwrap().seq);
    // The re-read ends in a round of its own (a round that started over
    // drops nothing), and finds nothing lost.
    ana.sync();
    assert_eq!(ana.store.rereading().unwrap(), None);
    for task in [&labs, &booking, &pooled] {
        assert!(ana.store.task_detail(task).is_ok());
    }
    max.sync();
    assert_converged(&[&max, &ana]);
}

/// After the backup, ana comments on her task and then lee on another;
/// ana's phone pulls both. The relay is restored. max hands over new work
/// before lee's phone offers her comment again, so lee's comment lands
/// where it stood before, behind max's new task instead of ana's lost
/// comment. ana's cursor names that very change at that very place, yet
/// what lies before it changed: she must start over (and offer her
/// comment again), not go on from it.
#[test]
fn a_cursor_on_a_change_back_in_its_old_place_after_other_changes_starts_over() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let lee = Phone::enrolled(&relay, &relay.invite(&team, "lee", "manager"));
    let task = hand_over(&max, &ana, "Call back about the referral", "ana");
    let other = hand_over(&max, &ana, "Send the leaflet", "ana");
    lee.sync();
    let backup = relay.back_up();
    ana.store.comment(&task, "left a voicemail").unwrap();
    assert_eq!(ana.sync().pushed, 1);
    lee.store.comment(&other, "she prefers mornings").unwrap();
    assert_eq!(lee.sync().pushed, 1);
    ana.sync();

    relay.restore(&backup);
    let booking = max
        .store
        .delegate(task_for("Book the follow-up", Some("ana"), None))
        .unwrap();
    assert_eq!(max.sync().pushed, 1);
    assert_eq!(lee.sync().offered_again, 1, "back where it stood");
    for _ in 0..2 {
        for phone in [&ana, &lee, &max] {
            phone.sync();
        }
    }
    for (who, phone) in [("max", &max), ("ana", &ana), ("lee", &lee)] {
        let comments = |t| phone.store.task_detail(t).unwrap().state.comments.len();
        assert_eq!((comments(&task), comments(&other)), (1, 1), "on {who}");
        assert!(phone.store.task_detail(&booking).is_ok(), "{who}");
        assert!(phone.store.needs_attention().unwrap().is_empty(), "{who}");
    }
    assert_converged(&[&max, &ana, &lee]);
}

/// A relay that only restarts is the feed the phones followed: a cursor on
/// a row it wrote, and one on a row of a redacted task's older document,
/// deleted since, still name their entries after the restart. Nobody
/// starts over, and nothing is offered again.
#[test]
fn a_relay_restart_starts_nobody_over() {
    let mut relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back about the referral", "ana");
    ana.store.comment(&task, "left a voicemail").unwrap();
    assert_eq!(ana.sync().pushed, 1, "her cursor stands on her comment");
    max.store.redact_patient(&task).unwrap();
    max.sync();

    relay.kill();
    relay.spawn();
    for (who, phone) in [("max", &max), ("ana", &ana)] {
        let report = phone.sync();
        assert_eq!(report.offered_again, 0, "{who}: {report:?}");
        assert!(!phone.store.restore_known().unwrap(), "{who}");
    }
    let d = ana.store.task_detail(&task).unwrap();
    assert!(d.patient.is_none(), "the redaction reached her");
    assert_eq!(d.state.comments.len(), 1);
    assert_converged(&[&max, &ana]);
}
