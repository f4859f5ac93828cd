//! Many stores opened at once as a fresh process's first use of SQLite all
//! open. SQLCipher used to finish its set-up after SQLite let other threads
//! in, and a store keyed in that gap failed to open (`PRAGMA key` refused):
//! without the fix in `store::connect`, about one run in thirty failed here.

use std::process::Command;

const RUNS: usize = 200;
const THREADS: usize = 32;

#[test]
fn stores_opened_at_once_by_a_fresh_process_all_open() {
    let dir = tempfile::tempdir().unwrap();
    for run in 0..RUNS {
        let phones = dir.path().join(format!("run{run}"));
        std::fs::create_dir(&phones).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_first-open"))
            .arg(&phones)
            .arg(THREADS.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run {run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&phones).unwrap();
    }
}
