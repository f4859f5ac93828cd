use handoff_core::sync::wire::{self, PullReply, RefusalCode, Verdict};
use handoff_core::*;

use crate::harness::*;

#[test]
fn a_device_of_one_team_reads_nothing_of_another() {
    let relay = Relay::start();
    let (_, a_invite) = relay.create_team("Clinic A", "max");
    let (_, b_invite) = relay.create_team("Clinic B", "zoe");
    let max = Phone::enrolled(&relay, &a_invite);
    let zoe = Phone::enrolled(&relay, &b_invite);
    let secret = max
        .store
        .delegate(task_for("A's task", Some("max"), None))
        .unwrap();
    max.sync();
    zoe.sync();
    assert!(zoe.store.task_ids().unwrap().is_empty());
    assert_eq!(zoe.store.team().unwrap().name, "Clinic B");
    let (rt, client) = http();
    let token = zoe.settings().token;
    rt.block_on(async {
        // Asking for A's document by id: it does not exist for B.
        let r = client
            .post(format!("{}/v1/repair", relay.url))
            .bearer_auth(&token)
            .body(wire::encode(&wire::RepairRequest {
                doc: secret.clone(),
                have: vec![],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // Pulling from the start returns B's team document only.
        let r = client
            .get(format!("{}/v1/pull?cursor=0", relay.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let reply: PullReply = wire::decode(&r.bytes().await.unwrap()).unwrap();
        assert!(reply.changes.iter().all(|c| c.doc == "team"));
    });
    // Writing under A's document id from B is refused (the change lays out
    // another task), and touches nothing of A's.
    let before = max.store.task_detail(&secret).unwrap().state;
    zoe.store
        .delegate(task_for("B's task", Some("zoe"), None))
        .unwrap();
    let zoes = zoe.store.outbox(10).unwrap().remove(0);
    let verdicts = RawPush::to(&relay).verdicts(&token, vec![doc_change(&secret, zoes.bytes)]);
    refused_as_invalid(&verdicts);
    max.sync();
    assert_eq!(max.store.task_ids().unwrap(), vec![secret.clone()]);
    assert_eq!(max.store.task_detail(&secret).unwrap().state, before);
}

/// A stolen phone revoked while its push is still going up (a slow
/// uplink) stores nothing of it: the relay checks its token again once the
/// body is in. It used to check only before, and store the whole batch.
#[test]
fn a_device_revoked_while_its_push_goes_up_stores_nothing_of_it() {
    use crate::proxy::Proxy;
    use std::sync::atomic::Ordering;

    let relay = Relay::start();
    let proxy = Proxy::to(&relay.url);
    let (max, ana) = manager_and_proxied(&relay, &proxy.url);
    let task = hand_over(&max, &ana, "Call", "ana");
    for i in 0..200 {
        ana.store.comment(&task, &format!("note {i}")).unwrap();
    }
    // ~45 KB in one push, at 15 KB/s: about three seconds going up.
    proxy.slow_uploads(15_000);
    proxy.up.store(0, Ordering::SeqCst);
    std::thread::scope(|s| {
        let sync = s.spawn(|| ana.engine.sync_now());
        eventually(10, "the push is going up", || {
            proxy.up.load(Ordering::SeqCst) > 4_000
        });
        relay.admin(&["revoke", "--device", &ana.store.device_actor()]);
        assert!(matches!(sync.join().unwrap(), Err(Error::DeviceRevoked)));
    });
    assert!(ana.store.was_wiped().unwrap());
    max.sync();
    assert!(max
        .store
        .task_detail(&task)
        .unwrap()
        .state
        .comments
        .is_empty());
}

#[test]
fn a_revoked_device_gets_401_wipes_its_store_and_reads_nothing_more() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    assert_eq!(ana.store.task_ids().unwrap(), vec![task.clone()]);
    let token = ana.settings().token;
    let listed = relay.admin(&["devices", "--team", &team]);
    assert!(listed.contains(&ana.store.device_actor()));
    let ana_actor = ana.store.device_actor();
    relay.admin(&["revoke", "--device", &ana_actor]);

    assert!(matches!(ana.engine.sync_now(), Err(Error::DeviceRevoked)));
    assert!(ana.store.was_wiped().unwrap());
    assert!(ana.store.task_ids().unwrap().is_empty());
    assert!(ana.store.relay_settings().unwrap().is_none());
    assert!(matches!(
        ana.store.task_detail(&task),
        Err(Error::TaskNotFound(_))
    ));
    // Nothing of the task is left in the file, even with the key.
    let conn = ana.open_file();
    let rows: i64 = conn
        .query_row("SELECT (SELECT count(*) FROM changes) + (SELECT count(*) FROM snapshots) + (SELECT count(*) FROM tasks)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    // The old token reads nothing.
    let (rt, client) = http();
    rt.block_on(async {
        let r = client
            .get(format!("{}/v1/pull?cursor=0", relay.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: wire::ErrorBody = r.json_body().await;
        assert_eq!(body.code, "device_revoked");
    });
    // The relay writes the revocation into the team document: the team's
    // other phones list the device as revoked, and its past work stands.
    eventually(10, "max's phone lists ana's device as revoked", || {
        max.sync();
        max.store
            .team()
            .unwrap()
            .devices
            .get(&ana_actor)
            .is_some_and(|d| d.revoked)
    });
    assert_eq!(
        max.store
            .task_detail(&task)
            .unwrap()
            .state
            .assignee
            .as_deref(),
        Some("ana")
    );
}

/// The relay remembers the tokens it has checked; the admin command tells
/// it of a revocation at once. One written into the database by hand
/// (not by the command) still counts within seconds: the relay's
/// once-a-second look at revocations forgets every token it remembered.
#[test]
fn a_revocation_written_into_the_database_by_hand_counts_within_seconds() {
    let relay = Relay::start();
    let (_, _max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    ana.sync();
    let db = rusqlite::Connection::open(relay.db()).unwrap();
    let revoked = db
        .execute(
            "UPDATE devices SET revoked_at = 1 WHERE actor = ?1",
            [ana.store.device_actor()],
        )
        .unwrap();
    assert_eq!(revoked, 1);
    eventually(10, "the relay refuses her", || {
        matches!(ana.engine.sync_now(), Err(Error::DeviceRevoked))
    });
    assert!(ana.store.was_wiped().unwrap());
}

pub trait JsonBody {
    async fn json_body<T: serde::de::DeserializeOwned>(self) -> T;
}
impl JsonBody for reqwest::Response {
    async fn json_body<T: serde::de::DeserializeOwned>(self) -> T {
        assert_eq!(
            self.headers().get("content-type").unwrap(),
            "application/json",
            "errors are JSON"
        );
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

#[test]
fn reassignment_moves_visibility_and_the_new_assignee_gets_the_whole_history() {
    let mut relay = Relay::start();
    let (team, invite) = relay.create_team("Clinic", "max");
    let max = Phone::enrolled(&relay, &invite);
    let ana = Phone::enrolled(&relay, &relay.invite(&team, "ana", "clinical_assistant"));
    let bob = Phone::enrolled(&relay, &relay.invite(&team, "bob", "clinical_assistant"));
    max.sync();
    let task = hand_over(&max, &ana, "Call", "ana");
    ana.store
        .log_call(&task, call(CallOutcome::NoAnswer))
        .unwrap();
    ana.sync();
    max.sync();
    bob.sync();
    assert!(bob.store.task_ids().unwrap().is_empty(), "not bob's yet");

    max.store.assign(&task, "bob").unwrap();
    max.sync();
    bob.sync();
    let detail = bob.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.assignee.as_deref(), Some("bob"));
    assert_eq!(detail.state.calls.len(), 1, "history came with the task");

    // Ana's phone learns the task went to Bob (the change that took it from
    // her is sent to her, also by a relay that restarted since), and it
    // leaves her queue; she receives none of the task's later news.
    max.store.comment(&task, "bob has it now").unwrap();
    max.sync();
    relay.kill();
    relay.spawn();
    ana.sync();
    let on_ana = ana.store.task_detail(&task).unwrap().state;
    assert_eq!(on_ana.assignee.as_deref(), Some("bob"));
    assert!(on_ana.comments.is_empty());
    let queue = ana.store.my_queue().unwrap();
    assert!([queue.overdue, queue.today, queue.upcoming]
        .concat()
        .iter()
        .all(|t| t.task_id != task));
    bob.sync();
    assert_converged(&[&max, &bob]);
}

/// A front-desk phone that saw a pooled task claims it offline after a
/// manager gave it to an assistant. Its claim is kept (it lost a race) and
/// the phone learns who has the task, but writing to the task gives it no
/// sight of what came after: the assistant's call notes stay with those
/// who may read them.
#[test]
fn a_lost_claim_shows_who_won_and_reveals_nothing_that_came_after() {
    let mut relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let fay = Phone::enrolled(&relay, &relay.invite(&team, "fay", "front_desk"));
    max.sync();
    let task = max
        .store
        .delegate(task_for("Schedule MRI", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    fay.sync();
    assert_eq!(fay.store.task_ids().unwrap(), vec![task.clone()]);
    max.store.assign(&task, "ana").unwrap();
    max.sync();
    ana.sync();
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.sync();
    // Offline all along, fay claims the task as her phone last saw it.
    fay.store.claim(&task).unwrap();
    fay.sync();
    for restarted in [false, true] {
        if restarted {
            relay.kill();
            relay.spawn();
            fay.sync();
        }
        let on_fay = fay.store.task_detail(&task).unwrap().state;
        assert_eq!(on_fay.assignee.as_deref(), Some("ana"), "{restarted}");
        assert!(
            on_fay.calls.is_empty(),
            "no call notes for fay ({restarted})"
        );
        let attention = fay.store.needs_attention().unwrap();
        assert_eq!(attention.len(), 1);
    }
    max.sync();
    ana.sync();
    assert_converged(&[&max, &ana]);
}

#[test]
fn a_change_the_relay_refuses_shows_in_needs_attention_and_does_not_stall_the_queue() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "manager");
    let mine = hand_over(&max, &ana, "Call", "ana");
    // The admin demotes Ana while her phone is offline; she still delegates.
    set_member(&max, "ana", Role::ClinicalAssistant, false, true);
    let refused = ana
        .store
        .delegate(task_for("Not hers to give", Some("max"), None))
        .unwrap();
    ana.store
        .log_call(&mine, call(CallOutcome::Reached))
        .unwrap();
    let report = ana.sync();
    assert_eq!(report.refused, 1);
    assert_eq!(report.pushed, 1, "the call behind it still went through");
    let attention = ana.store.needs_attention().unwrap();
    assert!(
        attention.iter().any(|a| a.code == "not_permitted"),
        "{attention:?}"
    );
    assert!(
        ana.store.outbox(10).unwrap().is_empty(),
        "not offered again"
    );
    max.sync();
    assert!(
        max.store.task_detail(&refused).is_err(),
        "never reached anyone"
    );
    assert_eq!(max.store.task_detail(&mine).unwrap().state.calls.len(), 1);
}

/// Ana, offline, logs a call on a task the manager has meanwhile moved to
/// Bob. The relay judges her call on the task as she saw it (hers), so it is
/// kept: Bob, who now holds the task, sees the call was made.
#[test]
fn a_call_logged_offline_on_a_task_moved_meanwhile_reaches_its_new_holder() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let bob = Phone::enrolled(&relay, &relay.invite(&team, "bob", "clinical_assistant"));
    max.sync();
    let task = hand_over(&max, &ana, "Call", "ana");
    max.store.assign(&task, "bob").unwrap();
    max.sync();
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    let report = ana.sync();
    assert_eq!((report.pushed, report.refused), (1, 0), "{report:?}");
    bob.sync();
    max.sync();
    let on_bob = bob.store.task_detail(&task).unwrap().state;
    assert_eq!(on_bob.assignee.as_deref(), Some("bob"));
    assert_eq!(on_bob.calls.len(), 1, "{:?}", on_bob.history);
    assert_eq!(on_bob.calls[0].by, "ana");
    assert!(ana.store.needs_attention().unwrap().is_empty());
    assert_converged(&[&max, &bob]);
}

/// Fay lost sight of a pooled task when gil claimed it; gil then logged a
/// call, which fay's pulls passed over. Max, who had not seen the call,
/// hands the task to fay. Nothing in his change names the call, so her
/// copy lacked nothing the relay could tell, and she held the task
/// without it (and would call the patient again). Her phone now repairs
/// a task it may read again, and gets the call.
#[test]
fn a_task_handed_back_to_someone_who_lost_sight_of_it_brings_the_work_done_meanwhile() {
    let relay = Relay::start();
    let (team, max, fay) = manager_and(&relay, "fay", "front_desk");
    let gil = Phone::enrolled(&relay, &relay.invite(&team, "gil", "front_desk"));
    max.sync();
    let task = max
        .store
        .delegate(task_for("Book the follow-up", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    fay.sync();
    gil.sync();
    gil.store.claim(&task).unwrap();
    gil.sync();
    fay.sync();
    max.sync();
    // max's phone goes quiet; gil works the task.
    gil.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    gil.sync();
    fay.sync();
    max.store.assign(&task, "fay").unwrap();
    max.sync();
    fay.sync();
    let detail = fay.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.assignee.as_deref(), Some("fay"));
    assert_eq!(detail.state.calls.len(), 1, "gil's call reached fay");
    gil.sync();
    max.sync();
    assert_converged(&[&max, &fay, &gil]);
}

/// max archived a task he had approved; ana's call, logged offline
/// before she heard of the approval, then reached him. The approval went
/// stale on every phone but his: his kept the task archived as completed
/// (never told, and it fetched the whole document back, patient details
/// included, and kept it for good). A task archived here comes back when
/// news of it arrives, and is archived again once finished and old.
#[test]
fn news_of_a_task_archived_on_a_phone_brings_it_back_there() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call back", "ana");
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.store.submit(&task, "done").unwrap();
    ana.sync();
    max.sync();
    // In the basement: not yet told of the approval.
    ana.store
        .log_call(&task, call(CallOutcome::Voicemail))
        .unwrap();
    max.store.approve(&task, "").unwrap();
    let mut policy = max.store.team().unwrap().policy;
    policy.archive_after_days = 0;
    max.store.set_policy(&policy).unwrap();
    max.sync();
    assert_eq!(max.store.archive_finished().unwrap(), 1);
    assert!(matches!(
        max.store.task_detail(&task),
        Err(Error::Archived(_))
    ));
    ana.sync();
    max.sync();
    let detail = max.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.status, TaskStatus::Submitted);
    assert!(detail.state.last_review.as_ref().is_some_and(|r| r.stale));
    assert_eq!(detail.state.calls.len(), 2);
    assert_converged(&[&max, &ana]);
    // Finished again and old: archived again.
    max.store.approve(&task, "").unwrap();
    max.sync();
    assert_eq!(max.store.archive_finished().unwrap(), 1);
}

/// A member deactivated (on leave) while her task was handed to a
/// colleague could not read it when it moved, and was recorded as losing
/// nothing: back at work, her phone kept the task as hers, and work she
/// did on it was refused on every other phone without her being told.
#[test]
fn a_member_away_when_her_task_moved_learns_where_it_went_when_she_is_back() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let bea = Phone::enrolled(&relay, &relay.invite(&team, "bea", "clinical_assistant"));
    let task = hand_over(&max, &ana, "Call back", "ana");
    set_member(&max, "ana", Role::ClinicalAssistant, false, false);
    max.store.assign(&task, "bea").unwrap();
    max.sync();
    set_member(&max, "ana", Role::ClinicalAssistant, false, true);
    ana.sync();
    bea.sync();
    let detail = ana.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.assignee.as_deref(), Some("bea"));
    assert!(ana.store.my_queue().unwrap().today.is_empty());
    assert_converged(&[&max, &ana, &bea]);
}

/// Deactivated, a front-desk member is sent nothing; back, she is not sent
/// what her role's pool held and lost while she was away (tasks she never
/// held, patient details and all), only what she may read now.
#[test]
fn a_member_back_from_leave_is_not_sent_the_pools_tasks_claimed_meanwhile() {
    let relay = Relay::start();
    let (team, max, fay) = manager_and(&relay, "fay", "front_desk");
    let gus = Phone::enrolled(&relay, &relay.invite(&team, "gus", "front_desk"));
    set_member(&max, "fay", Role::FrontDesk, false, false);
    let task = max
        .store
        .delegate(task_for("Recall", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    gus.sync();
    gus.store.claim(&task).unwrap();
    gus.sync();
    set_member(&max, "fay", Role::FrontDesk, false, true);
    fay.sync();
    assert!(fay.store.task_detail(&task).is_err());
    assert!(fay.store.shared_pool().unwrap().is_empty());
}

/// Fay (front desk) works as a clinical assistant for a while; meanwhile
/// Gus claims a task waiting in the front desk's pool. She could not read
/// it when it moved, so nothing told her phone; back at the front desk,
/// it showed the task waiting in her pool for good (and her claim of it
/// would be refused on every other phone). Reading the feed again when
/// her sight changes, her phone drops what the relay no longer sends her,
/// and keeps what she holds.
#[test]
fn a_phone_drops_the_tasks_its_user_may_no_longer_read_after_a_role_change() {
    let relay = Relay::start();
    let (team, max, fay) = manager_and(&relay, "fay", "front_desk");
    let gus = Phone::enrolled(&relay, &relay.invite(&team, "gus", "front_desk"));
    let waiting = max
        .store
        .delegate(task_for("Recall", None, Some(Role::FrontDesk)))
        .unwrap();
    let worked = max
        .store
        .delegate(task_for("Confirm", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    fay.sync();
    fay.store.claim(&worked).unwrap();
    fay.store
        .log_call(&worked, call(CallOutcome::NoAnswer))
        .unwrap();
    fay.sync();
    assert_eq!(fay.store.shared_pool().unwrap().len(), 1);

    set_member(&max, "fay", Role::ClinicalAssistant, false, true);
    fay.sync();
    gus.sync();
    gus.store.claim(&waiting).unwrap();
    gus.sync();
    set_member(&max, "fay", Role::FrontDesk, false, true);
    fay.sync();
    assert!(fay.store.shared_pool().unwrap().is_empty());
    assert!(matches!(
        fay.store.task_detail(&waiting),
        Err(Error::TaskNotFound(_))
    ));
    assert_eq!(fay.store.task_detail(&worked).unwrap().state.calls.len(), 1);
    assert_converged(&[&max, &fay]);
}

/// A trusted assistant completes a task and her phone archives it; the
/// manager, not yet told, had handed it to a colleague, so her completion
/// no longer stands and she may not read the task. Her pull brings the
/// change that took it from her, but her phone had no document left to
/// apply it to, and the relay refused her the repair (she cannot read the
/// task now): the task stayed completed and archived on her phone alone.
#[test]
fn a_task_archived_on_a_phone_that_then_lost_sight_of_it_shows_where_it_went() {
    let relay = Relay::start();
    let (team, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let bea = Phone::enrolled(&relay, &relay.invite(&team, "bea", "clinical_assistant"));
    set_member(&max, "ana", Role::ClinicalAssistant, true, true);
    let mut policy = max.store.team().unwrap().policy;
    policy.archive_after_days = 0;
    max.store.set_policy(&policy).unwrap();
    let task = hand_over(&max, &ana, "Call back", "ana");
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.store.complete(&task, "done").unwrap();
    // Not yet told of her completion.
    max.store.assign(&task, "bea").unwrap();
    ana.sync();
    assert_eq!(ana.store.archive_finished().unwrap(), 1);
    max.sync();
    bea.sync();
    ana.sync();
    let detail = ana.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.assignee.as_deref(), Some("bea"));
    assert_ne!(detail.state.status, TaskStatus::Completed);
    assert_converged(&[&max, &ana, &bea]);
}

/// Demoting a manager who handed out work leaves that work where it is: on
/// the relay, also after a restart, and on every phone. From then on the
/// relay judges what they push by their new role.
#[test]
fn demoting_a_delegator_leaves_the_work_they_handed_out_where_it_is() {
    let mut relay = Relay::start();
    let (team, max, lee) = manager_and(&relay, "lee", "manager");
    let ana = Phone::enrolled(&relay, &relay.invite(&team, "ana", "clinical_assistant"));
    max.sync();
    lee.sync();
    let task = hand_over(&lee, &ana, "Post-op call", "ana");
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.store.submit(&task, "reached").unwrap();
    ana.sync();
    lee.sync();
    lee.store.approve(&task, "thanks").unwrap();
    lee.sync();

    set_member(&max, "lee", Role::ClinicalAssistant, false, true);
    // Her phone has not heard yet; the relay has.
    let late = lee
        .store
        .delegate(task_for("Handed out too late", Some("ana"), None))
        .unwrap();
    lee.store
        .comment(&late, "patient prefers mornings")
        .unwrap();
    let report = lee.sync();
    assert_eq!(
        report.refused, 2,
        "the task, and her comment on it: {report:?}"
    );
    relay.kill();
    relay.spawn();
    for (who, phone) in [("max", &max), ("lee", &lee), ("ana", &ana)] {
        phone.sync();
        let s = phone.store.task_detail(&task).unwrap().state;
        assert_eq!(
            (s.status, s.assignee.as_deref(), s.calls.len()),
            (TaskStatus::Completed, Some("ana"), 1),
            "on {who}'s phone"
        );
        assert!(
            s.history.iter().all(|e| e.outcome == Outcome::Applied),
            "on {who}'s phone: {:?}",
            s.history
        );
    }
    assert!(
        ana.store.task_detail(&late).is_err(),
        "never reached anyone"
    );
    assert!(
        lee.store.task_detail(&late).is_err(),
        "set aside on her phone"
    );
    // Both shown under the title she gave the task, with no task to open:
    // it is no longer on her phone.
    let attention: Vec<_> = lee
        .store
        .needs_attention()
        .unwrap()
        .into_iter()
        .map(|a| (a.task_id, a.title, a.action, a.code))
        .collect();
    let title = Some("Handed out too late".to_owned());
    assert_eq!(
        attention,
        vec![
            (
                None,
                title.clone(),
                "created".into(),
                "not_permitted".into()
            ),
            (
                None,
                title,
                "commented".into(),
                "missing_dependencies".into()
            ),
        ]
    );
    assert_converged(&[&max, &lee, &ana]);
}

fn set_trusted(max: &Phone, user: &str, trusted: bool) {
    set_member(max, user, Role::ClinicalAssistant, trusted, true);
}

#[test]
fn work_built_on_a_refused_change_still_reaches_everyone_and_the_task_goes_on() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    set_trusted(&max, "ana", true);
    let task = hand_over(&max, &ana, "Post-op call", "ana");
    // Ana may no longer close tasks without review; her phone is offline.
    set_trusted(&max, "ana", false);
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    ana.store.complete(&task, "all good").unwrap();
    ana.store
        .comment(&task, "patient asked for a copy of the plan")
        .unwrap();
    let report = ana.sync();
    assert_eq!(report.refused, 1, "the completion");
    assert_eq!(report.pushed, 2, "the call, and the comment written again");
    // The completion is set aside on her phone, the comment written again.
    let detail = ana.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.status, TaskStatus::InProgress);
    assert_eq!(detail.state.comments.len(), 1);
    let attention = ana.store.needs_attention().unwrap();
    assert_eq!(attention.len(), 1, "{attention:?}");
    assert_eq!(
        (attention[0].action.as_str(), attention[0].code.as_str()),
        ("completed", "not_permitted")
    );
    ana.sync();
    max.sync();
    assert_converged(&[&max, &ana]);
    assert_eq!(
        max.store.task_detail(&task).unwrap().state.comments.len(),
        1
    );
    assert!(
        ana.store.needs_attention().unwrap().len() == 1,
        "only the completion"
    );
    // Nothing lost, nothing stalled: she submits, the manager approves.
    ana.store.submit(&task, "reached, plan sent").unwrap();
    ana.sync();
    max.sync();
    max.store.approve(&task, "thanks").unwrap();
    max.sync();
    ana.sync();
    assert_converged(&[&max, &ana]);
    let done = max.store.task_detail(&task).unwrap().state;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!((done.calls.len(), done.comments.len()), (1, 1));
    assert!(ana.store.outbox(10).unwrap().is_empty());
}

#[test]
fn a_change_written_by_another_device_is_refused() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    let anas = ana.store.outbox(10).unwrap();
    let verdicts = RawPush::to(&relay).verdicts(
        &max.settings().token,
        vec![doc_change(&task, anas[0].bytes.clone())],
    );
    assert!(matches!(
        verdicts[0],
        Verdict::Refused {
            code: RefusalCode::ActorMismatch,
            ..
        }
    ));
    max.sync();
    assert!(max.store.task_detail(&task).unwrap().state.calls.is_empty());
}

/// A stolen phone's long-poll may be waiting when the admin revokes it:
/// the news that wakes it is not sent; the poll answers 401 with the code.
/// (Also when a poll of that device was woken and answered just before:
/// what the relay read of revocations then is not reused.)
#[test]
fn a_long_poll_waiting_when_its_device_is_revoked_gets_401_not_the_news() {
    a_long_poll_waiting_through_a_revocation_gets_401(true, |relay, ana| {
        relay.admin(&["revoke", "--device", &ana.store.device_actor()]);
    });
}

/// The same, with the revocation written into the database by hand: the
/// relay finds it within a second and writes it into the team document,
/// news that wakes the poll, which is refused.
#[test]
fn a_long_poll_waiting_when_its_device_is_revoked_by_hand_gets_401_not_the_news() {
    a_long_poll_waiting_through_a_revocation_gets_401(false, |relay, ana| {
        let db = rusqlite::Connection::open(relay.db()).unwrap();
        db.execute(
            "UPDATE devices SET revoked_at = 1 WHERE actor = ?1",
            [ana.store.device_actor()],
        )
        .unwrap();
    });
}

/// `news`: max writes to the task after the revocation.
fn a_long_poll_waiting_through_a_revocation_gets_401(news: bool, revoke: impl Fn(&Relay, &Phone)) {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    let token = ana.settings().token;
    // A long-poll in the background, once the relay counts it as waiting.
    let wait_from = |cursor: u64| {
        let (url, token) = (relay.url.clone(), token.clone());
        let waiting = std::thread::spawn(move || {
            let (rt, client) = http();
            rt.block_on(async {
                let r = client
                    .get(format!("{url}/v1/pull?cursor={cursor}&wait=60"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
            })
        });
        relay.wait_for_long_polls(1);
        waiting
    };
    let waiting = wait_from(ana.store.relay_cursor().unwrap().seq);
    max.store.comment(&task, "first news").unwrap();
    max.sync();
    let (status, body) = waiting.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: wire::PullReply = wire::decode(&body).unwrap();
    assert_eq!(reply.changes.len(), 1);

    let waiting = wait_from(reply.cursor);
    revoke(&relay, &ana);
    if news {
        max.store
            .comment(&task, "patient prefers mornings")
            .unwrap();
        max.sync();
    }
    let (status, body) = waiting.join().unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let body: wire::ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(body.code, "device_revoked");
}

/// Exits are kept as they were made: a front-desk member who joined after
/// a pooled task was claimed is not sent it, also by a relay that restarted
/// since (and so rebuilt who lost sight of what).
#[test]
fn a_member_who_joins_later_is_not_sent_tasks_that_left_the_pool_before() {
    let mut relay = Relay::start();
    let (team, max, fay) = manager_and(&relay, "fay", "front_desk");
    let task = max
        .store
        .delegate(task_for("Schedule MRI", None, Some(Role::FrontDesk)))
        .unwrap();
    max.sync();
    fay.sync();
    fay.store.claim(&task).unwrap();
    fay.sync();
    let gus = Phone::enrolled(&relay, &relay.invite(&team, "gus", "front_desk"));
    for restarted in [false, true] {
        if restarted {
            relay.kill();
            relay.spawn();
        }
        gus.sync();
        assert!(gus.store.task_ids().unwrap().is_empty(), "{restarted}");
    }
}

/// A member the manager deactivates (they left the clinic; the device was
/// not revoked) reads and writes nothing more: every request gets 403
/// `not_a_member`, and live sync on the phone stops.
/// A new phone for someone already in the team: the invite's role does not
/// override the one the team gives them (the reply and `devices` say
/// theirs, where they said the invite's while the team kept the other).
/// Someone deactivated gets no device, and the invite stays good for when
/// they are active again.
#[test]
fn an_invite_for_a_member_keeps_the_teams_role_and_a_deactivated_one_gets_no_device() {
    let relay = Relay::start();
    let (team, max, _ana) = manager_and(&relay, "ana", "clinical_assistant");
    let second = Phone::new();
    let invite = relay.invite(&team, "ana", "front_desk");
    let reply = second.engine.enrol(&relay.url, &invite).unwrap();
    assert_eq!(reply.role, Role::ClinicalAssistant);
    let devices = relay.admin(&["devices", "--team", &team]);
    assert_eq!(
        devices.matches("\tana\tclinical_assistant\t").count(),
        2,
        "{devices}"
    );

    set_member(&max, "ana", Role::ClinicalAssistant, false, false);
    let third = Phone::new();
    let invite = relay.invite(&team, "ana", "clinical_assistant");
    match third.engine.enrol(&relay.url, &invite) {
        Err(Error::Relay { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, "not_a_member"))
        }
        other => panic!("{other:?}"),
    }
    assert!(third.store.relay_settings().unwrap().is_none());
    set_member(&max, "ana", Role::ClinicalAssistant, false, true);
    third.engine.enrol(&relay.url, &invite).unwrap();
}

#[test]
fn a_deactivated_member_reads_nothing_more() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    set_member(&max, "ana", Role::ClinicalAssistant, false, false);
    match ana.engine.sync_now() {
        Err(Error::Relay { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, wire::codes::NOT_A_MEMBER));
        }
        other => panic!("{other:?}"),
    }
    let (rt, client) = http();
    for (what, status) in rt.block_on(async {
        let token = ana.settings().token;
        let pull = client
            .get(format!("{}/v1/pull?cursor=0", relay.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        let repair = client
            .post(format!("{}/v1/repair", relay.url))
            .bearer_auth(&token)
            .body(wire::encode(&wire::RepairRequest {
                doc: "team".into(),
                have: vec![],
            }))
            .send()
            .await
            .unwrap()
            .status();
        [("pull", pull), ("repair", repair)]
    }) {
        assert_eq!(status, 403, "{what}");
    }
    // A call she logs offline afterwards is refused whole, and stored
    // nowhere: the manager's phone never hears of it.
    ana.store
        .log_call(&task, call(CallOutcome::Reached))
        .unwrap();
    let unsent: Vec<_> = ana
        .store
        .outbox(100)
        .unwrap()
        .into_iter()
        .map(|c| doc_change(&c.doc_id, c.bytes))
        .collect();
    assert!(!unsent.is_empty());
    let (status, body) = RawPush::to(&relay).send(&ana.settings().token, unsent);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(wire::codes::NOT_A_MEMBER));
    max.sync();
    assert!(max.store.task_detail(&task).unwrap().state.calls.is_empty());
    // Her phone keeps what it had (revoking the device would wipe it).
    assert_eq!(ana.store.task_ids().unwrap(), vec![task]);
}

/// A change may carry several events (a phone migrating to a redacted
/// task carries its own unsent ones over in one). Each is judged on the
/// task as its author saw it, the change's earlier events included: a
/// hand-made first change in which an assistant creates a task for herself
/// and completes it without review is refused; the same with only a start
/// is not.
#[test]
fn each_event_of_a_change_passes_the_door_on_its_own() {
    let relay = Relay::start();
    let (_, _max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let actor = ana.store.device_actor();
    let token = ana.settings().token;
    // `lt_step`: how far each later event's Lamport time is above the one
    // before (phones: 1).
    let first_change = |task: &str, then: &[Action], lt_step: u64| {
        let (mut doc, created) = created_by_ana(&actor, task, 0);
        let mut events = vec![created];
        for (k, action) in then.iter().enumerate() {
            let mut next = Event::next(
                &events,
                &actor,
                "ana",
                1_800_000_000_001 + k as i64,
                action.clone(),
            );
            next.lt = events[k].lt + lt_step;
            task_doc::append(&mut doc, &next).unwrap();
            events.push(next);
        }
        doc_change(
            task,
            doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
    };
    let push = RawPush::to(&relay);
    // One hand-made first change of `task`, and the relay's verdicts.
    let judged = |task: &str, then: &[Action], lt_step: u64| {
        push.verdicts(&token, vec![first_change(task, then, lt_step)])
    };
    let verdicts = judged(
        "0123456789abcdef0123456789abcdef",
        &[Action::Completed { note: "".into() }],
        1,
    );
    assert!(
        matches!(
            &verdicts[..],
            [Verdict::Refused {
                code: RefusalCode::NotPermitted,
                ..
            }]
        ),
        "{verdicts:?}"
    );
    let verdicts = judged("fedcba9876543210fedcba9876543210", &[Action::Started], 1);
    assert!(matches!(&verdicts[..], [Verdict::Stored]), "{verdicts:?}");
    // An event folded before what it builds on (a Lamport time not above
    // theirs) would be judged on events the fold puts after it.
    let verdicts = judged("ffeeddccbbaa99887766554433221100", &[Action::Started], 0);
    refused_as_invalid(&verdicts);
    // Nor may an event run far ahead of the task: one at the Lamport
    // ceiling would leave no room after it, and every later write to the
    // task would be refused as not coming after it. A step of two (a phone
    // whose event in between was refused) is a phone's.
    let verdicts = judged(
        "aabbccddeeff00112233445566778899",
        &[Action::Started],
        event::MAX_LT_STEP + 1,
    );
    refused_as_invalid(&verdicts);
    let verdicts = judged("aabbccddeeff00112233445566778899", &[Action::Started], 2);
    assert!(matches!(&verdicts[..], [Verdict::Stored]), "{verdicts:?}");
    // At most 16 new events in one change: each costs the relay a derivation.
    let comment = Action::Commented {
        text: "called".into(),
    };
    let verdicts = judged("00112233445566778899aabbccddeeff", &vec![comment; 16], 1);
    refused_as_invalid(&verdicts);
}

/// A task is created once, by the first change of its document: a member
/// who may read a task cannot slip a second `created` event into it (one
/// that builds on nothing, folded before the real one) and so become its
/// creator, with its handoff rewritten and sight of it for good.
#[test]
fn a_second_creation_of_a_task_is_refused() {
    let relay = Relay::start();
    let (_, max, fay) = manager_and(&relay, "fay", "front_desk");
    let task = hand_over(&max, &fay, "Call", "fay");
    let token = fay.settings().token;
    let actor = fay.store.device_actor();
    let mut doc = task_doc_as(&relay, &[&fay], &task, &fay);
    let (mut events, _) = task_doc::events(&doc);
    assert_eq!(events.len(), 1, "the task as fay has it");
    // Built on nothing, and earlier than max's: folded first.
    let again = handoff("Nothing to see");
    let created = Event::next(
        &[],
        &actor,
        "fay",
        events[0].at - 1,
        Action::Created {
            handoff: again,
            checklist: Vec::new(),
            questions: Vec::new(),
            pool: None,
            assignee: Some("fay".into()),
        },
    );
    events.push(created.clone());
    // Built on the task as she read it: her write access is judged so.
    let comment = Event::next(
        &events,
        &actor,
        "fay",
        events[0].at + 1,
        Action::Commented { text: "ok".into() },
    );
    task_doc::append(&mut doc, &created).unwrap();
    task_doc::append(&mut doc, &comment).unwrap();
    let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let verdicts = RawPush::to(&relay).verdicts(&token, vec![doc_change(&task, bytes)]);
    refused_as_invalid(&verdicts);
    max.sync();
    let state = max.store.task_detail(&task).unwrap().state;
    assert_eq!(state.created_by, "max");
    assert_eq!(state.handoff.title, "Call");
    assert!(state.comments.is_empty());
}

/// An event's id names it for good: a change whose event takes an id the
/// task already holds (with other content, placed so that the fold keeps
/// it, or so that what names that id points at it) is refused. Without
/// this, ana could re-use her submission's id for a call logged after the
/// approval, and the approval would count as covering it.
#[test]
fn an_event_that_takes_an_id_the_task_already_holds_is_refused() {
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    ana.store.comment(&task, "on it").unwrap();
    ana.sync();
    let token = ana.settings().token;
    let actor = ana.store.device_actor();
    let mut doc = task_doc_as(&relay, &[&max, &ana], &task, &ana);
    let (events, _) = task_doc::events(&doc);
    let comment = events.iter().find(|e| e.id.actor == actor).unwrap().clone();
    // A call under the comment's id, after everything.
    let mut again = Event::next(
        &events,
        &actor,
        "ana",
        comment.at + 1,
        Action::CallLogged {
            attempt: call(CallOutcome::Reached),
        },
    );
    again.id = comment.id.clone();
    task_doc::append(&mut doc, &again).unwrap();
    let bytes = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let verdicts = RawPush::to(&relay).verdicts(&token, vec![doc_change(&task, bytes)]);
    refused_as_invalid(&verdicts);
    max.sync();
    assert!(max.store.task_detail(&task).unwrap().state.calls.is_empty());
    // Her phone's own next write still goes.
    ana.store.comment(&task, "called").unwrap();
    assert_eq!(ana.sync().pushed, 1);
}

/// A task holds at most `MAX_TASK_EVENTS` events (each device keeps its
/// fold in memory, growing with the square of the count): hand-made
/// changes past that are refused.
#[test]
fn a_task_takes_no_more_events_than_a_task_may_hold() {
    use handoff_core::event::MAX_TASK_EVENTS;
    let relay = Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let task = hand_over(&max, &ana, "Call", "ana");
    let token = ana.settings().token;
    let actor = ana.store.device_actor();
    let mut doc = task_doc_as(&relay, &[&ana], &task, &ana);
    let (mut events, _) = task_doc::events(&doc);
    let mut comments = |n: usize| {
        for _ in 0..n {
            let e = Event::next(
                &events,
                &actor,
                "ana",
                events[events.len() - 1].at + 1,
                Action::Commented { text: "x".into() },
            );
            task_doc::append(&mut doc, &e).unwrap();
            events.push(e);
        }
        doc_change(
            &task,
            doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
    };
    let push = RawPush::to(&relay);
    let mut room = MAX_TASK_EVENTS - 1;
    while room > 0 {
        let batch: Vec<_> = (0..50)
            .map_while(|_| {
                let n = room.min(16);
                room -= n;
                (n > 0).then(|| comments(n))
            })
            .collect();
        let verdicts = push.verdicts(&token, batch);
        assert!(
            verdicts.iter().all(|v| matches!(v, Verdict::Stored)),
            "{verdicts:?}"
        );
    }
    refused_as_invalid(&push.verdicts(&token, vec![comments(1)]));
    max.sync();
    let detail = max.store.task_detail(&task).unwrap();
    assert_eq!(detail.state.comments.len(), MAX_TASK_EVENTS - 1);
    // The phones hold to the same limit, with a clear error.
    assert!(matches!(
        max.store.comment(&task, "one more"),
        Err(Error::InvalidInput(_))
    ));
}

/// A task document's id names its generation, and the relay looks at
/// every generation below it for copies of events: an id far past the
/// task's newest (`<task>.4294967295` once took it minutes per event,
/// holding the team's state) is refused; a few past it is a phone that
/// redacted the task before it synced.
#[test]
fn a_generation_far_ahead_is_refused() {
    let relay = Relay::start();
    let (_, _max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    let actor = ana.store.device_actor();
    let token = ana.settings().token;
    let laid_out = |task: &str, generation: i64| {
        let (mut doc, _) = created_by_ana(&actor, task, generation);
        doc_change(
            &task_doc::doc_id_of(task, generation),
            doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
    };
    let push = RawPush::to(&relay);
    let verdicts = push.verdicts(
        &token,
        vec![laid_out("0123456789abcdef0123456789abcdef", 4_294_967_295)],
    );
    refused_as_invalid(&verdicts);
    let verdicts = push.verdicts(
        &token,
        vec![laid_out(
            "fedcba9876543210fedcba9876543210",
            task_doc::MAX_GENERATION_STEP,
        )],
    );
    assert!(matches!(&verdicts[..], [Verdict::Stored]), "{verdicts:?}");
}

/// A task document as ana's phone (device `actor`) lays it out, with her
/// `created` event for a task of her own: the document, and the event.
fn created_by_ana(actor: &str, task: &str, generation: i64) -> (automerge::AutoCommit, Event) {
    let mut doc = task_doc::new_doc(
        task,
        generation,
        &automerge::ActorId::from(hex::decode(actor).unwrap()),
    )
    .unwrap();
    let created = Event::next(
        &[],
        actor,
        "ana",
        1_800_000_000_000,
        Action::Created {
            handoff: handoff("Call"),
            checklist: Vec::new(),
            questions: Vec::new(),
            pool: None,
            assignee: Some("ana".into()),
        },
    );
    task_doc::append(&mut doc, &created).unwrap();
    (doc, created)
}

/// One change, refused as `invalid_change`.
fn refused_as_invalid(verdicts: &[Verdict]) {
    assert!(
        matches!(
            verdicts,
            [Verdict::Refused {
                code: RefusalCode::InvalidChange,
                ..
            }]
        ),
        "{verdicts:?}"
    );
}
