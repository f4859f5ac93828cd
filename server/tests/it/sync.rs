use std::sync::{Arc, Mutex};

use handoff_core::sync::wire::Verdict;
use handoff_core::*;

use crate::harness::*;

/// A listener that keeps every event it hears.
struct Events(Mutex<Vec<SyncEvent>>);

impl SyncListener for Events {
    fn on_sync_event(&self, e: SyncEvent) {
        self.0.lock().unwrap().push(e);
    }
}

/// A clinic whose manager has pooled `n` recall calls for the front desk,
/// all on the relay.
fn clinic_with_recalls(relay: &Relay, n: usize) -> (String, Phone) {
    let (team, invite) = relay.create_team("Riverside Family Practice", "max");
    let max = Phone::enrolled(relay, &invite);
    for i in 0..n {
        max.store
            .delegate(task_for(
                &format!("Recall {i}"),
                None,
                Some(Role::FrontDesk),
            ))
            .unwrap();
    }
    max.sync();
    (team, max)
}

/// Everything live sync tells the app up to the end of its first round.
fn first_live_round(phone: &Phone) -> Vec<SyncEvent> {
    let events = Arc::new(Events(Mutex::new(Vec::new())));
    let live = phone.engine.start(events.clone()).unwrap();
    eventually(60, "a first round", || {
        let heard = events.0.lock().unwrap();
        heard.iter().any(|e| matches!(e, SyncEvent::Synced(_)))
    });
    live.stop();
    let heard = events.0.lock().unwrap().clone();
    heard
}

#[test]
fn a_manager_an_assistant_and_the_front_desk_work_offline_then_converge() {
    let relay = Relay::start();
    let (team, invite) = relay.create_team("Riverside Family Practice", "max");
    let max = Phone::enrolled(&relay, &invite);
    let ana = Phone::enrolled(&relay, &relay.invite(&team, "ana", "clinical_assistant"));
    let fay = Phone::enrolled(&relay, &relay.invite(&team, "fay", "front_desk"));
    max.sync();

    // The manager delegates while everyone is offline.
    let follow_up = max
        .store
        .delegate(task_for("Post-op call", Some("ana"), None))
        .unwrap();
    let reminder = max
        .store
        .delegate(task_for("Recall reminder", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    ana.sync();
    fay.sync();
    assert_eq!(
        ana.store.my_queue().unwrap().upcoming.len() + ana.store.my_queue().unwrap().today.len(),
        1
    );
    assert_eq!(fay.store.shared_pool().unwrap().len(), 1);

    // Offline work on every phone.
    ana.store
        .acknowledge(&follow_up, "call J. Doe, document recovery")
        .unwrap();
    ana.store
        .log_call(&follow_up, call(CallOutcome::NoAnswer))
        .unwrap();
    ana.store
        .log_call(&follow_up, call(CallOutcome::Reached))
        .unwrap();
    ana.store
        .submit(&follow_up, "reached on second try")
        .unwrap();
    fay.store.claim(&reminder).unwrap();
    fay.store
        .log_call(&reminder, call(CallOutcome::Voicemail))
        .unwrap();
    fay.store.submit(&reminder, "left a voicemail").unwrap();
    max.store.comment(&follow_up, "thanks in advance").unwrap();

    // Sync in an odd order, each twice so everyone hears everything.
    fay.sync();
    max.sync();
    ana.sync();
    max.sync();
    for d in [&max, &ana, &fay] {
        assert!(
            d.store.needs_attention().unwrap().is_empty(),
            "{:?}",
            d.store.needs_attention()
        );
    }
    assert_eq!(max.store.review_inbox().unwrap().len(), 2);
    max.store.approve(&follow_up, "good").unwrap();
    max.store
        .return_work(&reminder, "please try calling again")
        .unwrap();
    for d in [&max, &fay, &ana, &max, &fay, &ana] {
        d.sync();
    }

    assert_converged(&[&max, &ana, &fay]);
    let detail = ana.store.task_detail(&follow_up).unwrap();
    assert_eq!(detail.state.status, TaskStatus::Completed);
    assert_eq!(detail.state.calls.len(), 2, "no call lost, none doubled");
    assert_eq!(detail.state.comments.len(), 1);
    assert_eq!(
        fay.store.task_detail(&reminder).unwrap().state.status,
        TaskStatus::Returned
    );
    for d in [&max, &ana, &fay] {
        assert!(
            d.store.outbox(10).unwrap().is_empty(),
            "everything delivered"
        );
        assert!(d.store.needs_attention().unwrap().is_empty());
    }
    // The assistant sees only what is hers; the front desk only the pool task.
    assert_eq!(ana.store.task_ids().unwrap(), vec![follow_up.clone()]);
    assert_eq!(fay.store.task_ids().unwrap(), vec![reminder.clone()]);
}

#[test]
fn two_front_desk_phones_claim_offline_and_both_see_one_winner() {
    let relay = Relay::start();
    let (team, invite) = relay.create_team("Clinic", "max");
    let max = Phone::enrolled(&relay, &invite);
    let fay = Phone::enrolled(&relay, &relay.invite(&team, "fay", "front_desk"));
    let gus = Phone::enrolled(&relay, &relay.invite(&team, "gus", "front_desk"));
    max.sync();
    let task = max
        .store
        .delegate(task_for("Schedule MRI", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    fay.sync();
    gus.sync();
    fay.store.claim(&task).unwrap();
    gus.store.claim(&task).unwrap();
    gus.sync();
    fay.sync();
    gus.sync();
    max.sync();
    assert_converged(&[&max, &fay, &gus]);
    let winner = max
        .store
        .task_detail(&task)
        .unwrap()
        .state
        .assignee
        .unwrap();
    let loser = if winner == "fay" { &gus } else { &fay };
    let attention = loser.store.needs_attention().unwrap();
    assert_eq!(attention.len(), 1, "the loser is told who has it");
    assert_eq!(attention[0].code, "already_taken");
}

#[test]
fn a_retried_push_stores_nothing_twice() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = max
        .store
        .delegate(task_for("Call", Some("ana"), None))
        .unwrap();
    let outbox = max.store.outbox(10).unwrap();
    let changes: Vec<_> = outbox
        .iter()
        .map(|c| doc_change(&c.doc_id, c.bytes.clone()))
        .collect();
    let token = max.settings().token;
    let raw = RawPush::to(&relay);
    let push = || raw.verdicts(&token, changes.clone());
    assert_eq!(push(), vec![Verdict::Stored]);
    assert_eq!(push(), vec![Verdict::Duplicate]);
    // The engine's own push of the same change is a duplicate too.
    assert_eq!(max.sync().pushed, 1);
    let report = ana.sync();
    assert_eq!(report.pulled, 1, "one copy in the feed");
    assert_eq!(
        ana.store.task_detail(&task).unwrap().state.handoff.title,
        "Call"
    );
}

/// Pushes are admitted where they arrive and enrolment writes the feed
/// itself between them: with both going on at once, every change is in
/// the feed once and in order, also as the relay reads it back after a
/// restart.
#[test]
fn phones_enrolling_while_others_push_lose_nothing() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let tasks: Vec<String> = (0..4)
        .map(|i| hand_over(&max, &ana, &format!("Recall {i}"), "ana"))
        .collect();
    let invites: Vec<String> = (0..10)
        .map(|i| relay.invite(&team, &format!("desk{i}"), "front_desk"))
        .collect();
    let desks = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..40 {
                max.store
                    .comment(&tasks[i % tasks.len()], &format!("note {i}"))
                    .unwrap();
                max.sync();
            }
        });
        s.spawn(|| {
            for i in 0..40 {
                ana.store
                    .log_call(&tasks[i % tasks.len()], call(CallOutcome::NoAnswer))
                    .unwrap();
                ana.sync();
            }
        });
        let desks: Vec<_> = invites
            .iter()
            .map(|invite| {
                let relay = &relay;
                s.spawn(move || Phone::new_enrolled_at(&relay.url, invite))
            })
            .collect();
        desks
            .into_iter()
            .map(|d| d.join().unwrap())
            .collect::<Vec<_>>()
    });
    max.sync();
    ana.sync();
    max.sync();
    assert_converged(&[&max, &ana]);
    for t in &tasks {
        let state = max.store.task_detail(t).unwrap().state;
        assert_eq!(state.calls.len(), 10, "{t}");
        assert_eq!(state.comments.len(), 10, "{t}");
    }
    let members = max.store.team().unwrap().members.len();
    assert_eq!(members, 2 + desks.len(), "every enrolment in the team");
    // The relay reads its feed back as it wrote it.
    relay.kill();
    relay.spawn();
    let mia = Phone::enrolled(&relay, &relay.invite(&team, "mia", "manager"));
    max.sync();
    assert_converged(&[&max, &ana, &mia]);
}

#[test]
fn a_phone_offline_for_weeks_pushes_hundreds_of_changes_and_everyone_converges() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let mut tasks = Vec::new();
    for i in 0..30 {
        tasks.push(
            max.store
                .delegate(task_for(&format!("Call {i}"), Some("ana"), None))
                .unwrap(),
        );
    }
    max.sync();
    ana.sync();
    // Weeks without signal: 10 call attempts on each of 30 tasks.
    for t in &tasks {
        for _ in 0..10 {
            ana.store.log_call(t, call(CallOutcome::NoAnswer)).unwrap();
        }
    }
    assert_eq!(ana.store.outbox(1000).unwrap().len(), 300);
    let report = ana.sync();
    assert_eq!(report.pushed, 300);
    max.sync();
    assert_converged(&[&max, &ana]);
    for t in &tasks {
        assert_eq!(max.store.task_detail(t).unwrap().state.calls.len(), 10);
    }
}

#[test]
fn the_relay_killed_and_restarted_mid_sync_loses_nothing() {
    let mut relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    for _ in 0..20 {
        ana.store.log_call(&task, call(CallOutcome::Busy)).unwrap();
    }
    relay.kill();
    // No relay: the round fails as offline, and nothing leaves the outbox.
    assert!(matches!(ana.engine.sync_now(), Err(Error::Offline(_))));
    assert_eq!(ana.store.outbox(100).unwrap().len(), 20);
    relay.spawn();
    ana.sync();
    // Kill it again right after a push, then restart: the feed survived.
    relay.kill();
    relay.spawn();
    max.sync();
    assert_eq!(max.store.task_detail(&task).unwrap().state.calls.len(), 20);
    assert_converged(&[&max, &ana]);
}

#[test]
fn live_sync_delivers_a_logged_call_to_the_manager_without_asking() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    let events = Arc::new(Events(Mutex::new(Vec::new())));
    // The app started live sync again (its screen was rebuilt) and let the
    // first handle go: that stops the first live sync, not the newer one.
    let first = max.engine.start(events.clone()).unwrap();
    let live = max.engine.start(events.clone()).unwrap();
    drop(first);
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    eventually(20, "the manager's phone has the call", || {
        max.store.task_detail(&task).unwrap().state.calls.len() == 1
    });
    eventually(20, "the listener heard of it", || {
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, SyncEvent::DataChanged { .. }))
    });
    // A local write is pushed at once when the app says so.
    max.store.comment(&task, "great").unwrap();
    live.sync_now();
    // Pull-to-refresh while live sync runs: two rounds at once.
    max.sync();
    eventually(20, "the assistant sees the comment", || {
        ana.sync();
        ana.store.task_detail(&task).unwrap().state.comments.len() == 1
    });
    assert!(max.store.outbox(10).unwrap().is_empty());
    live.stop();
}

#[test]
fn the_relay_shuts_down_gracefully_even_with_long_polls_waiting() {
    let mut relay = Relay::start();
    let (_, invite) = relay.create_team("Clinic", "max");
    let max = Phone::enrolled(&relay, &invite);
    let (rt, client) = http();
    let health = rt.block_on(async {
        client
            .get(format!("{}/health", relay.url))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(health, 200);
    let token = max.settings().token;
    let url = relay.url.clone();
    let cursor = max.store.relay_cursor().unwrap().seq;
    // A pull that would wait a minute for news.
    let waiting = std::thread::spawn(move || {
        let (rt, client) = http();
        rt.block_on(async {
            client
                .get(format!("{url}/v1/pull?cursor={cursor}&wait=60"))
                .bearer_auth(&token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    });
    relay.wait_for_long_polls(1);
    let started = std::time::Instant::now();
    assert!(relay.terminate().success());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(
        waiting.join().unwrap().unwrap(),
        200,
        "the waiting pull was answered"
    );
}

#[test]
fn connections_cut_mid_request_and_mid_response_lose_and_double_nothing() {
    use crate::proxy::{Cut, Proxy};
    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Call", "ana");
    for _ in 0..50 {
        ana.store
            .log_call(&task, call(CallOutcome::NoAnswer))
            .unwrap();
    }
    // Cut connections at every stage: inside the request headers, inside
    // the pushed body, inside the response (after the relay stored it).
    let cuts = [
        Cut::Request(20),
        Cut::Request(400),
        Cut::Request(3000),
        Cut::Response(10),
        Cut::Response(60),
        Cut::Response(200),
    ];
    proxy.cut_next(&cuts);
    // A new engine, so that no kept-alive connection dodges the cuts.
    let engine = SyncEngine::new(ana.store.clone()).unwrap();
    let mut failures = 0;
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries < 50, "sync never got through");
        match engine.sync_now() {
            Ok(_) => break,
            Err(Error::Offline(_)) => failures += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(proxy.pending_cuts(), 0);
    assert_eq!(failures, cuts.len(), "every cut was felt");
    assert!(ana.store.outbox(100).unwrap().is_empty());
    ana.sync();
    max.sync();
    assert_eq!(max.store.task_detail(&task).unwrap().state.calls.len(), 50);
    assert_converged(&[&max, &ana]);
}

/// A relay that derives tasks by other rules than the phone's app (here a
/// debug build pretending to be a newer one) answers 426
/// `upgrade_required`: the phone's changes would mean something else to
/// everyone else. Nothing is stored, live sync stops instead of retrying,
/// and once the versions agree again the queued work goes through.
#[test]
fn a_phone_on_other_rules_is_told_to_update_and_loses_nothing() {
    let mut relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    relay.restart_with_env(&[("HANDOFF_TEST_RULES", "99")]);
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    match ana.engine.sync_now() {
        Err(Error::Relay { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (426, "upgrade_required"));
        }
        other => panic!("{other:?}"),
    }
    let events = Arc::new(Events(Mutex::new(Vec::new())));
    let live = ana.engine.start(events.clone()).unwrap();
    eventually(20, "live sync stops and says why", || {
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, SyncEvent::AuthFailed { code, .. } if code == "upgrade_required"))
    });
    assert_eq!(ana.store.outbox(10).unwrap().len(), 1, "kept, not sent");
    // Tools that name no rules are still served.
    relay.metrics();
    live.stop();

    relay.restart_with_env(&[]);
    assert_eq!(ana.sync().pushed, 1);
    max.sync();
    assert_eq!(max.store.task_detail(&task).unwrap().state.calls.len(), 1);
}

/// A phone enrolled into a clinic with a long history pulls page after
/// page: its user sees how far it has come, and the views fill in as it
/// goes instead of all at the end.
#[test]
fn a_new_phone_far_behind_hears_how_far_it_has_come() {
    let relay = Relay::start();
    // Two and a half pull pages of tasks.
    let tasks = handoff_server::team_state::PAGE_CHANGES * 5 / 2;
    let (team, max) = clinic_with_recalls(&relay, tasks);

    let mia = Phone::new();
    mia.engine
        .enrol(&relay.url, &relay.invite(&team, "mia", "manager"))
        .unwrap();
    let heard = first_live_round(&mia);
    let progress: Vec<(u64, u64)> = heard
        .iter()
        .filter_map(|e| match e {
            SyncEvent::CatchingUp { at, of } => Some((*at, *of)),
            _ => None,
        })
        .collect();
    // A page of 1,000, a second, then the last half page: two reports of
    // how far it has come, none for the last page.
    assert_eq!(progress.len(), 2, "heard: {progress:?}");
    assert!(progress[0].0 < progress[1].0, "forward: {progress:?}");
    for (at, of) in &progress {
        assert!(0 < *at && at < of, "{at} of {of}");
    }
    // Each page's tasks were announced as it landed, before the next page.
    let round: Vec<&str> = heard
        .iter()
        .map(|e| match e {
            SyncEvent::DataChanged { .. } => "tasks changed",
            SyncEvent::CatchingUp { .. } => "catching up",
            SyncEvent::Synced(_) => "synced",
            _ => "other",
        })
        .take_while(|&k| k != "synced")
        .collect();
    assert_eq!(
        round,
        [
            "tasks changed",
            "catching up",
            "tasks changed",
            "catching up",
            "tasks changed"
        ]
    );
    assert_eq!(mia.store.task_ids().unwrap().len(), tasks);
    assert_converged(&[&max, &mia]);
}

/// A phone back after hours offline with a long outbox sends it request
/// after request: its user sees how far that has come.
#[test]
fn a_phone_sending_a_long_outbox_tells_how_far_it_has_come() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    // 256 changes a request: two requests and a bit.
    for i in 0..600 {
        ana.store.comment(&task, &format!("note {i}")).unwrap();
    }
    let events = Arc::new(Events(Mutex::new(Vec::new())));
    let report = ana.engine.sync_now_telling(events.clone()).unwrap();
    assert_eq!(report.pushed, 600);
    let sending: Vec<(u64, u64)> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Sending { sent, of } => Some((*sent, *of)),
            _ => None,
        })
        .collect();
    // None once the last request is through: "synced" says that.
    assert_eq!(sending, [(256, 600), (512, 600)]);
    max.sync();
    assert_eq!(
        max.store.task_detail(&task).unwrap().state.comments.len(),
        600
    );
}

/// A change the relay refuses during live sync is set aside on the phone:
/// the app hears that its views read differently, so "needs attention"
/// shows the refusal without waiting for some other news.
#[test]
fn a_refusal_during_live_sync_tells_the_app_to_read_its_views_again() {
    let relay = Relay::start();
    let (_, max, lee) = manager_and(&relay, "lee", "manager");
    lee.sync();
    set_member(&max, "lee", Role::ClinicalAssistant, false, true);
    // Her phone has not heard she may no longer delegate; the relay has.
    lee.store
        .delegate(task_for("Handed out too late", Some("max"), None))
        .unwrap();
    let heard = first_live_round(&lee);
    let synced = heard
        .iter()
        .position(|e| matches!(e, SyncEvent::Synced(_)))
        .unwrap();
    assert!(
        matches!(&heard[synced], SyncEvent::Synced(r) if r.refused == 1),
        "{heard:?}"
    );
    assert!(
        heard[..synced]
            .iter()
            .any(|e| matches!(e, SyncEvent::DataChanged { .. })),
        "{heard:?}"
    );
    assert_eq!(lee.store.needs_attention().unwrap().len(), 1);
}

/// A change of the team alone (a new policy) alters no task, yet the views
/// read it (KPIs count calls against the policy's window): a live phone is
/// told to read them again.
#[test]
fn a_new_policy_tells_a_live_phone_to_read_its_views_again() {
    let relay = Relay::start();
    let (_, max, lee) = manager_and(&relay, "lee", "clinician");
    max.store
        .delegate(task_for("Post-op call", Some("lee"), None))
        .unwrap();
    max.sync();
    lee.sync();
    max.store
        .set_policy(&Policy {
            follow_up_within_hours: 24,
            ..Policy::default()
        })
        .unwrap();
    max.sync();
    let heard = first_live_round(&lee);
    assert!(
        heard
            .iter()
            .any(|e| matches!(e, SyncEvent::DataChanged { tasks_updated: 0 })),
        "{heard:?}"
    );
    assert_eq!(lee.store.team().unwrap().policy.follow_up_within_hours, 24);
}

/// An admin who makes herself a manager on her own phone sees every task
/// from then on, also those her pulls passed over before: the relay never
/// sends a phone its own change back, so her phone reads the feed again
/// from its start when it writes the change.
#[test]
fn an_admin_who_widens_her_own_sight_is_sent_the_tasks_it_lets_her_read() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let ada = Phone::enrolled(&relay, &relay.invite(&team, "ada", "admin"));
    max.sync();
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    ada.sync();
    assert!(ada.store.task_detail(&task).is_err());
    set_member(&ada, "ada", Role::Manager, false, true);
    ada.sync();
    assert_eq!(
        ada.store.task_detail(&task).unwrap().state,
        max.store.task_detail(&task).unwrap().state
    );
}

/// Ana moves from the assistants to the front desk, and Fay is promoted to
/// manager: each phone is then sent the tasks its user may read now that
/// nothing changed since (the desk's pool, everyone's tasks). It used to
/// be sent only what changed after the move.
#[test]
fn a_member_given_another_role_is_sent_the_tasks_it_lets_her_read() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let fay = Phone::enrolled(&relay, &relay.invite(&team, "fay", "front_desk"));
    let pooled = max
        .store
        .delegate(task_for(
            "Book the 6-week check",
            None,
            Some(Role::FrontDesk),
        ))
        .unwrap();
    let for_ana = hand_over(&max, &ana, "Post-op call", "ana");
    fay.sync();
    assert!(ana.store.task_detail(&pooled).is_err());
    assert!(fay.store.task_detail(&for_ana).is_err());

    set_member(&max, "ana", Role::FrontDesk, false, true);
    set_member(&max, "fay", Role::Manager, false, true);
    let heard = first_live_round(&ana);
    assert!(
        heard
            .iter()
            .any(|e| matches!(e, SyncEvent::DataChanged { tasks_updated } if *tasks_updated > 0)),
        "{heard:?}"
    );
    fay.sync();
    for (phone, task) in [(&ana, &pooled), (&fay, &pooled), (&fay, &for_ana)] {
        assert_eq!(
            phone.store.task_detail(task).unwrap().state,
            max.store.task_detail(task).unwrap().state
        );
    }
    assert_eq!(ana.store.shared_pool().unwrap().len(), 1);
    // Read again from the start once: the next round pulls nothing.
    assert_eq!(ana.sync().pulled, 0);
    assert_eq!(fay.sync().pulled, 0);
}

/// The relay enrolled a phone, but the reply was lost on the way (a dead
/// zone): the same phone redeems the same invite again and gets in, where
/// it used to get `invite_used` and have no way in with its device id.
/// Another device still gets `invite_used`.
#[test]
fn an_enrolment_whose_reply_was_lost_is_made_again_by_the_same_phone() {
    use crate::proxy::Proxy;
    let relay = Relay::start();
    let (team, max, _) = manager_and(&relay, "tom", "clinical_assistant");
    let proxy = Proxy::to(&relay.url);
    proxy.cut_replies_after(0);
    let ana = Phone::new();
    let invite = relay.invite(&team, "ana", "clinical_assistant");
    let lost = ana.engine.enrol(&proxy.url, &invite);
    assert!(matches!(lost, Err(Error::Offline(_))), "{lost:?}");
    assert!(ana.store.relay_settings().unwrap().is_none());
    let devices = relay.admin(&["devices", "--team", &team]);
    assert!(
        devices.contains("\tana\t"),
        "the relay enrolled her: {devices}"
    );

    // Someone else who saw the invite, and knows her phone's actor id (it
    // is in every event and in the team document), cannot take her place:
    // only her phone has the token it enrolled with.
    let (status, body) = enrol_raw(
        &relay,
        serde_json::json!({
            "invite": invite,
            "actor": ana.store.device_actor(),
            "token": "ab".repeat(32),
        }),
    );
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("invite_used"), "{body}");

    let again = ana.engine.enrol(&proxy.url, &invite).unwrap();
    assert_eq!(
        (again.user.as_str(), again.role),
        ("ana", Role::ClinicalAssistant)
    );
    max.sync();
    let task = hand_over(&max, &ana, "Call back", "ana");
    assert!(ana.store.task_detail(&task).is_ok());

    let other = Phone::new();
    match other.engine.enrol(&relay.url, &invite) {
        Err(Error::Relay { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (410, "invite_used"))
        }
        got => panic!("{got:?}"),
    }
    // One device for her, as before.
    let devices = relay.admin(&["devices", "--team", &team]);
    assert_eq!(devices.matches("\tana\t").count(), 1, "{devices}");
}

/// An app from before phones chose their tokens sends none: the relay makes
/// one and sends it back, and it works. A token another device has
/// already (a hand-made client's choice) is refused before anything is
/// written: the invite stays good and the team keeps working.
#[test]
fn an_older_app_enrols_and_a_token_taken_already_is_refused_harmlessly() {
    let relay = Relay::start();
    let (team, max, _) = manager_and(&relay, "tom", "clinical_assistant");
    let enrol = |body| enrol_raw(&relay, body);
    let invite = relay.invite(&team, "ana", "clinical_assistant");
    let (status, body) = enrol(serde_json::json!({
        "invite": invite,
        "actor": "ab".repeat(16),
        "token": max.settings().token,
    }));
    assert_eq!(status, 409, "{body}");
    max.store
        .delegate(task_for("Call back", Some("tom"), None))
        .unwrap();
    let report = max.engine.sync_now().unwrap();
    assert_eq!(report.pushed, 1);

    let (status, body) = enrol(serde_json::json!({"invite": invite, "actor": "ab".repeat(16)}));
    assert_eq!(status, 200, "{body}");
    let reply: sync::wire::EnrolReply = serde_json::from_str(&body).unwrap();
    let token = reply.token.expect("the relay's token for an older app");
    assert_eq!(reply.user, "ana");
    let (rt, client) = http();
    let changes = pull_all(&rt, &client, &relay.url, &token);
    assert!(!changes.is_empty());
    // Without a token of its own, it cannot prove a retry.
    let (status, body) = enrol(serde_json::json!({"invite": invite, "actor": "ab".repeat(16)}));
    assert_eq!(status, 410, "{body}");
}

/// A new phone's first catch-up is cut short (the signal goes in the
/// basement): enrolling again fetches the rest, where it used to refuse
/// as "already enrolled" and leave the app with no way in.
#[test]
fn an_enrolment_cut_short_is_finished_by_enrolling_again() {
    use crate::proxy::Proxy;
    let relay = Relay::start();
    let (team, _max) = clinic_with_recalls(&relay, 10);
    let proxy = Proxy::to(&relay.url);
    // The enrolment's reply gets through; the pull after it is cut
    // mid-reply.
    proxy.cut_replies_after(2_000);
    let fay = Phone::new();
    let invite = relay.invite(&team, "fay", "front_desk");
    let heard = Arc::new(Events(Mutex::new(Vec::new())));
    let cut = fay
        .engine
        .enrol_and_catch_up(&proxy.url, &invite, heard.clone());
    assert!(matches!(cut, Err(Error::Offline(_))), "{cut:?}");
    assert!(fay.store.relay_settings().unwrap().is_some());

    let done = fay
        .engine
        .enrol_and_catch_up(&proxy.url, &invite, heard.clone())
        .unwrap();
    assert_eq!((done.user.as_str(), done.role), ("fay", Role::FrontDesk));
    assert_eq!(fay.store.shared_pool().unwrap().len(), 10);
    assert!(matches!(
        heard.0.lock().unwrap().last(),
        Some(SyncEvent::Synced(_))
    ));
    // Finished: enrolling once more is refused.
    assert!(matches!(
        fay.engine.enrol_and_catch_up(&proxy.url, &invite, heard),
        Err(Error::AlreadyEnrolled)
    ));
}

/// Told of new data, an app may want more: here a listener asks for a sync
/// on another thread (a "refresh" wired to the event), and for one on its
/// own thread too. The engine tells listeners with none of its locks
/// held, so a sync on another thread runs even while the listener waits
/// for it (it used to wait for the very round that was telling, for
/// ever); one asked on the listener's own thread is refused with a typed
/// error (it used to panic inside tokio). Live sync tells on the engine's
/// one thread, which a listener must not block: there it does not wait.
#[test]
fn a_listener_may_ask_for_a_sync_when_told_of_new_data() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    struct SyncsWhenTold {
        engine: Arc<SyncEngine>,
        /// Wait for the sync asked of another thread (not on live sync's
        /// thread).
        waits: AtomicBool,
        /// What each sync asked of another thread gave; `None`: it had not
        /// ended within 30 s.
        elsewhere: Arc<Mutex<Vec<Option<bool>>>>,
        here: Mutex<Vec<String>>,
    }
    impl SyncListener for SyncsWhenTold {
        fn on_sync_event(&self, e: SyncEvent) {
            if !matches!(e, SyncEvent::DataChanged { .. }) {
                return;
            }
            match self.engine.sync_now() {
                Err(Error::InvalidInput(why)) => self.here.lock().unwrap().push(why),
                other => panic!("a sync on the listener's thread: {other:?}"),
            }
            let (done, ended) = mpsc::channel();
            let (engine, elsewhere) = (self.engine.clone(), self.elsewhere.clone());
            std::thread::spawn(move || {
                let ok = engine.sync_now().is_ok();
                if done.send(ok).is_err() {
                    elsewhere.lock().unwrap().push(Some(ok));
                }
            });
            if self.waits.load(Ordering::SeqCst) {
                let outcome = ended.recv_timeout(Duration::from_secs(30)).ok();
                self.elsewhere.lock().unwrap().push(outcome);
            }
        }
    }

    let relay = Relay::start();
    let (team, max) = clinic_with_recalls(&relay, 2);
    let fay = Phone::enrolled(&relay, &relay.invite(&team, "fay", "front_desk"));
    let engine = Arc::new(SyncEngine::new(fay.store.clone()).unwrap());
    let told = Arc::new(SyncsWhenTold {
        engine: engine.clone(),
        waits: AtomicBool::new(true),
        elsewhere: Arc::default(),
        here: Mutex::new(Vec::new()),
    });
    max.store
        .delegate(task_for("Recall 2", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    engine.sync_now_telling(told.clone()).unwrap();
    assert_eq!(fay.store.shared_pool().unwrap().len(), 3);
    let asked = told.elsewhere.lock().unwrap().clone();
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|o| *o == Some(true)), "{asked:?}");

    told.waits.store(false, Ordering::SeqCst);
    let live = engine.start(told.clone()).unwrap();
    max.store
        .delegate(task_for("Recall 3", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    eventually(60, "the sync the live listener asked for", || {
        told.elsewhere.lock().unwrap().len() > asked.len()
    });
    live.stop();
    let elsewhere = told.elsewhere.lock().unwrap().clone();
    assert!(elsewhere.iter().all(|o| *o == Some(true)), "{elsewhere:?}");
    assert!(told.here.lock().unwrap().len() > asked.len());
    assert_eq!(fay.store.shared_pool().unwrap().len(), 4);
}

/// A listener that throws (an app's callback with a bug) does not end live
/// sync for good: the loop starts again, says it was offline meanwhile, and
/// the phone keeps receiving what others do.
#[test]
fn live_sync_goes_on_after_its_listener_panics() {
    use std::sync::atomic::{AtomicBool, Ordering};

    struct PanicsOnce {
        panicked: AtomicBool,
        heard: Mutex<Vec<SyncEvent>>,
    }
    impl SyncListener for PanicsOnce {
        fn on_sync_event(&self, e: SyncEvent) {
            let synced = matches!(e, SyncEvent::Synced(_));
            self.heard.lock().unwrap().push(e);
            if synced && !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("the app's listener throws (expected in this test)");
            }
        }
    }

    let relay = Relay::start();
    let (team, max) = clinic_with_recalls(&relay, 1);
    let fay = Phone::enrolled(&relay, &relay.invite(&team, "fay", "front_desk"));
    let listener = Arc::new(PanicsOnce {
        panicked: AtomicBool::new(false),
        heard: Mutex::new(Vec::new()),
    });
    let live = fay.engine.start(listener.clone()).unwrap();
    eventually(30, "the listener's panic", || {
        listener.panicked.load(Ordering::SeqCst)
    });
    max.store
        .delegate(task_for("Recall 1", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    eventually(30, "the new task on fay's phone after the panic", || {
        fay.store.shared_pool().unwrap().len() == 2
    });
    live.stop();
    let heard = listener.heard.lock().unwrap();
    assert!(
        heard.iter().any(|e| matches!(e, SyncEvent::Offline { .. })),
        "{heard:?}"
    );
}

/// `/metrics` gives the feed length of every team, also of teams no
/// request has loaded since the relay started: it used to count only
/// those, so a restarted relay showed 0 until a phone called.
#[test]
fn metrics_count_the_feed_of_teams_not_loaded_since_the_start() {
    let mut relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    hand_over(&max, &ana, "Call back", "ana");
    let (_, other) = relay.create_team("Lakeside", "lin");
    let lin = Phone::enrolled(&relay, &other);
    lin.store
        .delegate(task_for("Recall", Some("lin"), None))
        .unwrap();
    lin.sync();
    let length = |relay: &Relay| -> u64 {
        relay
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("handoff_feed_length "))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let before = length(&relay);
    // Two teams' documents, their members and devices, two tasks.
    assert!(before >= 6, "{before}");
    relay.restart_with_env(&[]);
    assert_eq!(length(&relay), before);
    max.sync();
    assert_eq!(length(&relay), before);
}

/// `/metrics` counts every request by route and status, and its latency
/// histogram per route adds up over the statuses.
#[test]
fn metrics_count_each_route_and_status() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    max.store
        .delegate(task_for("Call", Some("ana"), None))
        .unwrap();
    max.sync();
    let (status, _) = RawPush::to(&relay).send("not-a-token", Vec::new());
    assert_eq!(status, 401);
    let text = relay.metrics();
    let value = |name: &str| metric(&text, name);
    let ok = value(r#"handoff_requests_total{route="/v1/push",status="200"}"#);
    let refused = value(r#"handoff_requests_total{route="/v1/push",status="401"}"#);
    assert!(ok >= 1, "{text}");
    assert_eq!(refused, 1, "{text}");
    assert_eq!(
        value(r#"handoff_requests_total{route="/v1/enrol",status="200"}"#),
        2,
        "{text}"
    );
    assert_eq!(
        value(r#"handoff_request_duration_seconds_count{route="/v1/push"}"#),
        ok + refused,
        "{text}"
    );
    // A client that goes away mid-poll is answered when its wait ends
    // (the relay posts no read to notice it leaving: that read held a
    // second buffer per waiting poll), counted once, and the poll is no
    // longer counted as waiting.
    let pulls = r#"handoff_requests_total{route="/v1/pull",status="200"}"#;
    ana.sync();
    let answered = relay.metric(pulls);
    let conn = raw_poll(&relay, &ana, 5);
    relay.wait_for_long_polls(1);
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = relay.metrics();
        if metric(&text, pulls) > answered {
            assert_eq!(metric(&text, pulls), answered + 1, "{text}");
            assert_eq!(metric(&text, "handoff_long_polls"), 0, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A phone leaves its long-poll (to push what its user wrote) and polls
/// again. The relay does not notice the client leave, but the newer poll
/// of the same phone ends the one it left within seconds (`OVERLAP`), not
/// when its minute runs out: the relay holds no poll per write. The newer
/// poll waits on, and news reaches it.
#[test]
fn a_poll_left_for_a_newer_one_of_the_same_phone_ends_soon() {
    use std::io::Read;
    use std::time::Duration;

    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back", "ana");
    let poll = || raw_poll(&relay, &ana, 60);
    let answered =
        |relay: &Relay| relay.metric(r#"handoff_requests_total{route="/v1/pull",status="200"}"#);
    let left = poll();
    relay.wait_for_long_polls(1);
    drop(left);
    let before = answered(&relay);
    let mut newer = poll();
    // Within 20 s, not when its minute runs out.
    eventually(20, "the poll left behind is answered", || {
        answered(&relay) > before
    });
    assert_eq!(answered(&relay), before + 1);
    relay.wait_for_long_polls(1);

    max.store.comment(&task, "she called back").unwrap();
    max.sync();
    newer
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = [0u8; 12];
    newer.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the newer poll heard the news");
}

/// Two apps on one phone (one token) poll at once: the newer poll ends the
/// older, but only once the older has waited 5 s (`OVERLAP`), so the two
/// take turns every few seconds rather than as fast as they can ask. The
/// newer poll waits on meanwhile.
#[test]
fn two_polls_of_one_phone_take_turns_no_faster_than_every_few_seconds() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let relay = Relay::start();
    let (_, _max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let sent = Instant::now();
    let mut older = raw_poll(&relay, &ana, 60);
    relay.wait_for_long_polls(1);
    let _newer = raw_poll(&relay, &ana, 60);
    older
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = [0u8; 12];
    older.read_exact(&mut head).unwrap();
    let waited = sent.elapsed();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        waited >= Duration::from_secs(5),
        "the older poll was cut short after {waited:?}"
    );
    relay.wait_for_long_polls(1);
}

/// A user who keeps writing while her phone carries a big batch over a
/// slow uplink: each write tells live sync, which only cuts a wait for
/// news short. The push under way goes through; it used to be dropped and
/// started over at every write, so a user writing faster than the link
/// carried the batch never saw it through.
#[test]
fn writing_while_a_batch_goes_up_does_not_start_it_over() {
    use crate::proxy::Proxy;
    use std::sync::atomic::{AtomicBool, Ordering};

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    for i in 0..300 {
        ana.store.comment(&task, &format!("note {i}")).unwrap();
    }
    // ~70 KB to send: more than a second at 50 KB/s.
    proxy.slow_uploads(50_000);
    let events = Arc::new(Events(Mutex::new(Vec::new())));
    let live = ana.engine.start(events.clone()).unwrap();
    /// Stops the app's writes however the wait ends (a failed one too).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = Stop(&done);
        // The app, telling live sync of a write every 20 ms.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                live.sync_now();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        eventually(30, "the batch goes through while she writes", || {
            ana.store.outbox(1).unwrap().is_empty()
        });
    });
    live.stop();
    max.sync();
    assert_eq!(
        max.store.task_detail(&task).unwrap().state.comments.len(),
        300
    );
}

/// Rounds of `engine` that failed before one went through, at most
/// `tries`.
fn rounds_failed_until_one_goes_through(engine: &SyncEngine, tries: usize) -> usize {
    (0..tries)
        .take_while(|_| engine.sync_now().is_err())
        .count()
}

/// Rounds of `engine` that failed before `store`'s outbox was through, at
/// most `tries` rounds.
fn rounds_failed_until_sent(store: &Store, engine: &SyncEngine, tries: usize) -> usize {
    let mut failed = 0;
    for _ in 0..tries {
        if store.outbox(1).unwrap().is_empty() {
            break;
        }
        if engine.sync_now().is_err() {
            failed += 1;
        }
    }
    failed
}

/// A phone on a weak signal catching up on a long task: the page takes
/// longer to arrive than any fixed limit would allow, and is read for as
/// long as it keeps coming. Under a 30 s limit for the whole reply it was
/// given up every time, and the phone never caught up.
#[test]
fn a_page_on_a_weak_signal_is_read_for_as_long_as_it_keeps_coming() {
    use crate::proxy::Proxy;
    use std::time::{Duration, Instant};

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    long_comments(&max.store, &task, 40, 9_000, 0);
    max.sync();
    // ~370 KB at 11 KB/s: more than 30 s.
    proxy.slow_downloads(11_000);
    let started = Instant::now();
    let report = ana.engine.sync_now();
    let took = started.elapsed();
    assert!(report.is_ok(), "{report:?} after {took:?}");
    assert!(
        took > Duration::from_secs(31),
        "the page came faster than the old limit ({took:?}): this checks nothing"
    );
    assert_eq!(
        ana.store.task_detail(&task).unwrap().state.comments.len(),
        40
    );
}

/// A link that drops every connection after so many bytes down: a page
/// of a long task fails on the way each time. Each failure halves the page
/// the phone asks for, until pages get through. With a fixed page size it
/// failed the same way at every retry, and the phone never caught up.
#[test]
fn pulls_over_a_link_that_drops_long_downloads_ask_for_smaller_pages() {
    use crate::proxy::Proxy;

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    long_comments(&max.store, &task, 40, 9_000, 0);
    max.sync();
    // One page would carry ~370 KB.
    proxy.cut_downloads_over(100_000);
    proxy.close_all();
    let failed = rounds_failed_until_one_goes_through(&ana.engine, 60);
    assert!(failed > 0, "no pull was cut: this checks nothing");
    assert_eq!(
        ana.store.task_detail(&task).unwrap().state.comments.len(),
        40,
        "still not caught up after {failed} cut pulls"
    );
    proxy.cut_downloads_over(0);
    proxy.close_all();
    assert_converged(&[&max, &ana]);
}

/// Ana leaves the front desk for the assistants: her phone reads the feed
/// again and drops the desk's pooled task she may no longer read. On a
/// link that drops long downloads the re-read takes several rounds; it
/// used to drop only when one round read it through, so her phone kept
/// the pool's task (patient details and all) until her next role change.
#[test]
fn a_reread_after_a_role_change_cut_short_still_drops_what_she_may_no_longer_read() {
    use crate::proxy::Proxy;

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let long = hand_over(&max, &ana, "Post-op call", "ana");
    long_comments(&max.store, &long, 40, 9_000, 0);
    set_member(&max, "ana", Role::FrontDesk, false, true);
    let pooled = max
        .store
        .delegate(task_for("Recall", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    ana.sync();
    assert!(ana.store.task_detail(&pooled).is_ok());
    assert_eq!(
        ana.store.task_detail(&long).unwrap().state.comments.len(),
        40
    );

    set_member(&max, "ana", Role::ClinicalAssistant, false, true);
    // Reading again from the start would carry ~370 KB in one page.
    proxy.cut_downloads_over(100_000);
    proxy.close_all();
    let failed = rounds_failed_until_one_goes_through(&ana.engine, 60);
    assert!(failed > 0, "no pull was cut: this checks nothing");
    assert!(
        matches!(ana.store.task_detail(&pooled), Err(Error::TaskNotFound(_))),
        "kept after {failed} cut rounds"
    );
    assert_eq!(
        ana.store.task_detail(&long).unwrap().state.comments.len(),
        40
    );
    assert_eq!(ana.store.rereading().unwrap(), None);
    proxy.cut_downloads_over(0);
    proxy.close_all();
    ana.sync();
    assert!(ana.store.task_detail(&pooled).is_err());
}

/// The same link, for a task handed to the phone after a long history it
/// never saw: the relay sends the history in a repair, which was one reply
/// however long. After the pulls lost on the way it comes in pages, each
/// taken in before the next is asked for.
#[test]
fn a_long_task_handed_over_is_repaired_in_pages_over_a_link_that_drops_long_downloads() {
    use crate::proxy::Proxy;

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = max
        .store
        .delegate(task_for("Post-op call", Some("max"), None))
        .unwrap();
    long_comments(&max.store, &task, 40, 9_000, 0);
    max.sync();
    // Her cursor passes the history she may not read.
    ana.sync();
    assert!(ana.store.task_ids().unwrap().is_empty());
    // The page that brings the handover brings ~60 KB of other news first:
    // a page that grew the budget before the repair had it fail there.
    let other = max
        .store
        .delegate(task_for("Lab results", Some("ana"), None))
        .unwrap();
    long_comments(&max.store, &other, 7, 9_000, 100);
    max.store.assign(&task, "ana").unwrap();
    max.sync();
    // The repair would carry ~370 KB.
    proxy.cut_downloads_over(100_000);
    proxy.close_all();
    let failed = rounds_failed_until_one_goes_through(&ana.engine, 60);
    assert!(failed > 0, "no repair was cut: this checks nothing");
    assert_eq!(
        ana.store.task_detail(&task).unwrap().state.comments.len(),
        40,
        "still not repaired after {failed} cut pulls"
    );
    assert_eq!(
        ana.store.task_detail(&other).unwrap().state.comments.len(),
        7
    );
    proxy.cut_downloads_over(0);
    proxy.close_all();
    assert_converged(&[&max, &ana]);
}

/// A reply that stops arriving is given up, so live sync can try again,
/// rather than waited on for good.
#[test]
fn a_reply_that_stops_arriving_is_given_up() {
    use crate::proxy::Proxy;
    use std::time::{Duration, Instant};

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    long_comments(&max.store, &task, 4, 9_000, 0);
    max.sync();
    // One piece of the page, then nothing for hours.
    proxy.slow_downloads(1);
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let ana = Arc::new(ana);
    {
        // Not a scoped thread: a sync that never returns must fail the
        // test, not hang it.
        let ana = ana.clone();
        std::thread::spawn(move || {
            let _ = tx.send(ana.engine.sync_now());
        });
    }
    let outcome = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a stalled reply was still waited on after 60 s");
    assert!(matches!(outcome, Err(Error::Offline(_))), "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_secs(29));
    assert!(ana
        .store
        .task_detail(&task)
        .unwrap()
        .state
        .comments
        .is_empty());
}

/// A link that drops every connection after so many bytes up: a phone's
/// big batch fails on the way each time. Each failure halves what the next
/// push carries, until pushes get through, and everything arrives once.
/// With a fixed batch size it failed the same way at every retry, and the
/// phone's work never reached the relay.
#[test]
fn pushes_over_a_link_that_drops_long_uploads_carry_less_until_they_get_through() {
    use crate::proxy::Proxy;

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    long_comments(&ana.store, &task, 300, 1_000, 0);
    // The first push would carry 256 changes, ~300 KB.
    proxy.cut_uploads_over(48_000);
    proxy.close_all();
    let failed = rounds_failed_until_sent(&ana.store, &ana.engine, 80);
    assert!(failed > 0, "no push was cut: this checks nothing");
    assert!(
        ana.store.outbox(1).unwrap().is_empty(),
        "the outbox is still not through after {failed} cut pushes"
    );
    // The app starts again (a background sync may be a new process each
    // time) on the same link: it goes on from what the last run found,
    // rather than learning it again one lost push at a time.
    long_comments(&ana.store, &task, 60, 1_000, 1_000);
    let started_again = SyncEngine::new(ana.store.clone()).unwrap();
    let failed_again = rounds_failed_until_sent(&ana.store, &started_again, 20);
    assert!(ana.store.outbox(1).unwrap().is_empty());
    assert!(
        failed_again <= 2,
        "{failed_again} pushes lost after the restart, {failed} before"
    );
    proxy.cut_uploads_over(0);
    proxy.close_all();
    max.sync();
    let comments = max.store.task_detail(&task).unwrap().state.comments;
    assert_eq!(comments.len(), 360);
    ana.sync();
    assert_converged(&[&max, &ana]);
}

/// A 401 page that is not the relay's (a gateway or captive portal in
/// front of it, no code of ours) is retried like any outage: live sync
/// goes on once the relay answers again. It used to stop for good, as for
/// the relay's own `invalid_token`, until the app restarted.
#[test]
fn a_gateway_401_is_retried_not_taken_as_the_relays_word() {
    use crate::proxy::{Cut, Proxy};

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    proxy.cut_next(&[Cut::GatewayPage, Cut::GatewayPage]);
    proxy.close_all();
    let events = Arc::new(Events(Mutex::new(Vec::new())));
    let live = ana.engine.start(events.clone()).unwrap();
    eventually(30, "the gateway's pages are passed", || {
        proxy.pending_cuts() == 0
    });
    max.store.comment(&task, "still there?").unwrap();
    max.sync();
    eventually(30, "live sync goes on and brings the comment", || {
        ana.store.task_detail(&task).unwrap().state.comments.len() == 1
    });
    live.stop();
    let heard = events.0.lock().unwrap();
    assert!(
        heard.iter().any(|e| matches!(e, SyncEvent::Offline { .. })),
        "{heard:?}"
    );
    assert!(
        !heard
            .iter()
            .any(|e| matches!(e, SyncEvent::AuthFailed { .. })),
        "{heard:?}"
    );
}

/// A phone's long-poll waiting when its team fails (here a panic injected
/// at admission: the team is reloaded from its feed on next use) wakes and
/// waits on the reloaded team, so the next change reaches it at once. It
/// waited on the failed team's state, which no change reaches again, until
/// its wait ran out.
#[test]
fn a_poll_waiting_when_its_team_is_reloaded_hears_the_next_change() {
    use automerge::transaction::Transactable;

    let relay = Relay::start_with_env(&[], &[("HANDOFF_TEST_PANIC_ON_DOC", "poison")]);
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back", "ana");
    let events = Arc::new(Events(Mutex::new(Vec::new())));
    let live = ana.engine.start(events.clone()).unwrap();
    eventually(20, "ana's phone waits for news", || {
        relay.metrics().contains("handoff_long_polls 1")
    });
    let actor = automerge::ActorId::from(hex::decode(max.store.device_actor()).unwrap());
    let mut doc = automerge::AutoCommit::new().with_actor(actor);
    doc.put(automerge::ROOT, "task_id", "poison").unwrap();
    doc.commit();
    let poison = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let (status, _) =
        RawPush::to(&relay).send(&max.settings().token, vec![doc_change("poison", poison)]);
    assert_eq!(status, 500, "admission panicked: the team failed");
    max.store.comment(&task, "after the reload").unwrap();
    assert_eq!(max.sync().pushed, 1);
    eventually(10, "the waiting phone hears of it", || {
        ana.store.task_detail(&task).unwrap().state.comments.len() == 1
    });
    live.stop();
}
