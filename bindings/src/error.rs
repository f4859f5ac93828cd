//! The one public error of the bindings, and the one place the core's rich
//! error is mapped to it. Each variant is something an app can act on; none
//! carries patient data (the core's messages name users and fields, never a
//! patient).

use handoff_core::Error;

/// What went wrong, as the apps see it. Kotlin: `HandoffException.*`;
/// Swift: `HandoffError.*`. `userMessage()` gives a sentence to show.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum HandoffError {
    /// The store key does not open the file (or it is not a Handoff store).
    /// Nothing was changed. The key must come from the same Keystore/Keychain
    /// entry that created the store.
    #[error("the store key is wrong, or the file is not a Handoff store")]
    WrongKey,
    /// A rule of the clinic refused the action; nothing was written.
    /// `code` is stable (e.g. `already_taken`, `not_permitted`).
    #[error("{reason}")]
    Refused { code: String, reason: String },
    /// The task is not on this device (never synced here, or archived).
    #[error("{reason}")]
    TaskNotFound { task_id: String, reason: String },
    /// A field the user filled in is not acceptable.
    #[error("{reason}")]
    InvalidInput { reason: String },
    /// The device has not redeemed an invite yet, or already has.
    #[error("{reason}")]
    Enrolment { reason: String },
    /// The relay cannot be reached. Nothing is lost: the work waits in the
    /// outbox and goes with the next sync.
    #[error("{reason}")]
    Offline { reason: String },
    /// The relay answered with an error (`code`, e.g. `invite_expired`).
    #[error("{reason}")]
    RelayRejected {
        status: u16,
        code: String,
        reason: String,
    },
    /// This device was revoked by the practice; its data has been wiped.
    #[error("this device was removed from the team; its data has been wiped")]
    DeviceRevoked,
    /// The store on this device cannot be used (damaged, or written by a
    /// newer app). Support, not the user, can fix this.
    #[error("{reason}")]
    Storage { reason: String },
}

#[uniffi::export]
impl HandoffError {
    /// A sentence to show the user.
    pub fn user_message(&self) -> String {
        self.to_string()
    }

    /// Whether syncing is over until someone acts (enrol again, update the
    /// app): what live sync reports as `AuthFailed` or `Revoked` and stops
    /// on. The apps show a `syncNow` that failed this way as the same.
    pub fn ends_sync(&self) -> bool {
        match self {
            HandoffError::DeviceRevoked => true,
            HandoffError::RelayRejected { status, code, .. } => Error::Relay {
                status: *status,
                code: code.clone(),
                message: String::new(),
            }
            .ends_sync(),
            _ => false,
        }
    }
}

impl From<Error> for HandoffError {
    fn from(e: Error) -> Self {
        let reason = e.to_string();
        match e {
            Error::WrongKey => HandoffError::WrongKey,
            Error::Refused(refusal) => HandoffError::Refused {
                code: refusal.code(),
                reason: refusal.to_string(),
            },
            Error::TaskNotFound(task_id) | Error::Archived(task_id) => {
                HandoffError::TaskNotFound { task_id, reason }
            }
            Error::InvalidInput(_) => HandoffError::InvalidInput { reason },
            Error::NotEnrolled | Error::AlreadyEnrolled => HandoffError::Enrolment { reason },
            Error::Offline(_) => HandoffError::Offline { reason },
            Error::Relay {
                status,
                code,
                message,
            } => HandoffError::RelayRejected {
                status,
                code,
                reason: message,
            },
            Error::DeviceRevoked => HandoffError::DeviceRevoked,
            Error::InvalidChange(_)
            | Error::SchemaTooNew(_)
            | Error::Corrupt(_)
            | Error::Sqlite(_)
            | Error::Automerge(_)
            | Error::Json(_) => HandoffError::Storage { reason },
        }
    }
}

pub type Result<T, E = HandoffError> = std::result::Result<T, E>;
