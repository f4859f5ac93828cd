//! Time `log_call` on the benchmark's fixture, outside criterion: for A/B
//! comparisons of two builds on a noisy machine (copy each build's binary,
//! then alternate their runs).
//!
//!     cargo bench -p handoff-core --bench store -- cold_open   # the first run builds the fixture
//!     cargo build --release -p handoff-core --example write_loop
//!     target/release/examples/write_loop target/tmp/bench-v7-rules2/clinic.db 8000 [full] [inline-checkpoints]
//!
//! It prints the median, 99th percentile, slowest and mean write.
//! The store is a fresh copy of the fixture in the system's temp directory,
//! every open task's document loaded first (the "task already open" case),
//! synchronous=NORMAL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use handoff_core::*;

mod fixture;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(fixture), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: write_loop <fixture.db> <writes> [full] [inline-checkpoints]");
        std::process::exit(2);
    };
    let n: u32 = n.parse().expect("writes: a number");
    let flags: Vec<String> = args.collect();
    // Kept whole: it holds the copy's directory.
    let fx = fixture::open(
        &fixture,
        StoreOptions {
            durability: if flags.contains(&"full".to_string()) {
                Durability::Full
            } else {
                Durability::Normal
            },
            checkpoint_thread: !flags.contains(&"inline-checkpoints".to_string()),
            ..StoreOptions::default()
        },
    );
    let (store, open) = (&fx.store, &fx.open_tasks);
    for t in open {
        store.task_detail(t).unwrap();
    }
    let attempt = CallAttempt {
        outcome: CallOutcome::Busy,
        contact_used: Some("mobile".into()),
        notes: "Left message with spouse; patient recovering, mild pain".into(),
        answers: vec![ScriptAnswer {
            question: "Pain 0-10?".into(),
            answer: "3".into(),
        }],
        next_attempt_due: None,
    };
    let mut took = Vec::with_capacity(n as usize);
    let started = Instant::now();
    let mut j = 0;
    for _ in 0..n {
        j = (j + 7919) % open.len();
        let t = Instant::now();
        store.log_call(&open[j], attempt.clone()).unwrap();
        took.push(t.elapsed());
    }
    let mean = started.elapsed() / n;
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "median {:?} p99 {:?} max {:?} mean {:?} ({n} writes)",
        at(0.5),
        at(0.99),
        took[took.len() - 1],
        mean
    );
    // Where the mean goes: the share of all write time spent in writes
    // of each latency band (the tail is what lifts criterion's figure,
    // a mean per iteration, above the median write).
    let total: std::time::Duration = took.iter().sum();
    let bands = [150, 300, 1_000, 5_000, u64::MAX];
    let mut low = 0;
    let mut line = String::from("time by band:");
    for high in bands {
        let in_band = took
            .iter()
            .filter(|d| (low..high).contains(&(d.as_micros() as u64)));
        let (count, sum) =
            in_band.fold((0, std::time::Duration::ZERO), |(c, s), d| (c + 1, s + *d));
        let name = match high {
            u64::MAX => format!(">={low}us"),
            _ => format!("<{high}us"),
        };
        line += &format!(
            " {name} {:.0}% ({count} writes)",
            100.0 * sum.as_secs_f64() / total.as_secs_f64()
        );
        low = high;
    }
    println!("{line}");
}
