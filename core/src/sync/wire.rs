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
/// Longest a pull may wait for new changes.
pub const MAX_WAIT_SECS: u64 = 60;

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

/// `GET /v1/pull?cursor=N&wait=S`: changes after `cursor` that this device
/// may read. `cursor` in the reply is where to continue; `more` says another
/// page is ready now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReply {
    pub changes: Vec<DocChange>,
    pub cursor: u64,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolReply {
    pub token: String,
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
}

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
}
