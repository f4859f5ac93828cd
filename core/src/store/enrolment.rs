//! What the store keeps for sync: the relay it is enrolled with, its token
//! and cursor, and the remote wipe.

use automerge::ActorId;
use rand::RngCore;

use std::collections::{BTreeSet, HashSet};

use rusqlite::params;

use super::{docs, meta, set_meta, Db, Store};
use crate::error::{Error, Result};
use crate::sync::wire::RefusalCode;
use crate::task_doc::split_doc_id;

/// Where this device syncs, as saved at enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    pub url: String,
    pub token: String,
    pub team: String,
}

/// How many times a document is offered again while some of its changes
/// build on a change the relay lacks (see [`Store::offered_again`]).
pub const MAX_OFFERS: u32 = 8;

/// Offers of a document on news that does not count as a try (another
/// member's edit, the team's news) that cost one try: a document is
/// offered again at most `MAX_OFFERS * OFFERS_PER_TRY` times in all.
pub const OFFERS_PER_TRY: u32 = 4;

/// How long after a relay was found restored from a backup a change it
/// refuses for what its team document says (`not_permitted`,
/// `forbidden`) is held rather than set aside: the devices that hold the
/// team changes it lost offer them again when they next sync, and an
/// admin's phone may be away over a long weekend.
pub const RESTORE_WINDOW_MS: i64 = 7 * 24 * 3_600_000;

/// What [`Store::release_held`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Held changes set aside (each changes its task on this phone).
    pub set_aside: usize,
    /// This device's later changes written again on what is left (to push).
    pub written_again: usize,
    /// Of those, how many had been refused for building on a held change:
    /// no longer refused.
    pub taken_back: usize,
}

/// How offering a document's changes again went
/// ([`Store::changes_to_offer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// The relay took or had every change of this device's (others' it
    /// refused are let be).
    All,
    /// Some change was still refused. `counts`: in a round that pulled
    /// news of the document itself (one with only the team's does not
    /// count against the tries).
    NotAll { counts: bool },
}

/// A change to offer a relay restored from a backup
/// ([`Store::changes_to_offer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeToOffer {
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
    /// The relay acknowledged it once (it is not in the outbox).
    pub sent: bool,
    /// This device wrote it. Otherwise another device, or the relay, did:
    /// a change of a redacted task's document, which the relay takes again
    /// from any phone if it noted it before (its author's phone may be
    /// lost, and the relay's own change is held only by phones).
    pub mine: bool,
}

/// Where this device is in the relay's feed: the seq it has pulled up to,
/// and the tag the relay named that entry by (0: none yet), which tells a
/// relay restored from a backup that the device followed another feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedCursor {
    pub seq: u64,
    pub tag: u32,
}

impl FeedCursor {
    /// As kept in `meta`: `seq` or `seq:tag`. Unreadable reads as the
    /// feed's start (pulling it all again is harmless).
    fn read(kept: Option<&str>) -> FeedCursor {
        let Some(kept) = kept else {
            return FeedCursor::default();
        };
        let (seq, tag) = kept.split_once(':').unwrap_or((kept, "0"));
        match (seq.parse(), tag.parse()) {
            (Ok(seq), Ok(tag)) => FeedCursor { seq, tag },
            _ => FeedCursor::default(),
        }
    }

    fn written(&self) -> String {
        format!("{}:{}", self.seq, self.tag)
    }
}

/// Keep `at` as the furthest feed entry this device knows the relay had
/// ([`Store::relay_known_entry`]), if it is further than the one kept.
fn note_known(conn: &rusqlite::Connection, at: FeedCursor) -> Result<FeedCursor> {
    let kept = FeedCursor::read(meta(conn, "relay_pushed")?.as_deref());
    if at.seq > kept.seq {
        set_meta(conn, "relay_pushed", &at.written())?;
        return Ok(at);
    }
    Ok(kept)
}

/// Send the cursor back to the feed's start (a re-read), keeping where it
/// stood: a relay restored from a backup taken before then is found out
/// while the cursor climbs back, and even at 0, where the cursor itself
/// names no entry to check.
pub(super) fn rewind_cursor(tx: &rusqlite::Connection) -> Result<()> {
    let stood = FeedCursor::read(meta(tx, "relay_cursor")?.as_deref());
    note_known(tx, stood)?;
    set_meta(tx, "relay_cursor", "0")
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
        set_meta(&tx, "relay_pushed", "0")?;
        set_meta(&tx, "user", user)?;
        tx.execute(
            "DELETE FROM meta WHERE key IN ('enrol_token', 'enrol_for')",
            [],
        )?;
        tx.commit()?;
        db.st.user = Some(user.into());
        Ok(())
    }

    /// The token this device offers when it enrols with `invite` at the
    /// relay at `url`: made (32 random bytes, hex) and kept at the first
    /// attempt, so that every retry of that enrolment, even after a
    /// restart, offers the same one. Another address or invite (a mistyped
    /// host, the wrong clinic's invite) gets a new token: whoever answered
    /// there never holds the one the right relay binds. Forgotten once the
    /// enrolment is saved (it is the relay token then), and by a wipe.
    pub fn enrolment_token(&self, url: &str, invite: &str) -> Result<String> {
        let db = self.lock();
        let attempt = format!("{url}\n{invite}");
        if meta(&db.conn, "enrol_for")?.as_deref() == Some(attempt.as_str()) {
            if let Some(token) = meta(&db.conn, "enrol_token")? {
                return Ok(token);
            }
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let tx = db.conn.unchecked_transaction()?;
        set_meta(&tx, "enrol_token", &token)?;
        set_meta(&tx, "enrol_for", &attempt)?;
        tx.commit()?;
        Ok(token)
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
    pub fn relay_cursor(&self) -> Result<FeedCursor> {
        let db = self.lock();
        Ok(FeedCursor::read(meta(&db.conn, "relay_cursor")?.as_deref()))
    }

    /// Move the cursor from `from` to `to`, if it is still at `from`:
    /// `false` when another sync round moved it meanwhile (two rounds may
    /// run at once: live sync and a pull-to-refresh), which must not be
    /// undone — least of all a move back to the feed's start, after which
    /// the tasks this device may now read would never be fetched.
    pub fn move_relay_cursor(&self, from: FeedCursor, to: FeedCursor) -> Result<bool> {
        let reread = self.rereading()?;
        self.move_relay_cursor_over(from, to, reread, &BTreeSet::new())
    }

    /// [`Store::move_relay_cursor`] past a page that brought changes to
    /// `docs`, by a round that read the cursor while `reread` was the
    /// re-read of the feed under way ([`Store::rereading`]): `false` also
    /// when another began or ended since (a page asked for at cursor 0 by
    /// a round that started before the re-read started over is not part
    /// of it). During a re-read the page's documents are noted as sent, in
    /// the same transaction, so that a re-read spread over several rounds
    /// knows at its end what the relay sent ([`Store::finish_reread`]).
    pub fn move_relay_cursor_over(
        &self,
        from: FeedCursor,
        to: FeedCursor,
        reread: Option<u64>,
        docs: &BTreeSet<String>,
    ) -> Result<bool> {
        let db = self.lock();
        let tx = db.conn.unchecked_transaction()?;
        let now = FeedCursor::read(meta(&tx, "relay_cursor")?.as_deref());
        if now != from || super::reread_under_way(&tx)? != reread {
            return Ok(false);
        }
        set_meta(&tx, "relay_cursor", &to.written())?;
        if reread.is_some() {
            let mut note =
                tx.prepare_cached("INSERT OR IGNORE INTO reread (doc_id) VALUES (?1)")?;
            for doc in docs {
                note.execute([doc])?;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    /// The furthest feed entry this device knows the relay had: the newest
    /// a push of its stored (see [`crate::sync::wire::PushReply::stored_at`]),
    /// or where its cursor stood when a re-read of the feed sent it back
    /// to the start. A pull whose cursor is below it names it (`pushed`),
    /// and a relay restored from a backup taken before it says so.
    pub fn relay_known_entry(&self) -> Result<FeedCursor> {
        let db = self.lock();
        Ok(FeedCursor::read(meta(&db.conn, "relay_pushed")?.as_deref()))
    }

    /// The relay's feed had `at` (a push stored changes up to it, or a
    /// page that began a re-read ended there): kept if further than the
    /// last ([`Store::relay_known_entry`]). Returns the entry now kept.
    pub fn note_known_entry(&self, at: FeedCursor) -> Result<FeedCursor> {
        note_known(&self.lock().conn, at)
    }

    /// What the sync engine last found one push and one page may carry on
    /// this phone's link, as it wrote it (`sync::budget::Kept`): an app
    /// started again on a link that drops long transfers goes on from
    /// there.
    pub fn transfer_budgets(&self) -> Result<Option<String>> {
        meta(&self.lock().conn, "transfer_budgets")
    }

    /// Keep the engine's budgets; not in a wiped store, which stays empty
    /// (a round still under way when another wiped it).
    pub fn save_transfer_budgets(&self, text: &str) -> Result<()> {
        let db = self.lock();
        if meta(&db.conn, "wiped")?.is_none() {
            set_meta(&db.conn, "transfer_budgets", text)?;
        }
        Ok(())
    }

    /// The relay did not know this device's cursor: it was restored from a
    /// backup, and may have lost changes it had acknowledged, which this
    /// device took off its outbox. Every document this device holds is to
    /// be offered again ([`Store::changes_to_offer`]); the relay stores what it
    /// lacks and answers the rest as duplicates. Returns how many.
    pub fn relay_restarted(&self) -> Result<usize> {
        let db = self.lock();
        let tx = db.conn.unchecked_transaction()?;
        // What it pushed before is offered again, and stored anew; the
        // entries its cursor and pushes named were of the lost feed (a
        // re-read begun on this restarted page must not name them).
        set_meta(&tx, "relay_pushed", "0")?;
        set_meta(&tx, "relay_cursor", "0")?;
        set_meta(&tx, "relay_restored_at", &db.st.clock.now().to_string())?;
        // A re-read under way drops nothing: the relay may just have lost
        // what it does not send.
        super::end_reread(&tx)?;
        let marked = tx.execute(
            "INSERT OR IGNORE INTO offer_again (doc_id) SELECT doc_id FROM documents",
            [],
        )?;
        tx.commit()?;
        Ok(marked)
    }

    /// Whether the relay was found restored from a backup within
    /// [`RESTORE_WINDOW_MS`] of now, by this phone's clock: a change it
    /// refuses for what its team document says may need a team change it
    /// lost, and is held.
    pub fn restore_known(&self) -> Result<bool> {
        let db = self.lock();
        let Some(at) = meta(&db.conn, "relay_restored_at")?.and_then(|t| t.parse::<i64>().ok())
        else {
            return Ok(false);
        };
        let now = db.st.clock.now();
        // Seen with a clock set ahead, since put right: counted from now,
        // not kept for as long as the clock was ahead.
        if at > now {
            set_meta(&db.conn, "relay_restored_at", &now.to_string())?;
            return Ok(true);
        }
        Ok(now.saturating_sub(at) < RESTORE_WINDOW_MS)
    }

    /// The documents to offer the relay again, the team's first, each with
    /// how many offers had changes refused.
    pub fn to_offer_again(&self) -> Result<Vec<(String, u32)>> {
        let db = self.lock();
        let mut stmt = db.conn.prepare_cached(
            "SELECT doc_id, attempts FROM offer_again ORDER BY doc_id <> ?1, doc_id",
        )?;
        let rows = stmt.query_map([docs::TEAM_DOC], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Every change this device wrote to a document, and with `restored`
    /// (a restore is known) every other change of a redacted task's
    /// document (a later generation: see [`ChangeToOffer::mine`]), in an
    /// order the relay can take them (each after what it builds on); none
    /// if the document is gone.
    pub fn changes_to_offer(&self, doc_id: &str, restored: bool) -> Result<Vec<ChangeToOffer>> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let Some(mut doc) = docs::take_or_load(&mut st.docs, conn, doc_id, &st.actor)? else {
            return Ok(Vec::new());
        };
        let queued: HashSet<Vec<u8>> = conn
            .prepare_cached("SELECT hash FROM outbox WHERE doc_id = ?1")?
            .query_map([doc_id], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        let others_too = restored && split_doc_id(doc_id).1 > 0;
        let offer = doc
            .get_changes(&[])
            .into_iter()
            .map(|c| (*c.actor_id() == st.actor, c))
            .filter(|&(mine, _)| mine || others_too)
            .map(|(mine, c)| ChangeToOffer {
                hash: c.hash().0,
                bytes: c.raw_bytes().to_vec(),
                sent: !queued.contains(&c.hash().0[..]),
                mine,
            })
            .collect();
        st.docs.put(doc_id, doc);
        Ok(offer)
    }

    /// A document was offered again. [`Offered::All`]: the relay took or
    /// had every change of this device's; the document is done, and its outbox rows refused
    /// for what they built on (which the relay may now have) are queued
    /// again, once. Otherwise some change was refused (it builds on
    /// another device's lost change, which that device will offer again,
    /// or needs a lost team change): the document is offered again after
    /// later news, for [`MAX_OFFERS`] tries: an offer that `counts` (the
    /// engine decides which do) is a whole try, any other a quarter of one
    /// ([`OFFERS_PER_TRY`]).
    /// Changes held
    /// for what the team says are queued again with the rest once all is
    /// taken (and set aside by [`Store::release_held`] when the tries run
    /// out). Returns whether outbox rows were queued again.
    pub fn offered_again(&self, doc_id: &str, offered: Offered) -> Result<bool> {
        let db = self.lock();
        let tx = db.conn.unchecked_transaction()?;
        let mut queued = 0;
        match offered {
            Offered::All => {
                tx.execute("DELETE FROM offer_again WHERE doc_id = ?1", [doc_id])?;
                queued = tx.execute(
                    "UPDATE outbox
                     SET refused_code = NULL, refused_reason = NULL, offered_again = 1, held = 0
                     WHERE doc_id = ?1 AND offered_again = 0 AND (refused_code = ?2 OR held = 1)",
                    params![doc_id, RefusalCode::MissingDependencies.as_str()],
                )?;
            }
            // Tried once at least: offered again only after news.
            Offered::NotAll { counts } => {
                tx.execute(
                    "UPDATE offer_again SET attempts = attempts + ?2 WHERE doc_id = ?1",
                    params![doc_id, if counts { OFFERS_PER_TRY } else { 1 }],
                )?;
                tx.execute(
                    "DELETE FROM offer_again WHERE doc_id = ?1 AND attempts >= ?2",
                    params![doc_id, MAX_OFFERS * OFFERS_PER_TRY],
                )?;
            }
        }
        tx.commit()?;
        Ok(queued > 0)
    }

    /// Changes of a document offered again that the relay took (stored, or
    /// had) though the phone holds them refused or held: the relay has them
    /// now (what they needed came back). Queued again, so that the next
    /// push marks them delivered; never set aside. Returns whether rows
    /// were queued again.
    pub fn taken_on_offer(&self, doc_id: &str, hashes: &[[u8; 32]]) -> Result<bool> {
        let db = self.lock();
        let tx = db.conn.unchecked_transaction()?;
        let mut queued = 0;
        {
            let mut take = tx.prepare_cached(
                "UPDATE outbox
                 SET refused_code = NULL, refused_reason = NULL, offered_again = 1, held = 0
                 WHERE doc_id = ?1 AND hash = ?2 AND (held = 1 OR refused_code IS NOT NULL)",
            )?;
            for hash in hashes {
                queued += take.execute(params![doc_id, &hash[..]])?;
            }
        }
        tx.commit()?;
        Ok(queued > 0)
    }

    /// The heads of a document as this device has it (empty if unknown).
    pub fn doc_heads(&self, doc_id: &str) -> Result<Vec<[u8; 32]>> {
        let mut db = self.lock();
        let Db { conn, st } = &mut *db;
        let Some(mut doc) = docs::take_or_load(&mut st.docs, conn, doc_id, &st.actor)? else {
            return Ok(Vec::new());
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
        // Every table the schema has, so that a table added later is not
        // left out (the re-read list once was).
        let tables: Vec<String> = tx
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for table in tables {
            tx.execute(&format!("DELETE FROM \"{table}\""), [])?;
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
