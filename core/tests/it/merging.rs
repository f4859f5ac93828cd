//! Applying changes from other devices: any order, duplicates, garbage.

use handoff_core::*;

use crate::clinic::*;

#[test]
fn changes_delivered_backwards_and_twice_give_the_same_task() {
    let c = Clinic::with(&["max", "ana", "lee"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    c.send("max", "ana");
    c.at("ana").start(&t).unwrap();
    c.at("ana")
        .log_call(&t, call(CallOutcome::NoAnswer))
        .unwrap();
    c.at("ana")
        .log_call(&t, call(CallOutcome::Reached))
        .unwrap();
    c.at("ana").submit(&t, "").unwrap();
    let mut all = outbox(c.at("max"));
    all.extend(outbox(c.at("ana")));
    all.reverse();
    let doubled: Vec<_> = all.iter().chain(all.iter()).cloned().collect();
    // One change at a time, newest first: each waits for what it depends on.
    for change in &doubled {
        c.at("lee")
            .apply_remote(std::slice::from_ref(change))
            .unwrap();
    }
    let on_lee = c.at("lee").task_detail(&t).unwrap().state;
    assert_eq!(on_lee, c.at("ana").task_detail(&t).unwrap().state);
    assert_eq!(on_lee.status, TaskStatus::Submitted);
    let report = c.at("lee").apply_remote(&doubled).unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.duplicates, doubled.len());
}

#[test]
fn garbage_changes_are_counted_and_nothing_of_them_is_kept() {
    let c = Clinic::with(&["max", "ana"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let mut batch = outbox(c.at("max"));
    batch.push((t.clone(), vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]));
    batch.push(("bad id with spaces".into(), batch[0].1.clone()));
    batch.push((t.clone(), Vec::new()));
    let report = c.at("ana").apply_remote(&batch).unwrap();
    assert_eq!(report.invalid, 3);
    assert_eq!(c.at("ana").task_ids().unwrap(), vec![t.clone()]);
    assert_eq!(
        c.at("ana").task_detail(&t).unwrap().state,
        c.at("max").task_detail(&t).unwrap().state
    );
}

/// Changes that would take events or the whole task from every phone (the
/// relay refuses them) are refused by phones too, whoever delivers them.
#[test]
fn changes_that_remove_events_or_relayout_a_task_are_refused() {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ReadDoc, ROOT};
    let c = Clinic::with(&["max", "ana"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    c.at("max").comment(&t, "call after lunch").unwrap();
    let mut doc = automerge::AutoCommit::new();
    for (d, bytes) in outbox(c.at("max")) {
        if d == t {
            doc.load_incremental(&bytes).unwrap();
        }
    }
    let list = match doc.get(ROOT, "events") {
        Ok(Some((_, id))) => id,
        _ => panic!("no events list"),
    };
    let mut hostile = |edit: &dyn Fn(&mut automerge::AutoCommit)| {
        let mut d = doc.fork().with_actor(automerge::ActorId::random());
        edit(&mut d);
        d.commit();
        d.get_last_local_change().unwrap().raw_bytes().to_vec()
    };
    let batch = vec![
        (t.clone(), hostile(&|d| d.delete(&list, 1).unwrap())),
        (
            t.clone(),
            hostile(&|d| {
                d.put_object(ROOT, "events", ObjType::List).unwrap();
            }),
        ),
        (
            t.clone(),
            hostile(&|d| d.put(ROOT, "task_id", "another").unwrap()),
        ),
        (
            t.clone(),
            hostile(&|d| d.put(&list, 0, "not the created event").unwrap()),
        ),
    ];
    let mut all = outbox(c.at("max"));
    all.extend(batch);
    let report = c.at("ana").apply_remote(&all).unwrap();
    assert_eq!(report.invalid, 4, "{report:?}");
    assert_eq!(
        c.at("ana").task_detail(&t).unwrap().state,
        c.at("max").task_detail(&t).unwrap().state
    );
    assert_eq!(c.at("ana").task_detail(&t).unwrap().state.comments.len(), 1);
}

#[test]
fn a_task_arriving_before_the_team_knows_its_author_is_fixed_when_the_team_catches_up() {
    let c = Clinic::with(&["max", "ana", "fay"]);
    // A new front-desk member enrolled on max's device; fay does not know yet.
    let dir = tempfile::tempdir().unwrap();
    let fred = Store::open(dir.path().join("fred.db"), &KEY, options(&c.clock)).unwrap();
    c.at("max")
        .register_device(&fred.device_actor(), "fred")
        .unwrap();
    fred.set_enrolled_user("fred").unwrap();
    fred.apply_remote(&outbox(c.at("max"))).unwrap();
    let t = c.at("max").delegate(pooled(Role::FrontDesk)).unwrap();
    fred.apply_remote(&outbox(c.at("max"))).unwrap();
    fred.claim(&t).unwrap();
    // fay hears from fred and max's task, but not yet about fred's device.
    let task_changes: Vec<_> = outbox(c.at("max"))
        .into_iter()
        .filter(|(d, _)| d == &t)
        .collect();
    c.at("fay").apply_remote(&task_changes).unwrap();
    c.at("fay").apply_remote(&outbox(&fred)).unwrap();
    let s = c.at("fay").task_detail(&t).unwrap().state;
    assert_eq!(
        s.assignee, None,
        "a claim from an unknown device does not count yet"
    );
    c.at("fay").apply_remote(&outbox(c.at("max"))).unwrap();
    let s = c.at("fay").task_detail(&t).unwrap().state;
    assert_eq!(s.assignee.as_deref(), Some("fred"));
    // The views read the index, which moved with the team too.
    assert!(c.at("fay").pool_of(Role::FrontDesk).unwrap().is_empty());
    let queue = c.at("fay").queue_of("fred").unwrap();
    assert_eq!(
        [queue.overdue, queue.today, queue.upcoming].concat()[0].task_id,
        t
    );
}

#[test]
fn a_task_made_on_a_phone_the_team_has_not_heard_of_appears_when_the_team_catches_up() {
    let c = Clinic::with(&["max", "ana", "fay"]);
    // Dr. Lee's new phone, enrolled on max's device; ana does not know it yet.
    let dir = tempfile::tempdir().unwrap();
    let lee = Store::open(dir.path().join("lee.db"), &KEY, options(&c.clock)).unwrap();
    c.at("max")
        .register_device(&lee.device_actor(), "lee")
        .unwrap();
    lee.set_enrolled_user("lee").unwrap();
    lee.apply_remote(&outbox(c.at("max"))).unwrap();
    let t = lee
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    c.at("ana").apply_remote(&outbox(&lee)).unwrap();
    assert!(
        !c.at("ana").task_ids().unwrap().contains(&t),
        "a task from a device the team has not enrolled does not count yet"
    );
    let report = c.at("ana").apply_remote(&outbox(c.at("max"))).unwrap();
    assert!(report.team_changed);
    assert_eq!(
        report.tasks_updated, 1,
        "the waiting task, and nothing else"
    );
    assert_eq!(
        c.at("ana").task_detail(&t).unwrap().state,
        lee.task_detail(&t).unwrap().state
    );
    let queue = c.at("ana").queue_of("ana").unwrap();
    assert_eq!(
        [queue.overdue, queue.today, queue.upcoming].concat().len(),
        1
    );
}

/// A team's change is derived into the tasks it can alter, not into every
/// task: on a phone holding a year of a clinic's work, deriving them all
/// took seconds while every write waited.
#[test]
fn a_change_of_the_team_derives_again_only_the_tasks_it_can_alter() {
    let c = Clinic::with(&["max", "ana"]);
    for _ in 0..3 {
        c.handed_to("ana");
    }
    // nia does not exist yet on ana's phone when max hands her a task.
    c.at("max")
        .put_member(&nia(Role::ClinicalAssistant))
        .unwrap();
    let for_nia = c
        .at("max")
        .delegate(task_for("nia", DelegationLevel::Delegable))
        .unwrap();
    let changes = outbox(c.at("max"));
    let (team, tasks): (Vec<_>, Vec<_>) = changes
        .into_iter()
        .partition(|(doc, _)| !c.at("max").task_ids().unwrap().contains(doc));
    c.at("ana").apply_remote(&tasks).unwrap();
    assert!(!c.at("ana").task_ids().unwrap().contains(&for_nia));

    let report = c.at("ana").apply_remote(&team).unwrap();
    assert!(report.team_changed);
    assert_eq!(report.tasks_updated, 1, "only nia's task waited for her");
    assert_eq!(
        c.at("ana").task_detail(&for_nia).unwrap().state,
        c.at("max").task_detail(&for_nia).unwrap().state
    );
    assert_eq!(
        c.at("ana").queue_of("nia").unwrap(),
        c.at("max").queue_of("nia").unwrap()
    );

    // A new policy and a role changed: no task derives differently.
    c.at("max")
        .set_policy(&Policy {
            max_call_attempts: 5,
            ..Policy::default()
        })
        .unwrap();
    c.at("max").put_member(&nia(Role::FrontDesk)).unwrap();
    let report = c.at("ana").apply_remote(&outbox(c.at("max"))).unwrap();
    assert!(
        report.team_changed,
        "the views read the team: worth re-reading"
    );
    assert_eq!(report.tasks_updated, 0);
    assert_eq!(c.at("ana").team(), c.at("max").team());
}

/// The relay takes a task document's changes only in two shapes (a first
/// change that lays it out, then events appended to its list): everything
/// the app itself writes has one of them, redaction included.
#[test]
fn every_change_the_app_writes_to_a_task_has_a_shape_the_relay_takes() {
    use handoff_core::task_doc::{read_change, Shape};
    let c = Clinic::with(&["max", "ana"]);
    // Every change either phone wrote, in order, taken before each exchange.
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    let mut take = |c: &Clinic| {
        for user in ["max", "ana"] {
            for change in outbox(c.at(user)) {
                if !written.contains(&change) {
                    written.push(change);
                }
            }
        }
    };
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    take(&c);
    c.sync();
    c.at("ana").start(&t).unwrap();
    c.at("ana").log_call(&t, call(CallOutcome::Busy)).unwrap();
    c.at("ana").comment(&t, "left a message").unwrap();
    c.at("ana").submit(&t, "done").unwrap();
    take(&c);
    c.sync();
    c.at("max").redact_patient(&t).unwrap();
    c.at("max").approve(&t, "thanks").unwrap();
    take(&c);
    let mut lists: std::collections::HashMap<String, String> = Default::default();
    let mut layouts = 0;
    for (doc, bytes) in written {
        if doc == store::TEAM_DOC {
            continue;
        }
        let change = automerge::Change::from_bytes(bytes).unwrap();
        match read_change(&change).shape {
            Shape::Layout { events_list } => {
                layouts += 1;
                lists.insert(doc.clone(), events_list);
            }
            Shape::Appends { list } => {
                assert_eq!(list.as_ref(), lists.get(&doc), "{doc}: appends to its list");
            }
            Shape::Malformed(why) => panic!("{doc}: {why}"),
        }
    }
    // The task's layout, and its redacted generation's.
    assert_eq!(layouts, 2);
}

/// Two different changes with one device's sequence number cannot both be
/// in a document: automerge refuses the second. It is counted invalid and
/// left out, and the rest of the batch, and every later sync, goes on.
#[test]
fn a_change_automerge_refuses_is_left_out_and_sync_goes_on() {
    let (c, t, doc) = delegated_with_its_document();
    let actor = automerge::ActorId::from(vec![0x5a; 16]);
    let twin = |text: &str| append_string(&mut doc.clone().with_actor(actor.clone()), text);
    let (first, second) = (twin("one"), twin("two"));
    c.at("max").comment(&t, "after the twins").unwrap();
    let mut batch = vec![(t.clone(), first), (t.clone(), second)];
    batch.extend(outbox(c.at("max")));
    let report = c.at("ana").apply_remote(&batch).unwrap();
    assert_eq!(report.invalid, 1, "{report:?}");
    assert_eq!(
        c.at("ana").task_detail(&t).unwrap().state,
        c.at("max").task_detail(&t).unwrap().state
    );
    // The twin that was kept is not an event: the detail counts it, the
    // same when the events come from the cache, before and after a write.
    assert_eq!(c.at("ana").task_detail(&t).unwrap().unreadable_events, 1);
    assert_eq!(c.at("ana").task_detail(&t).unwrap().unreadable_events, 1);
    c.at("ana").comment(&t, "seen").unwrap();
    assert_eq!(c.at("ana").task_detail(&t).unwrap().unreadable_events, 1);
    // The refused one is not kept: the store reopens and syncs on.
    c.at("max").comment(&t, "later").unwrap();
    c.send("max", "ana");
    assert_eq!(c.at("ana").task_detail(&t).unwrap().state.comments.len(), 3);
}

/// A phone that gets a task's later changes without its history (the task
/// was reassigned to it) hears that the task needs repair every time those
/// changes arrive, not only the first time: if the repair failed (no signal,
/// the app killed), the same page pulled again asks again, and the task
/// does not stay hidden for good.
#[test]
fn a_task_missing_its_history_asks_for_repair_each_time_its_changes_arrive() {
    let c = Clinic::with(&["max", "ana", "lee"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let history = outbox(c.at("max"));
    c.send("max", "ana");
    c.at("ana").comment(&t, "call after lunch").unwrap();
    let later: Vec<_> = outbox(c.at("ana"))
        .into_iter()
        .filter(|(d, _)| *d == t)
        .collect();
    assert!(!later.is_empty());
    for _ in 0..2 {
        let report = c.at("lee").apply_remote(&later).unwrap();
        assert_eq!(report.incomplete, vec![t.clone()]);
    }
    assert!(!c.at("lee").task_ids().unwrap().contains(&t));
    let repaired = c.at("lee").apply_remote(&history).unwrap();
    assert!(repaired.incomplete.is_empty());
    assert_eq!(
        c.at("lee").task_detail(&t).unwrap().state,
        c.at("ana").task_detail(&t).unwrap().state
    );
    assert!(c
        .at("lee")
        .apply_remote(&later)
        .unwrap()
        .incomplete
        .is_empty());
}

/// Changes framed in ways automerge asserts on instead of refusing: an
/// author in an actor's second change, another actor the document never
/// had. automerge's apply panics on them. The relay refuses them; should
/// one reach a phone anyway, it is counted invalid and left out, and the
/// rest of the batch, and every later sync, goes on.
#[test]
fn a_change_automerge_would_panic_on_is_left_out_and_sync_goes_on() {
    use crate::crafting::{add_author, name_another_actor, reframed};
    let (c, t, doc) = delegated_with_its_document();
    let mut d = doc.with_actor(automerge::ActorId::from(vec![0x5a; 16]));
    let (first, second) = (append_string(&mut d, "one"), append_string(&mut d, "two"));
    let authored = reframed(&second, |b| add_author(b, b"x"));
    let stranger = reframed(&second, |b| name_another_actor(b, &[0xab; 16]));
    c.at("max").comment(&t, "after them").unwrap();
    let mut batch = vec![
        (t.clone(), first),
        (t.clone(), authored),
        (t.clone(), stranger),
    ];
    batch.extend(outbox(c.at("max")));
    let report = c.at("ana").apply_remote(&batch).unwrap();
    assert_eq!(report.invalid, 2, "{report:?}");
    assert_eq!(
        c.at("ana").task_detail(&t).unwrap().state,
        c.at("max").task_detail(&t).unwrap().state
    );
    // The same change framed as automerge frames it is taken, and the
    // phone syncs on.
    let report = c.at("ana").apply_remote(&[(t.clone(), second)]).unwrap();
    assert_eq!(report.invalid, 0, "{report:?}");
    c.at("max").comment(&t, "later").unwrap();
    c.send("max", "ana");
    assert_eq!(c.at("ana").task_detail(&t).unwrap().state.comments.len(), 2);
}

/// A change whose operations name actors its list does not hold (a
/// faulty or hostile relay's): counted invalid, and the rest goes on.
#[test]
fn a_change_naming_actors_it_does_not_list_is_left_out_and_sync_goes_on() {
    use crate::crafting::{forget_other_actors, reframed};
    let (c, t, doc) = delegated_with_its_document();
    let mut d = doc.with_actor(automerge::ActorId::from(vec![0x5a; 16]));
    let appended = append_string(&mut d, "one");
    let unlisted = reframed(&appended, forget_other_actors);
    c.at("max").comment(&t, "after it").unwrap();
    let mut batch = vec![(t.clone(), unlisted)];
    batch.extend(outbox(c.at("max")));
    let report = c.at("ana").apply_remote(&batch).unwrap();
    assert_eq!(report.invalid, 1, "{report:?}");
    assert_eq!(
        c.at("ana").task_detail(&t).unwrap().state,
        c.at("max").task_detail(&t).unwrap().state
    );
    c.at("max").comment(&t, "later").unwrap();
    c.send("max", "ana");
    assert_eq!(c.at("ana").task_detail(&t).unwrap().state.comments.len(), 2);
}

/// max delegates a task to ana and every device hears of it: the task, and
/// its document as max wrote it.
fn delegated_with_its_document() -> (Clinic, TaskId, automerge::AutoCommit) {
    let c = Clinic::with(&["max", "ana"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let mut doc = automerge::AutoCommit::new();
    for (d, bytes) in outbox(c.at("max")) {
        if d == t {
            doc.load_incremental(&bytes).unwrap();
        }
    }
    c.sync();
    (c, t, doc)
}

/// Append a string (not an event) to a task document's events list: the
/// change's bytes.
fn append_string(doc: &mut automerge::AutoCommit, text: &str) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let list = match automerge::ReadDoc::get(doc, automerge::ROOT, "events") {
        Ok(Some((_, id))) => id,
        _ => panic!("no events list"),
    };
    let n = automerge::ReadDoc::length(doc, &list);
    doc.insert(&list, n, text).unwrap();
    doc.commit();
    doc.get_last_local_change().unwrap().raw_bytes().to_vec()
}

/// A phone enrolled a moment ago, its user's role still being set: the
/// relay judged the pages it sent before by the role as it was then.
fn new_phone(c: &Clinic, user: &str, role: Role) -> Store {
    let phone = Store::open(
        c.dir.path().join(format!("new-{user}.db")),
        &KEY,
        options(&c.clock),
    )
    .unwrap();
    let max = c.at("max");
    max.put_member(&member(user, role)).unwrap();
    max.register_device(&phone.device_actor(), user).unwrap();
    phone.set_enrolled_user(user).unwrap();
    phone
}

fn member(user: &str, role: Role) -> Member {
    Member {
        user_id: user.into(),
        name: format!("{user} (new)"),
        role,
        trusted: false,
        active: true,
    }
}

/// The admin corrects a new phone's role while it catches up, and both
/// changes reach it in one page: the pages before were judged by the first
/// role, so it reads the feed again. It used to miss the tasks the new
/// role shows (its team learnt of its user only in that same page).
#[test]
fn a_role_changed_while_a_new_phone_catches_up_has_it_read_the_feed_again() {
    let c = Clinic::with(&["max", "ana"]);
    c.handed_to("ana");
    let zoe = new_phone(&c, "zoe", Role::FrontDesk);
    c.at("max")
        .put_member(&member("zoe", Role::Manager))
        .unwrap();
    // Where its pages had brought it.
    let start = FeedCursor::default();
    let paged = FeedCursor { seq: 40, tag: 7 };
    assert!(zoe.move_relay_cursor(start, paged).unwrap());
    let report = zoe.apply_remote(&outbox(c.at("max"))).unwrap();
    assert!(report.read_again, "{report:?}");
    assert_eq!(zoe.relay_cursor().unwrap(), start);
}

/// A second phone for someone whose role changed long before it enrolled:
/// every page it was sent was judged by the role she has now, so the
/// change it passes on the way is no reason to read the feed again.
#[test]
fn a_role_changed_before_a_phone_enrolled_does_not_have_it_read_the_feed_again() {
    let c = Clinic::with(&["max", "ana"]);
    c.handed_to("ana");
    c.at("max")
        .put_member(&member("ana", Role::Clinician))
        .unwrap();
    let before = outbox(c.at("max"));
    c.at("max")
        .put_member(&member("ana", Role::FrontDesk))
        .unwrap();
    let second = Store::open(c.dir.path().join("ana-2.db"), &KEY, options(&c.clock)).unwrap();
    c.at("max")
        .register_device(&second.device_actor(), "ana")
        .unwrap();
    second.set_enrolled_user("ana").unwrap();
    // Two pages: the role change falls between them.
    assert!(!second.apply_remote(&before).unwrap().read_again);
    let report = second.apply_remote(&outbox(c.at("max"))).unwrap();
    assert!(!report.read_again, "{report:?}");
    assert!(report.team_changed);
}

/// A role changed and changed back within one page: pages sent between the
/// two were judged by the other role, so the phone reads the feed again
/// although its user's role ends as it began.
#[test]
fn a_role_changed_and_back_within_one_page_has_the_phone_read_the_feed_again() {
    let c = Clinic::with(&["max", "fay"]);
    c.at("max")
        .put_member(&member("fay", Role::Manager))
        .unwrap();
    c.at("max")
        .put_member(&member("fay", Role::FrontDesk))
        .unwrap();
    let report = c.at("fay").apply_remote(&outbox(c.at("max"))).unwrap();
    assert!(report.read_again, "{report:?}");
}

/// A team change that leaves a new phone's sight as it is (a template
/// added after its enrolment) is no reason to read the feed again.
#[test]
fn a_new_phone_passing_other_team_changes_does_not_read_the_feed_again() {
    let c = Clinic::with(&["max", "ana"]);
    c.handed_to("ana");
    let zoe = new_phone(&c, "zoe", Role::FrontDesk);
    c.at("max")
        .put_sop(&SopTemplate {
            id: "CLN-009".into(),
            name: "Lab results call".into(),
            checklist: vec!["Verify identity".into()],
            questions: vec![],
        })
        .unwrap();
    let report = zoe.apply_remote(&outbox(c.at("max"))).unwrap();
    assert!(!report.read_again, "{report:?}");
    assert!(report.team_changed);
}
