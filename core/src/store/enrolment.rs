//! What the store keeps for sync: the relay it is enrolled with, its token
//! and cursor, and the remote wipe.

use automerge::ActorId;
use rand::RngCore;

use super::{docs, meta, set_meta, Db, Store};
use crate::error::{Error, Result};

/// Where this device syncs, as saved at enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    pub url: String,
    pub token: String,
    pub team: String,
}

impl Store {
    /// Save what enrolment returned. The team document arrives by sync.
    pub fn save_enrolment(&self, url: &str, token: &str, team: &str, user: &str) -> Result<()> {
        super::check_id("user id", user)?;
        let mut db = self.lock();
        if db.st.user.as_deref().is_some_and(|u| u != user) {
            return Err(Error::AlreadyEnrolled);
        }
        let tx = db.conn.unchecked_transaction()?;
        set_meta(&tx, "relay_url", url)?;
        set_meta(&tx, "relay_token", token)?;
        set_meta(&tx, "relay_team", team)?;
        set_meta(&tx, "relay_cursor", "0")?;
        set_meta(&tx, "user", user)?;
        tx.commit()?;
        db.st.user = Some(user.into());
        Ok(())
    }

    /// The relay this device is enrolled with, if any.
    pub fn relay_settings(&self) -> Result<Option<RelaySettings>> {
        let db = self.lock();
        let (Some(url), Some(token), Some(team)) = (
            meta(&db.conn, "relay_url")?,
            meta(&db.conn, "relay_token")?,
            meta(&db.conn, "relay_team")?,
        ) else {
            return Ok(None);
        };
        Ok(Some(RelaySettings { url, token, team }))
    }

    /// Position in the team's feed up to which this device has pulled.
    pub fn relay_cursor(&self) -> Result<u64> {
        let db = self.lock();
        Ok(meta(&db.conn, "relay_cursor")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }

    /// Move the cursor from `from` to `to`, if it is still at `from`:
    /// `false` when another sync round moved it meanwhile (two rounds may
    /// run at once: live sync and a pull-to-refresh), which must not be
    /// undone — least of all a move back to the feed's start, after which
    /// the tasks this device may now read would never be fetched.
    pub fn move_relay_cursor(&self, from: u64, to: u64) -> Result<bool> {
        let db = self.lock();
        let now: u64 = meta(&db.conn, "relay_cursor")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if now != from {
            return Ok(false);
        }
        set_meta(&db.conn, "relay_cursor", &to.to_string())?;
        Ok(true)
    }

    /// The heads of a document as this device has it (empty if unknown).
    pub fn doc_heads(&self, doc_id: &str) -> Result<Vec<[u8; 32]>> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let mut doc = match st.docs.take(doc_id) {
            Some(d) => d,
            None => match docs::load(conn, doc_id, &st.actor)? {
                Some(d) => d,
                None => return Ok(Vec::new()),
            },
        };
        let heads = doc.get_heads().iter().map(|h| h.0).collect();
        st.docs.put(doc_id, doc);
        Ok(heads)
    }

    /// Whether the store was wiped because its device was revoked.
    pub fn was_wiped(&self) -> Result<bool> {
        Ok(meta(&self.lock().conn, "wiped")?.is_some())
    }

    /// Remote wipe: delete every task, document, outbox entry and setting,
    /// overwrite the freed pages, and forget the device's identity. What is
    /// left is an empty store that says it was wiped.
    pub fn wipe(&self) -> Result<()> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        st.docs.clear();
        st.set_team(None);
        st.user = None;
        conn.pragma_update(None, "secure_delete", "ON")?;
        let tx = conn.unchecked_transaction()?;
        for table in [
            "attention",
            "dismissed",
            "tasks",
            "outbox",
            "changes",
            "snapshots",
            "documents",
            "meta",
        ] {
            tx.execute(&format!("DELETE FROM {table}"), [])?;
        }
        let mut actor = [0u8; 16];
        rand::rng().fill_bytes(&mut actor);
        st.actor_hex = hex::encode(actor);
        st.actor = ActorId::from(actor.to_vec());
        set_meta(&tx, "actor", &st.actor_hex)?;
        set_meta(&tx, "wiped", "device revoked")?;
        // An empty index is derived under any rules.
        set_meta(&tx, "rules", crate::derive::RULES)?;
        tx.commit()?;
        conn.execute_batch("VACUUM")?;
        // The WAL still holds the deleted pages until it is emptied.
        super::empty_log(conn)
    }
}
