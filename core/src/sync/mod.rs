//! Sync with the relay: the wire format ([`wire`]) and the device's engine
//! ([`SyncEngine`]), which runs on the core's own background runtime.

mod budget;
mod engine;
pub mod wire;

pub use engine::{check_relay_url, SyncEngine, SyncEvent, SyncHandle, SyncListener, SyncReport};
