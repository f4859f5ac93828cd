//! Opens several stores at once, from as many threads, as the first thing
//! this process does with SQLite. SQLCipher finishes its own set-up after
//! SQLite says it is initialized, so a store keyed in that gap failed to
//! open (`PRAGMA key` refused). The first-open test runs this many times.
//!
//! Usage: `first-open <directory> <threads>`
//! Exits 0 when every store opened; prints the first failure and exits 1.

use std::sync::{Arc, Barrier};

use handoff_core::{Store, StoreOptions};
use handoff_tests::TEST_KEY;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(threads)) = (args.next(), args.next()) else {
        eprintln!("usage: first-open <directory> <threads>");
        std::process::exit(2);
    };
    let Ok(threads) = threads.parse::<usize>() else {
        eprintln!("first-open: <threads> must be a number");
        std::process::exit(2);
    };
    let start = Arc::new(Barrier::new(threads));
    let openers: Vec<_> = (0..threads)
        .map(|i| {
            let path = std::path::Path::new(&dir).join(format!("phone{i}.db"));
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                Store::open(&path, &TEST_KEY, StoreOptions::default()).map(drop)
            })
        })
        .collect();
    let mut failed = false;
    for opener in openers {
        match opener.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("first-open: {e}");
                failed = true;
            }
            Err(_) => {
                eprintln!("first-open: an opener panicked");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
