//! The clinic's delegation rules, each with its typed refusal.

use handoff_core::*;

use crate::clinic::*;

#[test]
fn a_clinician_only_task_cannot_be_handed_to_an_assistant() {
    let c = Clinic::with(&["max", "lee", "ana"]);
    let err = c
        .at("lee")
        .delegate(task_for("ana", DelegationLevel::ClinicianOnly))
        .unwrap_err();
    assert!(matches!(err, Error::Refused(Refusal::ClinicianOnly { ref user }) if user == "ana"));
    assert!(
        outbox(c.at("lee")).is_empty(),
        "a refused delegation writes nothing"
    );

    let t = c
        .at("lee")
        .delegate(task_for("lee", DelegationLevel::ClinicianOnly))
        .unwrap();
    c.sync();
    assert_eq!(
        refusal(c.at("max").assign(&t, "ana")),
        Refusal::ClinicianOnly { user: "ana".into() }
    );
}

#[test]
fn a_practice_manager_without_the_licence_cannot_hold_clinician_only_work() {
    let c = Clinic::with(&["max", "lee"]);
    let err = c
        .at("lee")
        .delegate(task_for("max", DelegationLevel::ClinicianOnly))
        .unwrap_err();
    assert!(matches!(err, Error::Refused(Refusal::ClinicianOnly { .. })));
}

#[test]
fn only_managers_and_clinicians_approve_or_return() {
    let c = Clinic::with(&["max", "ana", "tom"]);
    let t = c.handed_to("ana");
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.at("ana").submit(&t, "reached, recovering well").unwrap();
    c.sync();
    assert!(matches!(
        refusal(c.at("tom").approve(&t, "")),
        Refusal::NotPermitted { .. }
    ));
    assert!(matches!(
        refusal(c.at("tom").return_work(&t, "redo")),
        Refusal::NotPermitted { .. }
    ));
    assert!(matches!(
        refusal(c.at("ana").approve(&t, "")),
        Refusal::NotPermitted { .. }
    ));
    c.at("max").approve(&t, "thanks").unwrap();
    assert_eq!(c.state("max", &t).status, TaskStatus::Completed);
}

#[test]
fn only_the_assignee_or_a_reviewer_logs_calls_and_submits() {
    let c = Clinic::with(&["max", "ana", "fay"]);
    let t = c.handed_to("ana");
    assert_eq!(
        refusal(c.at("fay").log_call(&t, call(CallOutcome::Busy))),
        Refusal::NotAssignee
    );
    assert_eq!(refusal(c.at("fay").submit(&t, "")), Refusal::NotAssignee);
    c.at("ana").log_call(&t, call(CallOutcome::Busy)).unwrap();
    c.at("max")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
}

#[test]
fn a_completed_or_cancelled_task_takes_no_more_work() {
    let c = Clinic::with(&["max", "tom"]);
    let done = c
        .at("max")
        .delegate(task_for("tom", DelegationLevel::Delegable))
        .unwrap();
    let gone = c.handed_to("tom");
    c.at("tom").complete(&done, "all reached").unwrap();
    c.at("max").cancel(&gone, "patient moved away").unwrap();
    c.sync();
    assert_eq!(
        refusal(c.at("tom").log_call(&done, call(CallOutcome::Reached))),
        Refusal::TaskClosed {
            status: TaskStatus::Completed
        }
    );
    assert_eq!(
        refusal(c.at("tom").tick_checklist_item(&gone, 0)),
        Refusal::TaskClosed {
            status: TaskStatus::Cancelled
        }
    );
    assert_eq!(
        refusal(c.at("max").assign(&gone, "tom")),
        Refusal::TaskClosed {
            status: TaskStatus::Cancelled
        }
    );
}

#[test]
fn staff_in_training_submit_for_review_and_trusted_staff_may_complete() {
    let c = Clinic::with(&["max", "ana", "tom"]);
    let a = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let t = c.handed_to("tom");
    assert_eq!(refusal(c.at("ana").complete(&a, "")), Refusal::NeedsReview);
    c.at("ana").submit(&a, "").unwrap();
    assert_eq!(c.state("ana", &a).status, TaskStatus::Submitted);
    c.at("tom").complete(&t, "").unwrap();
    assert_eq!(c.state("tom", &t).status, TaskStatus::Completed);
}

#[test]
fn a_returned_task_goes_back_to_its_assignee_with_the_feedback() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    c.at("ana").start(&t).unwrap();
    c.at("ana")
        .log_call(&t, call(CallOutcome::Voicemail))
        .unwrap();
    c.at("ana").submit(&t, "left a voicemail").unwrap();
    c.sync();
    c.at("max")
        .return_work(&t, "Voicemail is not contact; call again")
        .unwrap();
    assert_eq!(c.state("max", &t).status, TaskStatus::Returned);
    c.sync();
    let q = c.at("ana").my_queue().unwrap();
    let all: Vec<_> = q
        .overdue
        .iter()
        .chain(&q.today)
        .chain(&q.upcoming)
        .collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, TaskStatus::Returned);
    let d = c.at("ana").task_detail(&t).unwrap();
    assert!(matches!(
        d.state.last_review.unwrap().verdict,
        handoff_core::derive::Verdict::Returned { ref feedback } if feedback.contains("call again")
    ));
}

#[test]
fn claims_come_only_from_the_pool_of_the_claimants_role() {
    let c = Clinic::with(&["max", "ana", "fay", "fred"]);
    let t = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    assert_eq!(refusal(c.at("ana").claim(&t)), Refusal::NotInPool);
    c.at("fay").claim(&t).unwrap();
    c.sync();
    assert_eq!(
        refusal(c.at("fred").claim(&t)),
        Refusal::AlreadyTaken { by: "fay".into() }
    );
}

#[test]
fn two_front_desk_phones_claiming_offline_resolve_to_one_owner_and_tell_the_other() {
    let c = Clinic::with(&["max", "fay", "fred"]);
    let t = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    // Both phones are in the basement.
    c.at("fay").claim(&t).unwrap();
    c.clock.advance(1000);
    c.at("fred").claim(&t).unwrap();
    c.sync();
    let owners: Vec<_> = ["max", "fay", "fred"]
        .iter()
        .map(|u| c.at(u).task_detail(&t).unwrap().state.assignee)
        .collect();
    assert_eq!(
        owners,
        vec![Some("fay".to_string()); 3],
        "the earlier claim wins everywhere"
    );
    let lost = c.at("fred").needs_attention().unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].code, "already_taken");
    assert!(lost[0].reason.contains("fay"));
    assert!(c.at("fay").needs_attention().unwrap().is_empty());
    assert!(c.at("fred").shared_pool().unwrap().is_empty());
}

/// The phone that lost a claim race had gone on as the task's holder:
/// its submission is not taken as the winner's work being done (its call
/// stands: it happened). Without this, fred's submission put fay's task
/// up for review, and her later work was refused.
#[test]
fn the_loser_of_a_claim_race_cannot_submit_the_winners_task() {
    let c = Clinic::with(&["max", "fay", "fred"]);
    let t = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    c.at("fay").claim(&t).unwrap();
    c.clock.advance(1000);
    c.at("fred").claim(&t).unwrap();
    c.at("fred")
        .log_call(&t, call(CallOutcome::Voicemail))
        .unwrap();
    c.at("fred").submit(&t, "left a message").unwrap();
    c.sync();
    for u in ["max", "fay", "fred"] {
        let state = c.at(u).task_detail(&t).unwrap().state;
        assert_eq!(state.assignee.as_deref(), Some("fay"), "at {u}");
        // fred's call stands (it happened), and is work on the task.
        assert_eq!(state.status, TaskStatus::InProgress, "at {u}");
        assert_eq!(state.submitted, None, "at {u}");
        assert_eq!(state.calls.len(), 1, "at {u}");
    }
    let mut codes: Vec<String> = c
        .at("fred")
        .needs_attention()
        .unwrap()
        .into_iter()
        .map(|i| i.code)
        .collect();
    codes.sort();
    assert_eq!(codes, vec!["already_taken", "already_taken"]);
    // fay's work goes on.
    c.at("fay").submit(&t, "called back").unwrap();
    c.sync();
    assert_eq!(
        c.at("max").task_detail(&t).unwrap().state.status,
        TaskStatus::Submitted
    );
}

#[test]
fn a_manager_assignment_concurrent_with_a_claim_overrides_it_and_says_so() {
    let c = Clinic::with(&["max", "fay", "fred"]);
    let t = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    c.at("fay").claim(&t).unwrap();
    c.at("max").assign(&t, "fred").unwrap();
    c.sync();
    for u in ["max", "fay", "fred"] {
        assert_eq!(
            c.at(u).task_detail(&t).unwrap().state.assignee.as_deref(),
            Some("fred")
        );
    }
    let items = c.at("fay").needs_attention().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].code, "claim_overridden");
}

#[test]
fn an_approval_concurrent_with_a_new_call_goes_stale_and_back_to_review() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    c.at("ana")
        .log_call(&t, call(CallOutcome::NoAnswer))
        .unwrap();
    c.at("ana").submit(&t, "no answer").unwrap();
    c.sync();
    // Offline on both sides: the manager approves, the patient calls back.
    c.at("max").approve(&t, "fine").unwrap();
    c.clock.advance(60_000);
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.sync();
    for u in ["max", "ana"] {
        let s = c.at(u).task_detail(&t).unwrap().state;
        assert_eq!(s.status, TaskStatus::Submitted, "back in review on {u}");
        assert_eq!(s.calls.len(), 2, "both calls kept on {u}");
        let review = s.last_review.unwrap();
        assert!(review.stale);
        assert!(
            matches!(review.verdict, handoff_core::derive::Verdict::Approved { ref heads } if !heads.is_empty())
        );
    }
    let items = c.at("max").needs_attention().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].code, "approval_stale");
    assert_eq!(c.at("max").review_inbox().unwrap().len(), 1);
    assert!(c.at("max").review_inbox().unwrap()[0].task.stale_approval);
    // A fresh approval covers everything and closes it.
    c.at("max").approve(&t, "now complete").unwrap();
    assert_eq!(c.state("max", &t).status, TaskStatus::Completed);
}

#[test]
fn work_concurrent_with_a_cancellation_is_kept_but_refused() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    c.at("max").cancel(&t, "duplicate").unwrap();
    c.clock.advance(1);
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.sync();
    let s = c.at("max").task_detail(&t).unwrap().state;
    assert_eq!(s.status, TaskStatus::Cancelled);
    assert!(s.history.iter().any(|h| h.action.name() == "call_logged"
        && matches!(
            h.outcome,
            Outcome::Refused {
                refusal: Refusal::TaskClosed { .. }
            }
        )));
    assert_eq!(
        c.at("ana").needs_attention().unwrap()[0].code,
        "task_closed"
    );
    // What she writes next (a comment: a closed task takes those) leaves
    // it there: the refused call still needs her attention.
    c.at("ana").comment(&t, "reached her anyway").unwrap();
    let items = c.at("ana").needs_attention().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].code, "task_closed");
}

#[test]
fn checklist_comes_from_the_sop_and_items_are_checked() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    c.at("ana").tick_checklist_item(&t, 1).unwrap();
    let s = c.state("ana", &t);
    assert_eq!(s.checklist.len(), 3);
    assert_eq!(s.checklist[1].done.as_ref().unwrap().0, "ana");
    assert_eq!(s.questions.len(), 2);
    assert_eq!(
        refusal(c.at("ana").tick_checklist_item(&t, 9)),
        Refusal::NoSuchChecklistItem { item: 9 }
    );
    let mut bad = task_for("ana", DelegationLevel::Delegable);
    bad.handoff.sop = Some("NOPE-1".into());
    assert!(matches!(
        c.at("max").delegate(bad),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn only_delegators_assign_and_only_team_managers_change_the_team() {
    let c = Clinic::with(&["max", "ana", "fay"]);
    let t = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    assert!(matches!(
        refusal(c.at("ana").assign(&t, "fay")),
        Refusal::NotPermitted { .. }
    ));
    let err = c.at("ana").set_policy(&Policy::default()).unwrap_err();
    assert!(matches!(err, Error::Refused(Refusal::NotPermitted { .. })));
    let err = c
        .at("fay")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap_err();
    assert!(matches!(err, Error::Refused(Refusal::NotPermitted { .. })));
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let c = Clinic::with(&["max", "ana"]);
    let before = outbox(c.at("max")).len();
    let mut t = task_for("ana", DelegationLevel::Delegable);
    t.handoff.title = "  ".into();
    assert!(matches!(
        c.at("max").delegate(t),
        Err(Error::InvalidInput(_))
    ));
    let mut t = task_for("ana", DelegationLevel::Delegable);
    t.assignee = None;
    assert!(matches!(
        c.at("max").delegate(t),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        c.at("max").assign("no-such-task", "ana"),
        Err(Error::TaskNotFound(_))
    ));
    assert!(matches!(
        c.at("max").put_member(&Member {
            user_id: "has space".into(),
            name: "x".into(),
            role: Role::FrontDesk,
            trusted: false,
            active: true
        }),
        Err(Error::InvalidInput(_))
    ));
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let long = "x".repeat(MAX_TEXT_FOR_TESTS + 1);
    assert!(matches!(
        c.at("max").comment(&t, &long),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        c.at("max").assign(&t, "nobody"),
        Err(Error::Refused(Refusal::NotAMember { .. }))
    ));
    // Every answer within its limit, the whole call too large for the
    // relay to take: refused here, not lost on the way.
    let mut long_call = call(CallOutcome::Reached);
    long_call.answers = (0..60)
        .map(|i| ScriptAnswer {
            question: format!("question {i}"),
            answer: "x".repeat(MAX_TEXT_FOR_TESTS),
        })
        .collect();
    let refused = c.at("max").log_call(&t, long_call);
    assert!(
        matches!(&refused, Err(Error::InvalidInput(why)) if why.contains("too long to send")),
        "{refused:?}"
    );
    assert_eq!(
        outbox(c.at("max")).len(),
        before + 1,
        "only the good delegation was written"
    );
}

const MAX_TEXT_FOR_TESTS: usize = handoff_core::store::MAX_TEXT;

/// The token a phone offers when it enrols is kept for retries of that
/// enrolment only: a mistyped relay address or the wrong clinic's invite
/// never sees the token the right relay binds.
#[test]
fn an_enrolment_token_is_kept_for_one_relay_and_invite() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("x.db"), &KEY, StoreOptions::default()).unwrap();
    let (relay, typo) = (
        "https://relay.clinic.example",
        "https://relay.clinic.exampel",
    );
    let first = s.enrolment_token(typo, "AAAA-BBBB").unwrap();
    assert_eq!(first.len(), 64);
    assert_eq!(s.enrolment_token(typo, "AAAA-BBBB").unwrap(), first);
    let right = s.enrolment_token(relay, "AAAA-BBBB").unwrap();
    assert_ne!(right, first);
    assert_eq!(s.enrolment_token(relay, "AAAA-BBBB").unwrap(), right);
    assert_ne!(s.enrolment_token(relay, "CCCC-DDDD").unwrap(), right);
}

#[test]
fn a_device_not_yet_in_a_team_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("x.db"), &KEY, StoreOptions::default()).unwrap();
    assert!(matches!(
        s.delegate(pooled(Role::FrontDesk)),
        Err(Error::NotEnrolled)
    ));
    assert!(matches!(s.my_queue(), Err(Error::NotEnrolled)));
}

#[test]
fn the_first_member_of_a_team_must_be_able_to_manage_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("x.db"), &KEY, StoreOptions::default()).unwrap();
    let err = s
        .create_team(
            "T",
            Member {
                user_id: "fay".into(),
                name: "Fay".into(),
                role: Role::FrontDesk,
                trusted: false,
                active: true,
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
}

/// Someone leaves the clinic and the manager deactivates them: the tasks
/// they held stay, with everything logged on them, on every phone (rules
/// are judged with the team as it is now, and an inactive holder must not
/// undo the task); no new task goes to them, and the manager hands theirs
/// on.
#[test]
fn a_deactivated_members_tasks_stay_with_their_history_and_can_be_handed_on() {
    let c = Clinic::with(&["max", "ana", "tom"]);
    let t = c.handed_to("ana");
    c.at("ana")
        .log_call(&t, call(CallOutcome::NoAnswer))
        .unwrap();
    c.sync();
    let mut ana = c.at("max").team().unwrap().members["ana"].clone();
    ana.active = false;
    c.at("max").put_member(&ana).unwrap();
    c.sync();
    let d = c.at("max").task_detail(&t).unwrap();
    assert_eq!(d.state.assignee.as_deref(), Some("ana"));
    assert_eq!(d.state.calls.len(), 1);
    assert!(matches!(
        c.at("max")
            .delegate(task_for("ana", DelegationLevel::Delegable)),
        Err(Error::Refused(Refusal::NotAMember { .. }))
    ));
    assert!(matches!(
        c.at("max").assign(&t, "ana"),
        Err(Error::Refused(Refusal::NotAMember { .. }))
    ));
    c.at("max").assign(&t, "tom").unwrap();
    c.sync();
    let on_tom = c.at("tom").task_detail(&t).unwrap().state;
    assert_eq!(on_tom.assignee.as_deref(), Some("tom"));
    assert_eq!(on_tom.calls.len(), 1);
    assert_eq!(on_tom, c.at("max").task_detail(&t).unwrap().state);
}

/// What a role allows is judged when the work is done, not again later: a
/// clinician who is demoted, or a role whose permissions are narrowed, must
/// not make every phone drop the tasks they handed out or the approvals
/// they gave. (Until this was fixed, each phone re-judged every event with
/// the team as it is now, and the demoted clinician's tasks vanished.)
#[test]
fn a_change_of_role_leaves_the_work_done_before_it_standing() {
    let c = Clinic::with(&["max", "lee", "ana"]);
    let handed = c
        .at("lee")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let own = c
        .at("lee")
        .delegate(task_for("lee", DelegationLevel::ClinicianOnly))
        .unwrap();
    c.sync();
    c.at("ana")
        .log_call(&handed, call(CallOutcome::Reached))
        .unwrap();
    c.at("ana").submit(&handed, "reached").unwrap();
    c.sync();
    c.at("lee").approve(&handed, "thanks").unwrap();
    c.sync();

    // Clinicians may no longer review; then Lee is no clinician at all.
    let narrowed = RolePermissions {
        may_review: false,
        ..Role::Clinician.default_permissions()
    };
    c.at("max")
        .set_role_permissions(Role::Clinician, &narrowed)
        .unwrap();
    c.at("max")
        .put_member(&Member {
            user_id: "lee".into(),
            name: "Dr. Lee".into(),
            role: Role::ClinicalAssistant,
            trusted: false,
            active: true,
        })
        .unwrap();
    c.sync();

    for user in ["max", "lee", "ana"] {
        let store = c.at(user);
        let h = store.task_detail(&handed).unwrap().state;
        assert_eq!(
            (h.status, h.assignee.as_deref(), h.created_by.as_str()),
            (TaskStatus::Completed, Some("ana"), "lee"),
            "on {user}'s phone"
        );
        assert!(
            h.history.iter().all(|e| e.outcome == Outcome::Applied),
            "on {user}'s phone: {:?}",
            h.history
        );
        let o = store.task_detail(&own).unwrap().state;
        assert_eq!(o.assignee.as_deref(), Some("lee"), "on {user}'s phone");
    }
    // From now on Lee's role decides: she may no longer hand work out.
    assert!(matches!(
        c.at("lee")
            .delegate(task_for("ana", DelegationLevel::Delegable))
            .unwrap_err(),
        Error::Refused(Refusal::NotPermitted { .. })
    ));
}

/// An assistant's call logged while a manager, unseen, moves the task to
/// someone else is kept: the call happened, and it was hers to log when she
/// logged it.
#[test]
fn a_call_logged_while_the_task_was_being_reassigned_is_kept() {
    let c = Clinic::with(&["max", "ana", "tom"]);
    let t = c.handed_to("ana");
    c.at("max").assign(&t, "tom").unwrap();
    // Later by the clock, so every phone folds her call after the move.
    c.clock.advance(60_000);
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.sync();
    for user in ["max", "ana", "tom"] {
        let s = c.at(user).task_detail(&t).unwrap().state;
        assert_eq!(s.assignee.as_deref(), Some("tom"), "on {user}'s phone");
        assert_eq!(s.calls.len(), 1, "on {user}'s phone");
        assert_eq!(s.calls[0].by, "ana");
    }
    // Now that her phone knows, the task is no longer hers to work.
    assert_eq!(
        refusal(c.at("ana").log_call(&t, call(CallOutcome::NoAnswer))),
        Refusal::NotAssignee
    );
}

/// Submitting is the holder's word that the work is done: an assistant's
/// submission concurrent with the task moving to someone else does not
/// stand (her call does), and she is told who has the task.
#[test]
fn a_submission_while_the_task_was_being_reassigned_is_refused_and_says_to_whom() {
    let c = Clinic::with(&["max", "ana", "tom"]);
    let t = c.handed_to("ana");
    c.at("max").assign(&t, "tom").unwrap();
    c.clock.advance(60_000);
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.at("ana").submit(&t, "reached, all well").unwrap();
    c.sync();
    for user in ["max", "ana", "tom"] {
        let s = c.at(user).task_detail(&t).unwrap().state;
        assert_eq!(
            (s.status, s.assignee.as_deref(), s.calls.len()),
            (TaskStatus::InProgress, Some("tom"), 1),
            "on {user}'s phone"
        );
    }
    let items = c.at("ana").needs_attention().unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (items[0].action.as_str(), items[0].code.as_str()),
        ("submitted", "reassigned")
    );
    assert!(items[0].reason.contains("tom"), "{}", items[0].reason);
}

/// The same in the other order: a trusted assistant completes the task
/// offline before, by the clocks, a manager moves it to someone else. The
/// completion does not close the task under its new holder; it is
/// superseded, and its author told who has the task.
#[test]
fn a_completion_before_a_reassignment_it_had_not_seen_is_undone_by_it() {
    let c = Clinic::with(&["max", "ana", "tom"]);
    let t = c.handed_to("tom");
    c.at("tom")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.at("tom").complete(&t, "all done").unwrap();
    c.clock.advance(60_000);
    // The manager has written more on the task than tom has, so the move
    // folds after his completion (later in Lamport time).
    c.at("max").comment(&t, "patient called the desk").unwrap();
    c.at("max").comment(&t, "asked for ana").unwrap();
    c.at("max").assign(&t, "ana").unwrap();
    c.sync();
    for user in ["max", "ana", "tom"] {
        let s = c.at(user).task_detail(&t).unwrap().state;
        assert_eq!(
            (
                s.status,
                s.assignee.as_deref(),
                s.completed.is_none(),
                s.calls.len()
            ),
            (TaskStatus::Assigned, Some("ana"), true, 1),
            "on {user}'s phone"
        );
    }
    let items = c.at("tom").needs_attention().unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (items[0].action.as_str(), items[0].code.as_str()),
        ("completed", "reassigned")
    );
    // The new holder works on and completes it.
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.at("ana").submit(&t, "reached").unwrap();
    c.sync();
    assert_eq!(
        c.at("max").task_detail(&t).unwrap().state.status,
        TaskStatus::Submitted
    );
}

/// Only the holder's word is undone: a reviewer who completes a task
/// someone else holds, while a manager moves it, is not told it was moved
/// from them (it never was theirs).
#[test]
fn a_reviewers_completion_is_not_refused_as_moved_from_them() {
    let c = Clinic::with(&["max", "lee", "ana", "tom"]);
    let t = c.handed_to("ana");
    c.at("max").assign(&t, "tom").unwrap();
    c.clock.advance(60_000);
    c.at("lee").complete(&t, "done by phone").unwrap();
    c.sync();
    for user in ["max", "lee", "tom"] {
        let s = c.at(user).task_detail(&t).unwrap().state;
        assert_eq!(
            (s.status, s.assignee.as_deref()),
            (TaskStatus::Completed, Some("tom")),
            "on {user}'s phone"
        );
    }
    assert!(c.at("lee").needs_attention().unwrap().is_empty());
}
