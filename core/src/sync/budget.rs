//! How much one transfer may carry on the link the phone has now. No I/O
//! here: the engine says what went through and what was lost on the way.
//!
//! A link that drops every connection after so many seconds or bytes cuts
//! a long transfer at the same point every time, so retrying it as it was
//! never gets through. Each transfer lost on the way halves the budget,
//! down to [`MIN_TRANSFER_BYTES`] (or one change). A transfer that used
//! half of its budget or more doubles it again (a short one shows nothing
//! of what the link carries), but only once [`HELD_AFTER_LOSS`] has passed
//! since the last loss: on a link that carries `b` but not `2b`, growing
//! back to `2b` after every success would fail every other transfer, and
//! every round with it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use super::wire::MIN_PAGE_BYTES as MIN_TRANSFER_BYTES;

/// How long after a loss the budget stays where the loss left it: the
/// signal may have got better since.
pub const HELD_AFTER_LOSS: Duration = Duration::from_secs(5 * 60);

pub struct Budget {
    most: usize,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    bytes: usize,
    last_loss: Option<Instant>,
}

impl Budget {
    /// A budget that starts at, and grows back to, `most`.
    pub fn new(most: usize) -> Budget {
        Budget {
            most,
            state: Mutex::new(State {
                bytes: most,
                last_loss: None,
            }),
        }
    }

    /// What the next transfer may carry.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether the budget is below where it started.
    pub fn reduced(&self) -> bool {
        self.bytes() < self.most
    }

    /// A transfer of `used` bytes went through. Returns whether the
    /// budget changed.
    pub fn carried(&self, used: usize, now: Instant) -> bool {
        let mut st = self.lock();
        let held = st
            .last_loss
            .is_some_and(|at| now.saturating_duration_since(at) < HELD_AFTER_LOSS);
        let before = st.bytes;
        if !held && used.saturating_mul(2) >= st.bytes {
            st.bytes = st.bytes.saturating_mul(2).min(self.most);
        }
        st.bytes != before
    }

    /// A transfer was lost on the way: it broke or stalled while bytes
    /// moved (not one that never reached the relay, nor the relay's own
    /// answer). Returns whether the budget changed.
    pub fn lost(&self, now: Instant) -> bool {
        let mut st = self.lock();
        st.last_loss = Some(now);
        let before = st.bytes;
        st.bytes = (st.bytes / 2).max(MIN_TRANSFER_BYTES);
        st.bytes != before
    }

    /// Go on from `bytes`, found by an earlier run of the app (each start
    /// of a background sync may be a new process): held there as after a
    /// loss now, rather than relearnt from the top one loss at a time.
    pub fn resume(&self, bytes: usize, now: Instant) {
        let mut st = self.lock();
        st.bytes = bytes.clamp(MIN_TRANSFER_BYTES.min(self.most), self.most);
        if st.bytes < self.most {
            st.last_loss = Some(now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1024 * 1024;

    #[test]
    fn each_loss_halves_it_down_to_the_floor() {
        let b = Budget::new(4 * MB);
        let now = Instant::now();
        assert!(!b.reduced());
        b.lost(now);
        assert_eq!(b.bytes(), 2 * MB);
        assert!(b.reduced());
        for _ in 0..20 {
            b.lost(now);
        }
        assert_eq!(b.bytes(), MIN_TRANSFER_BYTES);
    }

    #[test]
    fn it_stays_down_for_a_while_after_a_loss_then_grows_with_full_transfers() {
        let b = Budget::new(4 * MB);
        let t0 = Instant::now();
        b.lost(t0);
        b.lost(t0);
        assert_eq!(b.bytes(), MB);
        b.carried(MB, t0 + HELD_AFTER_LOSS - Duration::from_secs(1));
        assert_eq!(b.bytes(), MB, "2 MB failed moments ago");
        let later = t0 + HELD_AFTER_LOSS;
        b.carried(MB / 2 - 1, later);
        assert_eq!(b.bytes(), MB, "a short transfer shows nothing");
        b.carried(MB / 2, later);
        assert_eq!(b.bytes(), 2 * MB);
        b.carried(2 * MB, later);
        b.carried(4 * MB, later);
        assert_eq!(b.bytes(), 4 * MB, "never past where it started");
    }

    #[test]
    fn resumed_it_is_held_where_it_was_then_grows() {
        let b = Budget::new(4 * MB);
        let t0 = Instant::now();
        b.resume(64 * 1024, t0);
        assert_eq!(b.bytes(), 64 * 1024);
        assert!(!b.carried(64 * 1024, t0 + Duration::from_secs(1)));
        assert!(b.carried(64 * 1024, t0 + HELD_AFTER_LOSS));
        assert_eq!(b.bytes(), 128 * 1024);
        // Whatever was stored, within bounds.
        b.resume(0, t0);
        assert_eq!(b.bytes(), MIN_TRANSFER_BYTES);
        b.resume(usize::MAX, t0);
        assert!(!b.reduced());
    }
}
