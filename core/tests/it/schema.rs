//! The database format is frozen per schema version: a change to the schema
//! must come with a new version and an upgrade step (`store/schema.rs`), and
//! an upgraded store must end up identical to a fresh one.

use std::sync::{Arc, Mutex};

use handoff_core::*;

use crate::clinic::*;

/// What `sqlite_master` held at schema version 1 (`tests/it/schema_v1.sql`).
const FROZEN_V1: &str = include_str!("schema_v1.sql");
/// At version 2 (`tests/it/schema_v2.sql`).
const FROZEN_V2: &str = include_str!("schema_v2.sql");
/// At version 3 (`tests/it/schema_v3.sql`).
const FROZEN_V3: &str = include_str!("schema_v3.sql");
/// At version 4 (`tests/it/schema_v4.sql`).
const FROZEN_V4: &str = include_str!("schema_v4.sql");
/// At version 5 (`tests/it/schema_v5.sql`).
const FROZEN_V5: &str = include_str!("schema_v5.sql");
/// At version 6 (`tests/it/schema_v6.sql`).
const FROZEN_V6: &str = include_str!("schema_v6.sql");
/// And at version 7, the current one (`tests/it/schema_v7.sql`).
const FROZEN_V7: &str = include_str!("schema_v7.sql");
/// What every store upgrades to: a fresh store's schema.
const CURRENT: &str = FROZEN_V7;

/// Takes a store back from v5 to v4.
const UNDO_V5: &str = "DROP TABLE offer_again; ALTER TABLE outbox DROP COLUMN offered_again;";
/// Takes a store back from v6 to v5.
const UNDO_V6: &str = "ALTER TABLE outbox DROP COLUMN held;";
/// Takes a store back from v7 to v6.
const UNDO_V7: &str = "DROP TABLE reread;";

fn schema_of(path: &std::path::Path) -> String {
    let conn = raw(path);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name")
        .unwrap();
    let sql: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    format!("-- user_version {version}\n{};\n", sql.join(";\n"))
}

#[test]
fn a_fresh_store_has_exactly_the_frozen_schema_of_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(Store::open(&path, &KEY, StoreOptions::default()).unwrap());
    let actual = schema_of(&path);
    if std::env::var_os("HANDOFF_BLESS_SCHEMA").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/schema_v7.sql"),
            &actual,
        )
        .unwrap();
    }
    assert_eq!(
        actual, CURRENT,
        "the schema changed: add a version and an upgrade step instead of editing v7"
    );
}

/// v2 re-keys what the user dismissed: a v1 key (a bare event id) hid every
/// item on any task that shared it, and kept hiding later ones.
#[test]
fn a_v1_store_upgrades_to_v2_keeping_what_was_dismissed_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let conn = raw(&path);
        // The frozen file lists indexes before their tables.
        let (indexes, tables): (Vec<&str>, Vec<&str>) = FROZEN_V1
            .split(";\n")
            .partition(|sql| sql.contains("CREATE INDEX"));
        for sql in tables.into_iter().chain(indexes) {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO meta VALUES ('user', 'fred');
             INSERT INTO documents VALUES ('t1', 'task', 't1', 0), ('t2', 'task', 't2', 0);
             INSERT INTO tasks (task_id, doc_id, title, status, level, priority, category,
                                created_by, created_at, updated_at)
             VALUES ('t1', 't1', 'Call back', 'in_progress', 'delegable', 1, 'other', 'max', 0, 0),
                    ('t2', 't2', 'Book scan', 'in_progress', 'delegable', 1, 'other', 'max', 0, 0),
                    ('t3', 't3', 'Refill', 'in_progress', 'delegable', 1, 'other', 'max', 0, 0);
             INSERT INTO attention VALUES
                ('t1', 'ab:2', 'fred', 'claimed', 'already_taken', 'Fay has it', 1),
                ('t2', 'ab:2', 'fred', 'claimed', 'already_taken', 'Fay has it', 2),
                ('t2', 'ab:3', 'fred', 'commented', 'closed', 'the task was closed', 3);
             INSERT INTO outbox (id, doc_id, hash, bytes, queued_at, refused_code, refused_reason)
             VALUES (1, 't1', x'0a0b', x'00', 4, 'forbidden', 'not yours'),
                    (2, 't2', x'0c0d', x'00', 5, 'forbidden', 'not yours');
             INSERT INTO dismissed VALUES ('ab:2'), ('outbox:1');",
        )
        .unwrap();
    }
    let store = Store::open(&path, &KEY, StoreOptions::default()).unwrap();
    assert_eq!(
        schema_of(&path),
        CURRENT,
        "an upgraded store is a fresh one"
    );
    let shown = |store: &Store| -> Vec<(Option<String>, String)> {
        store
            .attention_of("fred")
            .unwrap()
            .into_iter()
            .map(|a| (a.task_id, a.code))
            .collect()
    };
    // What was hidden before the upgrade stays hidden, and nothing else is.
    assert_eq!(
        shown(&store),
        vec![
            (Some("t2".into()), "closed".into()),
            (Some("t2".into()), "forbidden".into()),
        ]
    );
    // A later lost race that happens to reuse the event id is shown.
    raw(&path)
        .execute_batch(
            "INSERT INTO attention VALUES
                ('t3', 'ab:2', 'fred', 'claimed', 'already_taken', 'Fay has it', 6)",
        )
        .unwrap();
    assert_eq!(shown(&store).len(), 3);
}

/// What a store shows of these tasks, history and all.
fn details_of(store: &Store, tasks: &[TaskId]) -> Vec<TaskDetail> {
    tasks
        .iter()
        .map(|t| store.task_detail(t).unwrap())
        .collect()
}

/// v3 moves the changes into a table kept in write order: every change a
/// v2 store held, compacted or not, is still there, and the tasks read the
/// same, history and all. (The store goes on to v4, which adds an index.)
#[test]
fn a_v2_store_upgrades_keeping_every_change() {
    let c = Clinic::with(&["max"]);
    let mut tasks = Vec::new();
    for i in 0..5 {
        let t = c
            .at("max")
            .delegate(task_for("ana", DelegationLevel::Delegable))
            .unwrap();
        // The last one past compaction: a snapshot and later changes.
        let calls = if i == 4 { store::COMPACT_AFTER + 3 } else { i };
        for _ in 0..calls {
            c.at("max")
                .comment(&t, "Called, left a message with the front desk")
                .unwrap();
        }
        tasks.push(t);
    }
    // Sent: this device's changes are in `changes` now, as v2 kept them.
    let sent = c.at("max").outbox(usize::MAX >> 1).unwrap();
    c.at("max").outbox_delivered(&sent).unwrap();
    let details = |store: &Store| details_of(store, &tasks);
    let before = details(c.at("max"));
    assert_eq!(
        before[4].state.history.len(),
        store::COMPACT_AFTER as usize + 4
    );
    let (_dir, path, clock) = closed(c);
    let rows = |path: &std::path::Path| -> i64 {
        raw(path)
            .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
            .unwrap()
    };
    let held = rows(&path);
    assert!(held > 10, "uncompacted changes to carry over: {held}");
    // Back to v2's layout: the same rows, clustered by document.
    {
        let v2_changes = FROZEN_V2
            .split(";\n")
            .find(|sql| sql.starts_with("CREATE TABLE changes"))
            .unwrap();
        raw(&path)
            .execute_batch(&format!(
                "{UNDO_V7} {UNDO_V6} {UNDO_V5}
                 DROP INDEX outbox_doc;
                 ALTER TABLE changes RENAME TO changes_v3;
                 {v2_changes};
                 INSERT INTO changes SELECT doc_id, hash, bytes FROM changes_v3;
                 DROP TABLE changes_v3;
                 PRAGMA user_version = 2;"
            ))
            .unwrap();
    }
    assert_eq!(schema_of(&path), FROZEN_V2);
    let store = Store::open(&path, &KEY, options(&clock)).unwrap();
    assert_eq!(
        schema_of(&path),
        CURRENT,
        "an upgraded store is a fresh one"
    );
    assert_eq!(rows(&path), held);
    assert_eq!(details(&store), before);
    // And it takes new work.
    store.comment(&tasks[0], "Reached the patient").unwrap();
    assert_eq!(
        store.task_detail(&tasks[0]).unwrap().state.history.len(),
        before[0].state.history.len() + 1
    );
}

/// v4 keeps this device's unsent changes only in the outbox. A v3 store
/// kept them in `changes` too: it upgrades without moving anything, reads
/// the same, offers the same changes to the relay, and keeps them once
/// sent.
#[test]
fn a_v3_store_with_unsent_changes_upgrades_to_v4_and_reads_the_same() {
    let c = Clinic::with(&["max"]);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let t = c
            .at("max")
            .delegate(task_for("ana", DelegationLevel::Delegable))
            .unwrap();
        c.at("max").comment(&t, "Call before noon").unwrap();
        tasks.push(t);
    }
    let details = |store: &Store| details_of(store, &tasks);
    let before = details(c.at("max"));
    let unsent = c.at("max").outbox(usize::MAX >> 1).unwrap();
    assert!(unsent.len() >= 3 * 2, "each task twice, after the team's");
    let (_dir, path, clock) = closed(c);
    // As v3 kept them: unsent changes in both tables, no index.
    raw(&path)
        .execute_batch(&format!(
            "{UNDO_V7} {UNDO_V6} {UNDO_V5}
             INSERT OR IGNORE INTO changes (doc_id, hash, bytes)
                 SELECT doc_id, hash, bytes FROM outbox;
             DROP INDEX outbox_doc;
             PRAGMA user_version = 3;"
        ))
        .unwrap();
    assert_eq!(schema_of(&path), FROZEN_V3);
    let store = Store::open(&path, &KEY, options(&clock)).unwrap();
    assert_eq!(
        schema_of(&path),
        CURRENT,
        "an upgraded store is a fresh one"
    );
    assert_eq!(details(&store), before);
    assert_eq!(store.outbox(usize::MAX >> 1).unwrap(), unsent);
    store.outbox_delivered(&unsent).unwrap();
    drop(store);
    let store = Store::open(&path, &KEY, options(&clock)).unwrap();
    assert_eq!(details(&store), before, "sent, and still there");
    assert!(store.outbox(usize::MAX >> 1).unwrap().is_empty());
}

/// A manager's store taken back to schema `version` (`undo`, then that
/// version), holding a task whose newest change was refused: with the
/// first of its unsent changes delivered if `deliver_first`. Returns it
/// closed, with the task's details and the outbox as they were.
struct OldStore {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    task: TaskId,
    details: Vec<TaskDetail>,
    queued: Vec<OutgoingChange>,
}

fn with_a_refusal_at(version: i64, undo: &str, deliver_first: bool) -> OldStore {
    let c = Clinic::with(&["max"]);
    let max = c.at("max");
    let task = max
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    max.comment(&task, "Call before noon").unwrap();
    let unsent = max.outbox(usize::MAX >> 1).unwrap();
    if deliver_first {
        max.outbox_delivered(&unsent[..1]).unwrap();
    }
    let refused = unsent.last().unwrap().clone();
    max.outbox_refused(&refused, "too_large", "larger than the relay takes")
        .unwrap();
    let details = details_of(max, std::slice::from_ref(&task));
    let queued = max.outbox(usize::MAX >> 1).unwrap();
    assert_eq!(queued.len(), unsent.len() - 1 - usize::from(deliver_first));
    let (_dir, path, clock) = closed(c);
    raw(&path)
        .execute_batch(&format!("{undo} PRAGMA user_version = {version};"))
        .unwrap();
    OldStore {
        _dir,
        path,
        clock,
        task,
        details,
        queued,
    }
}

impl OldStore {
    /// Opened by this build: upgraded to exactly a fresh store's schema,
    /// reading and offering what it did, the refusal still shown.
    fn upgraded(&self) -> Store {
        let store = Store::open(&self.path, &KEY, options(&self.clock)).unwrap();
        assert_eq!(
            schema_of(&self.path),
            CURRENT,
            "an upgraded store is a fresh one"
        );
        let task = std::slice::from_ref(&self.task);
        assert_eq!(details_of(&store, task), self.details);
        assert_eq!(store.outbox(usize::MAX >> 1).unwrap(), self.queued);
        assert_eq!(store.needs_attention().unwrap().len(), 1);
        store
    }
}

/// v5 adds what to offer a relay restored from a backup again; a v4
/// store's refused changes stay refused, and nothing is marked.
#[test]
fn a_v4_store_upgrades_to_v5_with_its_outbox_as_it_was() {
    let old = with_a_refusal_at(4, &format!("{UNDO_V7} {UNDO_V6} {UNDO_V5}"), false);
    assert_eq!(schema_of(&old.path), FROZEN_V4);
    let store = old.upgraded();
    assert!(store.to_offer_again().unwrap().is_empty());
}

/// v6 holds rows refused for what the team says; a v5 store's refused
/// rows were set aside already, and none becomes held.
#[test]
fn a_v5_store_upgrades_to_v6_with_its_refusals_set_aside_as_they_were() {
    let old = with_a_refusal_at(5, &format!("{UNDO_V7} {UNDO_V6}"), true);
    assert_eq!(schema_of(&old.path), FROZEN_V5);
    old.upgraded();
    let held: i64 = raw(&old.path)
        .query_row("SELECT count(*) FROM outbox WHERE held <> 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(held, 0);
}

/// v7 keeps a re-read of the feed going across sync rounds; a v6 store
/// had none under way to keep.
#[test]
fn a_v6_store_upgrades_to_v7_with_no_reread_under_way() {
    let old = with_a_refusal_at(6, UNDO_V7, true);
    assert_eq!(schema_of(&old.path), FROZEN_V6);
    let store = old.upgraded();
    assert_eq!(store.rereading().unwrap(), None);
}

#[test]
fn a_store_from_a_newer_app_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(Store::open(&path, &KEY, StoreOptions::default()).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256; PRAGMA user_version = 99;",
            hex::encode(KEY)
        ))
        .unwrap();
    }
    assert!(matches!(
        Store::open(&path, &KEY, StoreOptions::default()),
        Err(Error::SchemaTooNew(99))
    ));
}

/// The clinic's phones closed: its directory (kept while the file is
/// used), the manager's store file, and the clinic's clock.
fn closed(c: Clinic) -> (tempfile::TempDir, std::path::PathBuf, ManualClock) {
    let Clinic {
        dir,
        devices,
        clock,
    } = c;
    drop(devices);
    let path = dir.path().join("0-max.db");
    (dir, path, clock)
}

/// Deriving every task again takes a while on a phone with a year of
/// tasks: the open tells how far it has come, from 0 to all of them, and a
/// usual open tells nothing.
#[test]
fn an_open_that_derives_the_tasks_again_tells_how_far_it_has_come() {
    let c = Clinic::with(&["max"]);
    for _ in 0..250 {
        c.at("max")
            .delegate(task_for("ana", DelegationLevel::Delegable))
            .unwrap();
    }
    let (_dir, path, clock) = closed(c);
    let heard = Arc::new(Mutex::new(Vec::new()));
    let open = || {
        let heard = heard.clone();
        let store = Store::open(
            &path,
            &KEY,
            StoreOptions {
                on_open_progress: Some(Arc::new(move |p| heard.lock().unwrap().push(p))),
                ..options(&clock)
            },
        )
        .unwrap();
        let q = store.queue_of("ana").unwrap();
        assert_eq!(q.overdue.len() + q.today.len() + q.upcoming.len(), 250);
    };
    open();
    assert!(heard.lock().unwrap().is_empty(), "a usual open");
    raw(&path)
        .execute("UPDATE meta SET value = '1' WHERE key = 'rules'", [])
        .unwrap();
    open();
    let told = std::mem::take(&mut *heard.lock().unwrap());
    let done: Vec<usize> = told.iter().map(|p| p.done).collect();
    assert_eq!(done, vec![0, 100, 200, 250], "{told:?}");
    assert!(told.iter().all(|p| p.total == 250), "{told:?}");
    open();
    assert!(heard.lock().unwrap().is_empty(), "derived once");
}

/// The index holds what the rules derive, and rules change between builds
/// (the rules' version, `derive::RULES`): a store last written under other
/// rules derives its index again when it opens, once.
#[test]
fn a_store_derived_under_other_rules_is_derived_again_when_it_opens() {
    let c = Clinic::with(&["max"]);
    let t = c
        .at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let (_dir, path, clock) = closed(c);
    let open_tasks = |path: &std::path::Path| {
        let store = Store::open(path, &KEY, options(&clock)).unwrap();
        let q = store.queue_of("ana").unwrap();
        [q.overdue, q.today, q.upcoming]
            .concat()
            .into_iter()
            .map(|s| s.task_id)
            .collect::<Vec<_>>()
    };
    // An index row the rules of this build would not have written, as
    // if an older build had derived the task differently.
    let damage = |rules: &str| {
        let conn = raw(&path);
        conn.execute("UPDATE tasks SET status = 'cancelled'", [])
            .unwrap();
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'rules'", [rules])
            .unwrap();
    };
    damage(handoff_core::derive::RULES);
    assert!(
        open_tasks(&path).is_empty(),
        "same rules: the index is read as it is"
    );
    damage("1");
    assert_eq!(open_tasks(&path), vec![t.clone()], "derived again");
    assert_eq!(open_tasks(&path), vec![t]);
}
