//! A year of a busy clinic: 10,000 tasks of ~10 events each, 20 staff.
//! Each figure beside the same work done by automerge alone and by plain
//! SQLite, in the same run. `cargo bench -p handoff-core --bench store`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use handoff_core::*;

const TASKS: usize = 10_000;
const KEY: [u8; 32] = [9; 32];
const T0: Timestamp = 1_772_442_000_000;

fn opts(d: Durability) -> StoreOptions {
    StoreOptions {
        durability: d,
        utc_offset_minutes: 0,
        clock: Arc::new(ManualClock::at(T0 + 400 * DAY_MS)),
        ..StoreOptions::default()
    }
}

fn member(id: &str, role: Role) -> Member {
    Member {
        user_id: id.into(),
        name: id.into(),
        role,
        trusted: true,
        active: true,
    }
}

fn attempt(o: CallOutcome) -> CallAttempt {
    CallAttempt {
        outcome: o,
        contact_used: Some("mobile".into()),
        notes: "Left message with spouse; patient recovering, mild pain".into(),
        answers: vec![ScriptAnswer {
            question: "Pain 0-10?".into(),
            answer: "3".into(),
        }],
        next_attempt_due: None,
    }
}

fn new_task(i: usize) -> NewTask {
    NewTask {
        handoff: Handoff {
            title: format!("Post-op follow-up call #{i}"),
            outcome: "Reach the patient within 48 h and document recovery status".into(),
            why: "Complications caught early".into(),
            due: Some(T0 + (i as i64) * HOUR_MS),
            priority: Priority::Normal,
            category: Category::FollowUpCall,
            level: DelegationLevel::Delegable,
            sop: None,
            route_result_to: None,
        },
        patient: Some(PatientRef {
            display_name: format!("Patient {i}"),
            phone: Some("555-0100".into()),
            record_ref: Some(format!("MRN-{i}")),
        }),
        assignee: Some(format!("staff{}", (i / 7) % 20)),
        pool: None,
    }
}

/// Build (once, cached under target/) a store of TASKS tasks, as seen from
/// the manager's device: ~10 events each, 95% completed.
fn fixture() -> PathBuf {
    // Named for the rules too: a fixture of older rules would derive its
    // whole index again at every open, and its writes would start behind
    // that re-derivation's WAL.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-v7-rules{}", handoff_core::derive::RULES));
    let path = dir.join("clinic.db");
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join("building.db");
    let _ = std::fs::remove_file(&tmp);
    {
        let s = Store::open(&tmp, &KEY, opts(Durability::Normal)).unwrap();
        s.create_team("Bench Clinic", member("max", Role::Manager))
            .unwrap();
        for i in 0..20 {
            s.put_member(&member(&format!("staff{i}"), Role::ClinicalAssistant))
                .unwrap();
        }
        for i in 0..TASKS {
            let t = s.delegate(new_task(i)).unwrap();
            s.comment(&t, "Please use the alternate number if no answer")
                .unwrap();
            s.log_call(&t, attempt(CallOutcome::NoAnswer)).unwrap();
            s.log_call(&t, attempt(CallOutcome::Voicemail)).unwrap();
            s.log_call(&t, attempt(CallOutcome::Reached)).unwrap();
            s.comment(&t, "Patient asked about physio").unwrap();
            s.escalate(&t, "asked for a nurse callback").unwrap();
            s.comment(&t, "Nurse called back").unwrap();
            // 1 in 4 still in progress, 1 in 20 waiting for review, the rest approved.
            if i % 4 != 0 {
                s.submit(&t, "done").unwrap();
            }
            if i % 4 != 0 && i % 20 != 1 {
                s.approve(&t, "").unwrap();
            }
        }
        let sent = s.outbox(usize::MAX >> 1).unwrap();
        s.outbox_delivered(&sent).unwrap();
        s.compact_all().unwrap();
    }
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Changes in a page of team news.
const TEAM_PAGE: usize = 3_000;

/// What `store` has written since last asked, as the relay would send it,
/// taken off its outbox.
fn delivered(store: &Store) -> Vec<(String, Vec<u8>)> {
    let sent = store.outbox(usize::MAX >> 1).unwrap();
    store.outbox_delivered(&sent).unwrap();
    sent.into_iter().map(|o| (o.doc_id, o.bytes)).collect()
}

fn copy_of(fixture: &Path, name: &str) -> PathBuf {
    let p = fixture.with_file_name(name);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
    }
    std::fs::copy(fixture, &p).unwrap();
    p
}

fn bench(c: &mut Criterion) {
    let fx = fixture();
    let mut g = c.benchmark_group("log_call");
    g.measurement_time(Duration::from_secs(8));
    for (name, d) in [
        ("handoff_sync_normal", Durability::Normal),
        ("handoff_sync_full", Durability::Full),
    ] {
        let s = Store::open(copy_of(&fx, &format!("{name}.db")), &KEY, opts(d)).unwrap();
        // The open tasks, spread over 20 staff: the manager logs calls on them.
        let open: Vec<TaskId> = (0..20)
            .flat_map(|i| {
                let q = s.queue_of(&format!("staff{i}")).unwrap();
                [q.overdue, q.today, q.upcoming].concat()
            })
            .map(|t| t.task_id)
            .collect();
        assert!(open.len() >= 2000, "fixture has {} open tasks", open.len());
        let mut i = 0;
        g.bench_function(format!("{name}_random_task"), |b| {
            b.iter(|| {
                i = (i + 7919) % open.len();
                s.log_call(&open[i], attempt(CallOutcome::Busy)).unwrap()
            })
        });
        // The usual case on a phone: the task was just opened, its document
        // is loaded. A store whose cache holds every open task, same rotation.
        let w = Store::open(
            copy_of(&fx, &format!("{name}-warm.db")),
            &KEY,
            StoreOptions {
                doc_cache_capacity: 4096,
                ..opts(d)
            },
        )
        .unwrap();
        for t in &open {
            w.task_detail(t).unwrap();
        }
        let mut j = 0;
        g.bench_function(format!("{name}_open_task_loaded"), |b| {
            b.iter(|| {
                j = (j + 7919) % open.len();
                w.log_call(&open[j], attempt(CallOutcome::Busy)).unwrap()
            })
        });
    }
    // automerge alone: the same one-event insert into a loaded task document.
    let mut doc = AutoCommit::new();
    let list = doc.put_object(ROOT, "events", ObjType::List).unwrap();
    let event =
        serde_json::json!({"id":"00112233445566778899aabbccddeeff:4","lt":5,"at":T0,"by":"staff1",
        "k":"call_logged","attempt":attempt(CallOutcome::Busy)})
        .to_string();
    for _ in 0..10 {
        let n = automerge::ReadDoc::length(&doc, &list);
        doc.insert(&list, n, event.as_str()).unwrap();
        doc.commit();
    }
    // One event into a 10-event task document, and the change's bytes out.
    g.bench_function("automerge_alone", |b| {
        b.iter_batched(
            || doc.fork(),
            |mut d| {
                let n = automerge::ReadDoc::length(&d, &list);
                d.insert(&list, n, event.as_str()).unwrap();
                d.commit();
                black_box(d.get_last_local_change().map(|c| c.raw_bytes().len()))
            },
            BatchSize::SmallInput,
        )
    });
    // plain SQLite (no key: SQLCipher is then plain SQLite): one UPDATE, WAL, NORMAL.
    let plain = fx.with_file_name("plain.db");
    let _ = std::fs::remove_file(&plain);
    let conn = rusqlite::Connection::open(&plain).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, calls INTEGER, last TEXT);",
    )
    .unwrap();
    {
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..TASKS {
            tx.execute("INSERT INTO t VALUES (?1, 0, '')", [i as i64])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let mut k = 0i64;
    g.bench_function("plain_sqlite_update", |b| {
        b.iter(|| {
            k = (k + 7919) % TASKS as i64;
            conn.execute(
                "UPDATE t SET calls = calls + 1, last = ?2 WHERE id = ?1",
                rusqlite::params![k, event],
            )
            .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cold_open");
    let cold = copy_of(&fx, "cold.db");
    g.bench_function("handoff_open_to_my_queue", |b| {
        b.iter(|| {
            let s = Store::open(&cold, &KEY, opts(Durability::Full)).unwrap();
            black_box(s.queue_of("staff3").unwrap())
        })
    });
    // automerge alone: one document holding all 10k tasks' events.
    let mut big = AutoCommit::new();
    let events = big.put_object(ROOT, "events", ObjType::List).unwrap();
    for i in 0..TASKS * 10 {
        big.insert(&events, i, event.as_str()).unwrap();
        if i % 10 == 9 {
            big.commit();
        }
    }
    let saved = big.save();
    g.bench_function("automerge_load_one_doc_of_all_tasks", |b| {
        b.iter(|| black_box(AutoCommit::load(&saved).unwrap()))
    });
    g.bench_function("plain_sqlite_read_all_rows", |b| {
        b.iter(|| {
            let c = rusqlite::Connection::open(&plain).unwrap();
            let mut st = c.prepare("SELECT id, calls, last FROM t").unwrap();
            let n = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .unwrap()
                .count();
            black_box(n)
        })
    });
    g.finish();

    // Merge 1,000 incoming changes (100 tasks x 10 events from another phone).
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(
        src_dir.path().join("src.db"),
        &KEY,
        opts(Durability::Normal),
    )
    .unwrap();
    src.create_team("Bench Clinic", member("max", Role::Manager))
        .unwrap();
    for i in 0..20 {
        src.put_member(&member(&format!("staff{i}"), Role::ClinicalAssistant))
            .unwrap();
    }
    let team_changes: Vec<_> = src
        .outbox(1000)
        .unwrap()
        .into_iter()
        .map(|o| (o.doc_id, o.bytes))
        .collect();
    let sent = src.outbox(1000).unwrap();
    src.outbox_delivered(&sent).unwrap();
    for i in 0..100 {
        let t = src.delegate(new_task(i)).unwrap();
        for _ in 0..9 {
            src.comment(&t, "progress note").unwrap();
        }
    }
    let batch: Vec<_> = src
        .outbox(2000)
        .unwrap()
        .into_iter()
        .map(|o| (o.doc_id, o.bytes))
        .collect();
    assert_eq!(batch.len(), 1000);
    let mut g = c.benchmark_group("merge_1000_changes");
    g.sample_size(20);
    g.throughput(criterion::Throughput::Elements(1000));
    g.bench_function("handoff_apply_remote", |b| {
        b.iter_batched(
            || {
                let d = tempfile::tempdir().unwrap();
                let s = Store::open(d.path().join("m.db"), &KEY, opts(Durability::Full)).unwrap();
                s.set_enrolled_user("max").unwrap();
                s.apply_remote(&team_changes).unwrap();
                (d, s)
            },
            |(d, s)| {
                black_box(s.apply_remote(&batch).unwrap());
                (d, s)
            },
            BatchSize::PerIteration,
        )
    });
    let changes: Vec<(String, automerge::Change)> = batch
        .iter()
        .map(|(d, b)| (d.clone(), automerge::Change::from_bytes(b.clone()).unwrap()))
        .collect();
    g.bench_function("automerge_alone_apply", |b| {
        b.iter(|| {
            let mut docs: std::collections::HashMap<&str, AutoCommit> = Default::default();
            for (d, c) in &changes {
                docs.entry(d.as_str())
                    .or_default()
                    .apply_changes([c.clone()])
                    .unwrap();
            }
            black_box(docs.len())
        })
    });
    g.finish();

    // A page of 3,000 team changes on a phone its team lists: changes of
    // other members (which cannot move its user's sight), or of its user's
    // own role, back and forth (each moves it: the worst case, where the
    // page is applied in steps to see the sight after each), beside
    // automerge alone applying the same changes to one document.
    let phone_dir = tempfile::tempdir().unwrap();
    let phone_db = phone_dir.path().join("fay.db");
    let team_dir = tempfile::tempdir().unwrap();
    let team = Store::open(
        team_dir.path().join("max.db"),
        &KEY,
        opts(Durability::Normal),
    )
    .unwrap();
    team.create_team("Bench Clinic", member("max", Role::Manager))
        .unwrap();
    for i in 0..20 {
        team.put_member(&member(&format!("staff{i}"), Role::ClinicalAssistant))
            .unwrap();
    }
    team.put_member(&member("fay", Role::FrontDesk)).unwrap();
    let before = {
        let phone = Store::open(&phone_db, &KEY, opts(Durability::Full)).unwrap();
        team.register_device(&phone.device_actor(), "fay").unwrap();
        phone.set_enrolled_user("fay").unwrap();
        let before = delivered(&team);
        phone.apply_remote(&before).unwrap();
        before
    };
    let others: Vec<_> = {
        for i in 0..TEAM_PAGE {
            let mut m = member(&format!("staff{}", i % 20), Role::ClinicalAssistant);
            m.name = format!("Staff member {i}");
            team.put_member(&m).unwrap();
        }
        delivered(&team)
    };
    let hers: Vec<_> = {
        for i in 0..TEAM_PAGE {
            let role = [Role::ClinicalAssistant, Role::FrontDesk][i % 2];
            team.put_member(&member("fay", role)).unwrap();
        }
        delivered(&team)
    };
    assert_eq!((others.len(), hers.len()), (TEAM_PAGE, TEAM_PAGE));
    // Her changes build on the others': a phone that has those.
    let phone_after_others = copy_of(&phone_db, "fay-after-others.db");
    Store::open(&phone_after_others, &KEY, opts(Durability::Full))
        .unwrap()
        .apply_remote(&others)
        .unwrap();
    let mut g = c.benchmark_group("team_page_3000");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (name, page, phone) in [
        ("others_roles", &others, &phone_db),
        ("her_role_back_and_forth", &hers, &phone_after_others),
    ] {
        g.bench_function(format!("handoff_apply_remote_{name}"), |b| {
            b.iter_batched(
                || {
                    Store::open(copy_of(phone, "fay-copy.db"), &KEY, opts(Durability::Full))
                        .unwrap()
                },
                |s| {
                    let report = s.apply_remote(page).unwrap();
                    assert_eq!(report.read_again, name != "others_roles");
                    s
                },
                BatchSize::PerIteration,
            )
        });
    }
    let decoded = |page: &[(String, Vec<u8>)]| -> Vec<automerge::Change> {
        page.iter()
            .map(|(_, b)| automerge::Change::from_bytes(b.clone()).unwrap())
            .collect()
    };
    let (before, others, hers) = (decoded(&before), decoded(&others), decoded(&hers));
    let doc_of = |pages: &[&[automerge::Change]]| {
        let mut doc = AutoCommit::new();
        for page in pages {
            doc.apply_changes(page.iter().cloned()).unwrap();
        }
        doc
    };
    g.bench_function("automerge_alone_apply_others_roles", |b| {
        b.iter_batched(
            || doc_of(&[&before]),
            |mut doc| {
                doc.apply_changes(others.iter().cloned()).unwrap();
                doc
            },
            BatchSize::PerIteration,
        )
    });
    // What stepping costs in automerge: each change its own apply.
    g.bench_function("automerge_alone_apply_her_role_one_at_a_time", |b| {
        b.iter_batched(
            || doc_of(&[&before, &others]),
            |mut doc| {
                for c in &hers {
                    doc.apply_changes([c.clone()]).unwrap();
                }
                doc
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // A team change on a phone holding the year: someone joins the team
    // (the tasks waiting for a member or a device are derived again), or
    // the manager sets a policy (none is). Each hire on a fresh copy, so
    // the team stays the clinic's size.
    let mut g = c.benchmark_group("team_change");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let base = copy_of(&fx, "team-base.db");
    drop(Store::open(&base, &KEY, opts(Durability::Normal)).unwrap()); // derived under these rules
    g.bench_function("handoff_hire_a_member", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let s =
                    Store::open(copy_of(&base, "team.db"), &KEY, opts(Durability::Normal)).unwrap();
                let t = Instant::now();
                s.put_member(&member("nia", Role::FrontDesk)).unwrap();
                took += t.elapsed();
            }
            took
        })
    });
    let s = Store::open(copy_of(&base, "team.db"), &KEY, opts(Durability::Normal)).unwrap();
    let mut hours = 48;
    g.bench_function("handoff_set_policy", |b| {
        b.iter(|| {
            hours = 96 - hours;
            s.set_policy(&Policy {
                follow_up_within_hours: hours,
                ..Policy::default()
            })
            .unwrap()
        })
    });
    g.finish();
    drop(s);

    // Bytes on disk per task, against the same tasks as JSON.
    let s = Store::open(&cold, &KEY, opts(Durability::Full)).unwrap();
    let ids = s.task_ids().unwrap();
    let json: usize = ids
        .iter()
        .map(|t| {
            let d = s.task_detail(t).unwrap();
            serde_json::to_string(&(&d.state.history, &d.patient))
                .unwrap()
                .len()
        })
        .sum();
    drop(s);
    let disk = std::fs::metadata(&cold).unwrap().len() as usize;
    eprintln!(
        "bytes_per_task: store {} B/task on disk, same events+patient as JSON {} B/task, ratio {:.2}",
        disk / TASKS,
        json / TASKS,
        disk as f64 / json as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
