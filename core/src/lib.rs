#![doc = include_str!("../README.md")]

pub mod access;
pub mod clock;
pub mod derive;
mod error;
pub mod event;
pub mod input;
pub mod model;
pub mod store;
pub mod sync;
pub mod task_doc;
pub mod team;

pub use clock::{Clock, ManualClock, SystemClock};
pub use derive::{Outcome, Refusal, TaskState, TaskStatus};
pub use error::{Error, Result};
pub use event::{Action, Event, EventId};
pub use model::*;
pub use store::{
    AttentionItem, Escalation, MyQueue, OwnerKpis, ReviewItem, TaskCommand, TaskDetail, TaskSummary,
};
pub use store::{
    Durability, FeedCursor, MergeReport, NewTask, OpenProgress, OutgoingChange, RelaySettings,
    Released, Store, StoreOptions,
};
pub use sync::{SyncEngine, SyncEvent, SyncHandle, SyncListener, SyncReport};
pub use team::Team;
