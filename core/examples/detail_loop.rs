//! Time `task_detail` on the benchmark's fixture (every open task, twice:
//! the second pass finds each document in the cache).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use handoff_core::*;

fn main() {
    let fixture = std::env::args()
        .nth(1)
        .expect("usage: detail_loop <fixture.db>");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clinic.db");
    std::fs::copy(&fixture, &path).expect("copy the fixture");
    let store = Store::open(
        &path,
        &[9; 32],
        StoreOptions {
            doc_cache_capacity: 4096,
            clock: Arc::new(ManualClock::at(1_772_442_000_000 + 400 * DAY_MS)),
            ..StoreOptions::default()
        },
    )
    .expect("open the fixture (built by the store benchmark)");
    let open: Vec<TaskId> = (0..20)
        .flat_map(|i| {
            let q = store.queue_of(&format!("staff{i}")).unwrap();
            [q.overdue, q.today, q.upcoming].concat()
        })
        .map(|t| t.task_id)
        .collect();
    for pass in ["loading", "cached"] {
        let mut took: Vec<_> = open
            .iter()
            .map(|t| {
                let at = Instant::now();
                store.task_detail(t).unwrap();
                at.elapsed()
            })
            .collect();
        took.sort();
        println!(
            "{pass}: median {:?} p99 {:?} ({} tasks)",
            took[took.len() / 2],
            took[took.len() * 99 / 100],
            took.len()
        );
    }
}
