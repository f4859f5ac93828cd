//! The views the apps render.

use handoff_core::*;

use crate::clinic::*;

fn ids(v: &[TaskSummary]) -> Vec<&str> {
    v.iter().map(|t| t.task_id.as_str()).collect()
}

#[test]
fn my_queue_splits_overdue_today_and_upcoming_by_the_phones_local_day() {
    let c = Clinic::with(&["max", "ana"]);
    let at = |h: i64| {
        let mut t = task_for("ana", DelegationLevel::Delegable);
        t.handoff.due = Some(MONDAY_9AM + h * HOUR_MS);
        c.at("max").delegate(t).unwrap()
    };
    let late = at(-2);
    let today = at(5);
    let tomorrow = at(26);
    let mut none = task_for("ana", DelegationLevel::Delegable);
    none.handoff.due = None;
    let undated = c.at("max").delegate(none).unwrap();
    c.sync();
    let q = c.at("ana").my_queue().unwrap();
    assert_eq!(ids(&q.overdue), vec![late.as_str()]);
    assert_eq!(ids(&q.today), vec![today.as_str()]);
    assert_eq!(ids(&q.upcoming), vec![tomorrow.as_str(), undated.as_str()]);
    assert!(q.overdue[0].escalations.contains(&Escalation::Overdue));
    assert_eq!(
        c.at("max").queue_of("ana").unwrap(),
        q,
        "the manager sees the same queue"
    );
    assert_eq!(c.at("max").my_queue().unwrap(), MyQueue::default());
}

#[test]
fn a_call_attempt_due_next_pulls_a_task_forward_and_stops_once_reached() {
    let c = Clinic::with(&["max", "ana"]);
    let mut t = task_for("ana", DelegationLevel::Delegable);
    t.handoff.due = Some(MONDAY_9AM + 72 * HOUR_MS);
    let t = c.at("max").delegate(t).unwrap();
    c.sync();
    c.at("ana")
        .log_call(&t, call(CallOutcome::NoAnswer))
        .unwrap(); // next attempt in 4 h
    assert_eq!(c.at("ana").my_queue().unwrap().today.len(), 1);
    c.clock.advance(5 * HOUR_MS);
    let q = c.at("ana").my_queue().unwrap();
    assert_eq!(q.overdue.len(), 1);
    assert!(q.overdue[0].escalations.contains(&Escalation::CallOverdue));
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    let q = c.at("ana").my_queue().unwrap();
    assert_eq!(q.upcoming.len(), 1);
    assert_eq!(q.upcoming[0].next_call_due_at, None);
}

#[test]
fn attempts_beyond_policy_and_missed_follow_up_windows_escalate() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    for _ in 0..3 {
        c.at("ana")
            .log_call(&t, call(CallOutcome::NoAnswer))
            .unwrap();
    }
    c.sync();
    let d = c.at("max").task_detail(&t).unwrap();
    assert!(d.escalations.contains(&Escalation::AttemptsExhausted));
    assert!(!d.escalations.contains(&Escalation::FollowUpWindowMissed));
    c.clock.advance(49 * HOUR_MS);
    let d = c.at("max").task_detail(&t).unwrap();
    assert!(d.escalations.contains(&Escalation::FollowUpWindowMissed));
    // Policies are data: raise the limit and the escalation goes away.
    c.at("max")
        .set_policy(&Policy {
            max_call_attempts: 5,
            ..Policy::default()
        })
        .unwrap();
    let d = c.at("max").task_detail(&t).unwrap();
    assert!(!d.escalations.contains(&Escalation::AttemptsExhausted));
}

#[test]
fn the_review_inbox_lists_submitted_work_and_escalates_after_the_review_deadline() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    c.at("ana").submit(&t, "done").unwrap();
    c.sync();
    assert!(
        c.at("ana").review_inbox().unwrap().is_empty(),
        "assistants do not review"
    );
    let inbox = c.at("max").review_inbox().unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(!inbox[0].overdue);
    assert_eq!(inbox[0].review_due_at, inbox[0].submitted_at + 72 * HOUR_MS);
    c.clock.advance(73 * HOUR_MS);
    let inbox = c.at("max").review_inbox().unwrap();
    assert!(inbox[0].overdue);
    assert!(inbox[0]
        .task
        .escalations
        .contains(&Escalation::ReviewOverdue));
}

#[test]
fn the_shared_pool_shows_my_roles_unclaimed_tasks_only() {
    let c = Clinic::with(&["max", "ana", "fay"]);
    let desk = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    let _assist = c
        .at("max")
        .delegate(pooled(Role::ClinicalAssistant))
        .unwrap();
    c.sync();
    assert_eq!(
        ids(&c.at("fay").shared_pool().unwrap()),
        vec![desk.as_str()]
    );
    c.at("fay").claim(&desk).unwrap();
    assert!(c.at("fay").shared_pool().unwrap().is_empty());
    assert_eq!(c.at("fay").my_queue().unwrap().today.len(), 1);
    assert_eq!(c.at("ana").shared_pool().unwrap().len(), 1);
}

#[test]
fn task_detail_has_the_handoff_the_patient_and_the_full_history() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c.handed_to("ana");
    c.at("ana")
        .acknowledge(&t, "Call all post-op patients by Wednesday")
        .unwrap();
    c.at("ana").start(&t).unwrap();
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.at("ana")
        .comment(&t, "Patient asks for a nurse callback")
        .unwrap();
    c.at("ana").submit(&t, "").unwrap();
    c.sync();
    let d = c.at("max").task_detail(&t).unwrap();
    assert_eq!(d.patient.unwrap().display_name, "Jordan Quill");
    assert_eq!(d.state.handoff.sop.as_deref(), Some("CLN-003"));
    assert!(d.state.acknowledged);
    let names: Vec<_> = d.state.history.iter().map(|h| h.action.name()).collect();
    assert_eq!(
        names,
        [
            "created",
            "acknowledged",
            "started",
            "call_logged",
            "commented",
            "submitted"
        ]
    );
    assert!(d
        .state
        .history
        .iter()
        .all(|h| h.outcome == Outcome::Applied));
    assert_eq!(d.state.calls[0].attempt.answers[0].answer, "3");
}

#[test]
fn kpis_count_on_time_work_calls_within_policy_and_review_turnaround() {
    let c = Clinic::with(&["max", "ana", "tom"]);
    let on_time = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let late = c
        .at("max")
        .delegate(task_for("tom", DelegationLevel::Delegable))
        .unwrap();
    let _open = c.handed_to("tom");
    c.at("ana")
        .log_call(&on_time, call(CallOutcome::Reached))
        .unwrap();
    c.at("ana").submit(&on_time, "").unwrap();
    c.sync();
    c.clock.advance(2 * HOUR_MS);
    c.at("max").approve(&on_time, "").unwrap();
    c.clock.advance(10 * HOUR_MS); // past the 8 h due time
    c.at("tom").complete(&late, "").unwrap();
    c.sync();
    let k = c
        .at("max")
        .kpis(MONDAY_9AM - DAY_MS, MONDAY_9AM + DAY_MS)
        .unwrap();
    let get = |u: &str| k.iter().find(|k| k.user_id == u).unwrap().clone();
    let (ana, tom, max) = (get("ana"), get("tom"), get("max"));
    assert_eq!(
        (
            ana.done,
            ana.done_on_time,
            ana.follow_ups,
            ana.reached_within_policy
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(
        (
            tom.done,
            tom.done_on_time,
            tom.follow_ups,
            tom.reached_within_policy
        ),
        (1, 0, 2, 0)
    );
    assert_eq!((tom.open, tom.overdue), (1, 1));
    assert_eq!(max.reviews, 1);
    assert_eq!(max.median_review_turnaround_ms, Some(2 * HOUR_MS));
    assert_eq!(ana.name, "Ana Ruiz");
    assert!(matches!(
        c.at("max").kpis(10, 0),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn a_change_the_relay_refused_is_shown_to_its_author_and_not_offered_again() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let pending = c.at("max").outbox(100).unwrap();
    let last = pending.last().unwrap();
    c.at("max")
        .outbox_refused(last, "not_permitted", "the relay refused it")
        .unwrap();
    // No restore known: set aside (see the sync engine).
    c.at("max").release_held(None).unwrap();
    assert!(c
        .at("max")
        .outbox(100)
        .unwrap()
        .iter()
        .all(|o| o.id != last.id));
    // The refused change made the task: it never reached anyone, and it
    // is shown under its title, with no task left to open.
    let items = c.at("max").needs_attention().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].task_id, None);
    assert_eq!(
        items[0].title.as_deref(),
        Some(
            task_for("ana", DelegationLevel::Delegable)
                .handoff
                .title
                .as_str()
        )
    );
    assert_eq!(items[0].code, "not_permitted");
    assert!(matches!(
        c.at("max").task_detail(&t),
        Err(Error::TaskNotFound(_))
    ));
    c.at("max").dismiss_attention(&items[0].key).unwrap();
    assert!(c.at("max").needs_attention().unwrap().is_empty());
    let delivered = c.at("max").outbox(100).unwrap();
    c.at("max").outbox_delivered(&delivered).unwrap();
    assert!(c.at("max").outbox(100).unwrap().is_empty());
}

#[test]
fn task_detail_offers_exactly_the_commands_the_rules_would_apply() {
    use TaskCommand::*;
    let c = Clinic::with(&["max", "ana", "fay"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let pooled_task = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    c.sync();
    let offered = |user: &str, task: &str| c.at(user).task_detail(task).unwrap().available;

    let ana = offered("ana", &t);
    for cmd in [Acknowledge, Start, TickChecklistItem, LogCall, Submit] {
        assert!(ana.contains(&cmd), "assignee lacks {cmd:?}: {ana:?}");
    }
    for cmd in [Assign, Claim, Approve, Return, Cancel] {
        assert!(!ana.contains(&cmd), "assignee offered {cmd:?}");
    }
    // Not trusted: completing without review is not offered, and is refused.
    assert!(!ana.contains(&Complete));
    assert_eq!(refusal(c.at("ana").complete(&t, "")), Refusal::NeedsReview);
    let max = offered("max", &t);
    assert!(max.contains(&Assign) && max.contains(&Cancel) && !max.contains(&Acknowledge));
    assert!(!max.contains(&Approve), "nothing submitted yet");
    assert!(offered("fay", &pooled_task).contains(&Claim));
    assert!(
        !offered("ana", &pooled_task).contains(&Claim),
        "another role's pool"
    );

    c.at("ana").submit(&t, "").unwrap();
    c.sync();
    let max = offered("max", &t);
    assert!(max.contains(&Approve) && max.contains(&Return));
    assert!(!offered("ana", &t).contains(&Approve));

    c.at("max").approve(&t, "").unwrap();
    let closed = offered("max", &t);
    for cmd in [Approve, Return, LogCall, Submit, Assign, Cancel] {
        assert!(
            !closed.contains(&cmd),
            "offered {cmd:?} on a completed task"
        );
    }
}

/// Each device counts its events per task, so the same event id turns up on
/// many tasks: putting away one lost race must not hide the next one.
#[test]
fn dismissing_one_attention_item_hides_that_item_only() {
    let c = Clinic::with(&["max", "fay", "fred"]);
    let race = |c: &Clinic| {
        let t = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
        c.sync();
        c.at("fay").claim(&t).unwrap();
        c.clock.advance(1000);
        c.at("fred").claim(&t).unwrap();
        c.sync();
        t
    };
    let first = race(&c);
    let lost = c.at("fred").needs_attention().unwrap();
    assert_eq!(lost.len(), 1);
    c.at("fred").dismiss_attention(&lost[0].key).unwrap();
    assert!(c.at("fred").needs_attention().unwrap().is_empty());

    let second = race(&c);
    assert_ne!(first, second);
    let lost_again = c.at("fred").needs_attention().unwrap();
    assert_eq!(lost_again.len(), 1, "the second lost claim is shown");
    assert_eq!(lost_again[0].task_id.as_deref(), Some(second.as_str()));
    assert_ne!(lost_again[0].key, lost[0].key);
}
