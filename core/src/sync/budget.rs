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

/// A budget as an app started again finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub bytes: usize,
    /// When the last loss was, on the wall clock (ms), if any.
    pub lost_at_ms: Option<i64>,
}

impl Kept {
    /// The push and page budgets as the store keeps them:
    /// `push:lost:page:lost`, `-` for no loss.
    pub fn write_pair(push: &Kept, page: &Kept) -> String {
        let lost = |k: &Kept| k.lost_at_ms.map_or("-".to_owned(), |t| t.to_string());
        format!(
            "{}:{}:{}:{}",
            push.bytes,
            lost(push),
            page.bytes,
            lost(page)
        )
    }

    /// [`Kept::write_pair`] read back; `None` if it does not read.
    pub fn read_pair(text: &str) -> Option<(Kept, Kept)> {
        let mut parts = text.split(':');
        let mut one = || {
            let bytes = parts.next()?.parse().ok()?;
            let lost_at_ms = match parts.next()? {
                "-" => None,
                t => Some(t.parse().ok()?),
            };
            Some(Kept { bytes, lost_at_ms })
        };
        let pair = (one()?, one()?);
        parts.next().is_none().then_some(pair)
    }
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

    /// What an app started again goes on from: the size, and when (on
    /// the wall clock, ms) the last loss was. `now` and `wall_ms` are the
    /// same moment on both clocks.
    pub fn kept(&self, now: Instant, wall_ms: i64) -> Kept {
        let st = *self.lock();
        Kept {
            bytes: st.bytes,
            lost_at_ms: st.last_loss.map(|at| {
                let ago = i64::try_from(now.saturating_duration_since(at).as_millis());
                wall_ms.saturating_sub(ago.unwrap_or(i64::MAX))
            }),
        }
    }

    /// Go on from what an earlier run of the app kept (each start of a
    /// background sync may be a new process), rather than relearn the
    /// size from the top one loss at a time: held for what is left of
    /// [`HELD_AFTER_LOSS`] since that run's last loss. A loss dated in the
    /// future (the clock was set back) counts as now.
    pub fn resume(&self, kept: &Kept, now: Instant, wall_ms: i64) {
        let mut st = self.lock();
        st.bytes = kept
            .bytes
            .clamp(MIN_TRANSFER_BYTES.min(self.most), self.most);
        st.last_loss = kept.lost_at_ms.and_then(|at| {
            let ago = Duration::from_millis(u64::try_from(wall_ms.saturating_sub(at)).unwrap_or(0));
            (ago < HELD_AFTER_LOSS).then(|| now.checked_sub(ago).unwrap_or(now))
        });
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
    fn resumed_it_is_held_for_what_is_left_of_the_hold() {
        let t0 = Instant::now();
        let wall = 1_800_000_000_000;
        let run = Budget::new(4 * MB);
        for _ in 0..6 {
            run.lost(t0);
        }
        let kept = run.kept(t0 + Duration::from_secs(60), wall);
        assert_eq!(kept.lost_at_ms, Some(wall - 60_000));
        let untouched = Budget::new(MB).kept(t0, wall);
        assert_eq!(untouched.lost_at_ms, None);
        let text = Kept::write_pair(&kept, &untouched);
        assert_eq!(Kept::read_pair(&text), Some((kept, untouched)));
        let push = kept;

        // Started again two minutes after that loss: three minutes held.
        let b = Budget::new(4 * MB);
        let t1 = t0 + Duration::from_secs(3600);
        b.resume(&push, t1, wall + 60_000);
        assert_eq!(b.bytes(), 64 * 1024);
        assert!(!b.carried(64 * 1024, t1 + Duration::from_secs(170)));
        assert!(b.carried(64 * 1024, t1 + Duration::from_secs(180)));
        // Started again long after: not held at all.
        b.resume(&push, t1, wall + 3_600_000);
        assert!(b.carried(64 * 1024, t1));
        // A loss dated in the future counts as now.
        b.resume(&push, t1, wall - 3_600_000);
        assert!(!b.carried(64 * 1024, t1 + Duration::from_secs(1)));
        // Whatever was stored, within bounds.
        for (bytes, within) in [(0, MIN_TRANSFER_BYTES), (usize::MAX, 4 * MB)] {
            b.resume(
                &Kept {
                    bytes,
                    lost_at_ms: None,
                },
                t1,
                wall,
            );
            assert_eq!(b.bytes(), within);
        }
        assert_eq!(Kept::read_pair("1:2:3"), None);
        assert_eq!(Kept::read_pair("1:-:3:-:5"), None);
    }
}
