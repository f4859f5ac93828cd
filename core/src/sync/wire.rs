//! What travels between a device and the relay. Bodies are postcard (a
//! compact binary serde format): an edit costs about its own change bytes.
//! Errors come back as JSON (`{"code": ..., "message": ...}`) with a 4xx.
//!
//! No I/O here: the relay and the device engine both use these types.

use serde::{Deserialize, Serialize};

/// Content type of every binary body.
pub const CONTENT_TYPE: &str = "application/x-handoff-postcard";
/// Largest request body the relay accepts.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Largest single change the relay accepts.
pub const MAX_CHANGE: usize = 512 * 1024;
/// Most events new to the relay that one change may carry. The relay
/// judges each on the task its author saw, a derivation apiece; phones
/// write one per change, and split what they carry over (a migration to a
/// redacted task) into changes of at most this many of their own.
pub const MAX_NEW_EVENTS: usize = 16;
/// Change bytes a pull page carries at most. A phone whose pulls failed on
/// the way asks for less (`page=`): a link that drops long transfers may
/// carry a smaller page through.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// The least a phone asks a page (or a repair) to carry: each repair page
/// costs the relay a load of the document's history.
pub const MIN_PAGE_BYTES: usize = 16 * 1024;
/// Longest a pull may wait for new changes.
pub const MAX_WAIT_SECS: u64 = 60;

/// A change as it crosses the wire: only a plain change chunk, the form
/// phones and the relay send (`raw_bytes()`). A compressed chunk is refused
/// before automerge sees it: automerge inflates it whole, with no limit, so
/// 512 KB on the wire could take hundreds of MB before anything checks it.
pub fn decode_change(bytes: Vec<u8>) -> Option<automerge::Change> {
    /// The chunk type byte follows the magic bytes and the checksum.
    const CHUNK_TYPE_AT: usize = 8;
    const CHANGE_CHUNK: u8 = 1;
    if bytes.get(CHUNK_TYPE_AT) != Some(&CHANGE_CHUNK) {
        return None;
    }
    automerge::Change::from_bytes(bytes).ok()
}

/// One automerge change of one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocChange {
    pub doc: String,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// `POST /v1/push`: the device's outbox, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    pub changes: Vec<DocChange>,
}

/// One verdict per pushed change, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReply {
    pub verdicts: Vec<Verdict>,
    /// Where the newest change this push stored stands in the feed, and
    /// its tag; for a duplicate, where the relay has it (or will, once a
    /// commit under way ends); 0: neither. A phone whose pull has not yet passed
    /// it names it in its next pull (`pushed`, `pushed_at`): a relay
    /// restored from a backup taken before it lost the change.
    pub stored_at: u64,
    pub stored_tag: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Now in the team's feed.
    Stored,
    /// The relay already had it (a retried push).
    Duplicate,
    /// Not stored, and never will be: the device stops offering it.
    Refused { code: RefusalCode, reason: String },
}

/// Why the relay refused a change. Stable codes, shown to the author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The bytes are not an automerge change, or its events do not parse.
    InvalidChange,
    /// The change (or an event in it) was written by another device.
    ActorMismatch,
    /// This device may not write that document.
    Forbidden,
    /// The team's rules refuse it for this user's role (perhaps the role
    /// changed while the phone was offline).
    NotPermitted,
    /// It builds on a change the relay does not have (usually one it refused).
    MissingDependencies,
    /// Larger than [`MAX_CHANGE`].
    TooLarge,
    /// The task moved to a newer document (its patient details were
    /// removed): the relay keeps nothing of the older one. The device moves
    /// its events over when the newer document reaches it.
    Retired,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::InvalidChange => "invalid_change",
            RefusalCode::ActorMismatch => "actor_mismatch",
            RefusalCode::Forbidden => "forbidden",
            RefusalCode::NotPermitted => "not_permitted",
            RefusalCode::MissingDependencies => "missing_dependencies",
            RefusalCode::TooLarge => "too_large",
            RefusalCode::Retired => "retired",
        }
    }
}

/// `GET /v1/pull?cursor=N&at=T&wait=S`: changes after `cursor` that this
/// device may read. `cursor` in the reply is where to continue, and
/// `cursor_tag` the `at` to send with it: it names the feed entry there, so
/// that a relay restored from a backup (its entry at that seq another, or
/// none) knows the device followed another feed. A device that knows of
/// an entry past its cursor adds `pushed=P&pushed_at=T`, checked the same
/// way: where its push stored changes ([`PushReply::stored_at`]), or where
/// the page that began a re-read of the feed ended (the re-read sent its
/// cursor back to 0). `restarted` says the relay
/// did not know the device's cursor and started it over from the feed's
/// beginning: what the relay acknowledged of this device's may be lost
/// (`Store::relay_restarted`). `more` says another page is ready now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReply {
    pub changes: Vec<DocChange>,
    pub cursor: u64,
    pub cursor_tag: u32,
    pub restarted: bool,
    pub more: bool,
}

/// `POST /v1/repair`: a document arrived with gaps (it became visible to
/// this device, or the device lost changes). `have` are the device's heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    pub doc: String,
    pub have: Vec<[u8; 32]>,
}

/// Every change of the document not known to be behind `have`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReply {
    pub changes: Vec<serde_bytes::ByteBuf>,
}

/// `POST /v1/enrol` (JSON both ways): redeem a one-time invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    pub invite: String,
    /// The device's automerge actor id, hex.
    pub actor: String,
    /// The device's token, chosen by the phone (32 random bytes, 64 hex
    /// digits); the relay keeps only its hash. A phone whose enrolment
    /// reply was lost sends the same invite, actor and token again, and
    /// that token is what shows it is the phone that enrolled: the invite
    /// and the actor id are not secrets enough (the actor is in every
    /// event and in the team document). `None` from an app older than
    /// that: the relay makes the token and sends it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolReply {
    /// The token the relay made, for a request that brought none (an older
    /// app); `None` when the phone chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub team: String,
    pub user: String,
    pub role: crate::model::Role,
}

/// The JSON body of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Codes of error replies a device acts on.
pub mod codes {
    /// 401: the device was revoked. The device wipes its store.
    pub const DEVICE_REVOKED: &str = "device_revoked";
    /// 401: no such token.
    pub const INVALID_TOKEN: &str = "invalid_token";
    /// 403: the device's user is no longer an active member of the team
    /// (the admin revokes the device to have it wiped).
    pub const NOT_A_MEMBER: &str = "not_a_member";
    /// 426: the device derives tasks by other rules than the relay (another
    /// app version): its changes would mean something else to everyone
    /// else. Sync stops until the app is updated.
    pub const UPGRADE_REQUIRED: &str = "upgrade_required";
}

/// The header a phone names its rules' version in ([`crate::derive::RULES`])
/// on every request. A relay with other rules answers 426
/// [`codes::UPGRADE_REQUIRED`]; a request without it (tools) is served.
pub const RULES_HEADER: &str = "x-handoff-rules";

/// The header of a pull reply with more pages to come (`more`): how long
/// the team's feed was when the page was taken. A phone far behind (new,
/// or back after days away) tells its user how far it has come: `cursor`
/// of this many entries. Polls that are up to date do not carry it.
pub const FEED_LENGTH_HEADER: &str = "x-handoff-feed-length";

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pushed_change_costs_its_bytes_plus_its_document_id_and_a_few_more() {
        let push = PushRequest {
            changes: vec![DocChange {
                doc: "0123456789abcdef0123456789abcdef".into(),
                bytes: vec![7; 150],
            }],
        };
        let bytes = encode(&push);
        assert_eq!(bytes.len(), 150 + 32 + 4);
        assert_eq!(decode::<PushRequest>(&bytes).unwrap(), push);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(decode::<PushRequest>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    /// The plain form of a change decodes; the compressed form of the same
    /// change (which automerge itself would take) does not, nor does a
    /// compressed chunk that would inflate to 64 MB of zeros.
    #[test]
    fn only_plain_change_chunks_cross_the_wire() {
        use automerge::transaction::Transactable;
        use automerge::{AutoCommit, ROOT};
        let mut doc = AutoCommit::new();
        doc.put(
            ROOT,
            "note",
            "the patient will call back after lunch. ".repeat(40),
        )
        .unwrap();
        let mut change = doc.get_last_local_change().unwrap().clone();
        let plain = change.raw_bytes().to_vec();
        let compressed = change.bytes().to_vec();
        assert!(compressed.len() < plain.len(), "automerge compressed it");
        assert!(automerge::Change::from_bytes(compressed.clone()).is_ok());
        assert!(decode_change(compressed).is_none());
        assert_eq!(decode_change(plain).unwrap().hash(), change.hash());

        let mut bomb = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
        let deflated = {
            use std::io::Write;
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&vec![0u8; 64 << 20]).unwrap();
            e.finish().unwrap()
        };
        let mut len = deflated.len();
        while len >= 0x80 {
            bomb.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        bomb.push(len as u8);
        bomb.extend(deflated);
        assert!(bomb.len() < MAX_CHANGE);
        assert!(decode_change(bomb).is_none());
        assert!(decode_change(Vec::new()).is_none());
    }
}
