//! The database format is frozen per schema version: a change to the schema
//! must come with a new version and an upgrade step (`store/schema.rs`), and
//! an upgraded store must end up identical to a fresh one.

use handoff_core::*;

use crate::clinic::*;

/// What `sqlite_master` held at schema version 1 (`tests/it/schema_v1.sql`).
const FROZEN_V1: &str = include_str!("schema_v1.sql");

fn schema_of(path: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
        hex::encode(KEY)
    ))
    .unwrap();
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
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/schema_v1.sql"),
            &actual,
        )
        .unwrap();
    }
    assert_eq!(
        actual, FROZEN_V1,
        "the schema changed: add a version and an upgrade step instead of editing v1"
    );
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
