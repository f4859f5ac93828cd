//! The relay's database file: an old schema upgrades to exactly the fresh
//! one, and keeps its feed.

use automerge::AutoCommit;
use handoff_core::team::TeamWriter;
use handoff_server::{Db, Relay};
use rusqlite::{params, Connection};

fn schema(path: &std::path::Path) -> Vec<(String, String, Option<String>)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn user_version(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_relay_database_of_schema_1_upgrades_to_the_fresh_schema_and_keeps_its_feed() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    // A team and its first feed entry, as the schema-1 relay wrote them.
    let relay_actor = "0123456789abcdef0123456789abcdef";
    let mut doc = AutoCommit::new().with_actor(hex::decode(relay_actor).unwrap().into());
    TeamWriter(&mut doc).init("Old clinic").unwrap();
    doc.commit();
    let change = doc.get_last_local_change().unwrap();
    {
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(include_str!("relay_schema_v1.sql"))
            .unwrap();
        conn.execute(
            "INSERT INTO teams (team_id, name, relay_actor, created_at) VALUES ('t1', 'Old clinic', ?1, 0)",
            [relay_actor],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO feed (team_id, seq, doc_id, hash, bytes) VALUES ('t1', 1, 'team', ?1, ?2)",
            params![&change.hash().0[..], change.raw_bytes()],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }

    let upgraded = Db::open(&old).unwrap();
    let fresh = dir.path().join("fresh.db");
    drop(Db::open(&fresh).unwrap());
    assert_eq!(schema(&old), schema(&fresh));
    assert_eq!(user_version(&old), handoff_server::db::VERSION);
    assert_eq!(user_version(&fresh), handoff_server::db::VERSION);

    let relay = Relay::new(upgraded);
    let team = relay.team("t1").unwrap();
    assert_eq!(team.state().head(), 1);
    assert_eq!(relay.loaded_feed_length(), 1);
    // A phone's cursor on a row written before the feed kept its chain
    // (schema 5) still names it: its tag is its change's, as it was.
    let h = change.hash().0;
    assert_eq!(
        team.state().tag_at(1),
        u32::from_le_bytes([h[0], h[1], h[2], h[3]]).max(1)
    );
}

/// The relay's files hold patient details in the clear: no one but the
/// relay's own user reads them (the usual umask would let everyone).
#[cfg(unix)]
#[test]
fn the_relays_files_are_its_users_alone() {
    use crate::harness::*;
    use std::os::unix::fs::PermissionsExt;

    let relay = crate::harness::Relay::start();
    let (_, max, ana) = manager_and(&relay, "ana", "clinical_assistant");
    hand_over(&max, &ana, "Call back", "ana");
    relay.admin(&["revoke", "--device", &ana.store.device_actor()]);
    let db = relay.db();
    for suffix in ["", "-wal", "-shm", "-revocations"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{path:?} has mode {mode:o}");
    }
}

/// An admin command run as another user than the one the relay's database
/// belongs to (root, on a relay that runs as its own user) is refused
/// before it makes anything beside the database: the relay could not open
/// a WAL or a revocations file root made, and would stop on them.
#[cfg(unix)]
#[test]
fn an_admin_command_run_by_another_user_than_the_databases_is_refused() {
    use crate::harness::{admin, admin_fails};
    let dir = tempfile::tempdir().unwrap();
    let db = if rustix::process::geteuid().is_root() {
        let db = dir.path().join("relay.db");
        admin(&db, &["create-team", "--name", "Clinic"]);
        std::os::unix::fs::chown(&db, Some(4242), Some(4242)).unwrap();
        db
    } else {
        // Not root, a file of root's stands in for the relay's.
        std::path::PathBuf::from("/etc/hostname")
    };
    let owner = if db.starts_with("/etc") { 0 } else { 4242 };
    for args in [
        &["teams"][..],
        &["devices", "--team", "t"],
        &["revoke", "--device", "abcd"],
        &[
            "invite",
            "--team",
            "t",
            "--user",
            "bob",
            "--name",
            "Bob",
            "--role",
            "front_desk",
        ],
        &["create-team", "--name", "Other"],
    ] {
        let refused = admin_fails(&db, args);
        assert!(
            refused.contains(&format!("belongs to user id {owner}")),
            "{args:?}: {refused}"
        );
        for suffix in ["-wal", "-shm", "-revocations", "-vouched"] {
            let mut beside = db.clone().into_os_string();
            beside.push(suffix);
            assert!(
                !std::path::Path::new(&beside).exists(),
                "{args:?} made {beside:?}"
            );
        }
    }
    // A file left beside the database by an earlier run as another user.
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&db, Some(0), Some(0)).unwrap();
        admin(&db, &["teams"]);
        let mut revocations = db.clone().into_os_string();
        revocations.push("-revocations");
        std::fs::write(&revocations, "").unwrap();
        std::os::unix::fs::chown(&revocations, Some(4242), Some(4242)).unwrap();
        let refused = admin_fails(&db, &["teams"]);
        assert!(
            refused.contains("-revocations belongs to user id 4242"),
            "{refused}"
        );
        std::fs::remove_file(&revocations).unwrap();
        let mut vouched = db.clone().into_os_string();
        vouched.push("-vouched");
        std::fs::write(&vouched, "").unwrap();
        std::os::unix::fs::chown(&vouched, Some(4242), Some(4242)).unwrap();
        let refused = admin_fails(&db, &["teams"]);
        assert!(
            refused.contains("-vouched belongs to user id 4242"),
            "{refused}"
        );
    }
}
