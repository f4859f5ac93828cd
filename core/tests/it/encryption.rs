//! Encryption at rest with the host's key.

use handoff_core::*;

use crate::clinic::*;

#[test]
fn the_store_file_is_not_readable_as_plain_sqlite() {
    let c = Clinic::with(&["max", "ana"]);
    c.at("max")
        .delegate(task_for("ana", DelegationLevel::Delegable))
        .unwrap();
    let path = c.dir.path().join("0-max.db");
    let bytes = std::fs::read(&path).unwrap();
    assert!(!bytes.starts_with(b"SQLite format 3\0"));
    let wal = std::fs::read(c.dir.path().join("0-max.db-wal")).unwrap_or_default();
    for file in [&bytes, &wal] {
        assert!(
            !file.windows(12).any(|w| w == b"Jordan Quill"),
            "patient name in the clear"
        );
    }
    // Python's sqlite3 module is a plain SQLite, independent of our build.
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('select * from sqlite_master').fetchall()")
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(!out.status.success(), "plain SQLite opened the store");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a database"));
}

#[test]
fn the_wrong_key_is_a_typed_error_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let clock = ManualClock::at(MONDAY_9AM);
    let s = Store::open(&path, &KEY, options(&clock)).unwrap();
    s.create_team(
        "T",
        Member {
            user_id: "max".into(),
            name: "Max".into(),
            role: Role::Manager,
            trusted: false,
            active: true,
        },
    )
    .unwrap();
    drop(s);
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        Store::open(&path, &[8u8; 32], options(&clock)),
        Err(Error::WrongKey)
    ));
    assert!(matches!(
        Store::open(&path, &[8u8; 5], options(&clock)),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let s = Store::open(&path, &KEY, options(&clock)).unwrap();
    assert_eq!(s.user().as_deref(), Some("max"));
}

#[test]
fn a_file_that_is_not_a_store_is_the_wrong_key_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    assert!(matches!(
        Store::open(&path, &KEY, StoreOptions::default()),
        Err(Error::WrongKey)
    ));
}
