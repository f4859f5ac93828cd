//! The core's error: rich, for the core and its tests. The bindings map it to
//! a small public error in one place.

use crate::derive::Refusal;
use crate::model::TaskId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not open the file, or the file is not a Handoff store.
    #[error("the store key is wrong, or the file is not a Handoff store")]
    WrongKey,
    /// A rule of the clinic refused the action; nothing was written.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("no task {0} on this device")]
    TaskNotFound(TaskId),
    #[error("task {0} is archived on this device")]
    Archived(TaskId),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("this device is not part of a team yet")]
    NotEnrolled,
    #[error("this device already belongs to a team")]
    AlreadyEnrolled,
    #[error("an incoming change is not valid: {0}")]
    InvalidChange(String),
    #[error("the store was written by a newer app (schema {0})")]
    SchemaTooNew(i64),
    #[error("the store is damaged: {0}")]
    Corrupt(&'static str),
    /// The relay could not be reached (no signal, relay down, timeout).
    /// Nothing is lost: the outbox keeps everything for the next try.
    #[error("cannot reach the relay: {0}")]
    Offline(String),
    /// The relay answered with an error.
    #[error("the relay refused the request ({status} {code}): {message}")]
    Relay {
        status: u16,
        code: String,
        message: String,
    },
    /// The relay says this device was revoked; the local store was wiped.
    #[error("this device was revoked; its data has been wiped")]
    DeviceRevoked,
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("document: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
}
