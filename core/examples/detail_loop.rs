//! Time `task_detail` on the benchmark's fixture (every open task, twice:
//! the second pass finds each document in the cache).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use handoff_core::*;

mod fixture;

fn main() {
    let fixture = std::env::args()
        .nth(1)
        .expect("usage: detail_loop <fixture.db>");
    // Kept whole: it holds the copy's directory.
    let fx = fixture::open(&fixture, StoreOptions::default());
    let (store, open) = (&fx.store, &fx.open_tasks);
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
