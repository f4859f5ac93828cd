//! WAL checkpoints off the write path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold: that one write copies a thousand pages into the database file
//! and syncs it twice, and on the store benchmark checkpoints made up about
//! a third of a logged call's time. Here the commit that crosses the
//! threshold only wakes a thread with its own connection, which copies the
//! log back (PASSIVE: it never waits for the writer, nor the writer for it).
//! A commit is durable in the WAL either way: what a returned write
//! guarantees does not change.
//!
//! The log starts over only when a write begins after everything in it was
//! copied. When writes are sparse (a phone in a clinic), the next write
//! after the thread's pass does that by itself. When they come back to back,
//! the first commit after the pass copies the few pages written during it,
//! in its own commit, so that the next write can start the log over.
//! Whatever happens to the thread, the writer checkpoints in its commit once
//! the log reaches [`INLINE_AT_FRAMES`], as SQLite would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::Connection;

use crate::error::Result;

/// WAL frames (pages) that wake the checkpoint thread: SQLite's own
/// autocheckpoint default.
pub(crate) const WAKE_AT_FRAMES: i32 = 1000;

/// WAL frames at which the writer checkpoints in its own commit whatever the
/// thread is doing (about 40 MB of log at 4 KiB pages).
pub(crate) const INLINE_AT_FRAMES: i32 = 10_000;

/// The thread that checkpoints the store's WAL. Dropped after the writer's
/// connection, which owns the only sender: the thread then ends.
pub(crate) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Start the thread on `own` (a second connection to the same store) and
    /// hook the writer's commits to it. `None` when no thread can be started:
    /// the writer then keeps SQLite's checkpoint in its commits.
    pub(crate) fn start(writer: &mut Connection, own: Connection) -> Result<Option<Checkpointer>> {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let idle = Arc::new(AtomicBool::new(true));
        let thread_idle = Arc::clone(&idle);
        let Ok(thread) = std::thread::Builder::new()
            .name("handoff-checkpoint".into())
            .spawn(move || run(own, woken, thread_idle))
        else {
            return Ok(None);
        };
        let mut writer_side = Commits {
            wake,
            idle,
            woke_at: None,
        };
        writer.wal_hook(Some(move |wal: &mut Wal, frames| {
            writer_side.committed(wal, frames);
            // An error here would make the caller think its write failed,
            // though it committed: never return one.
            Ok(())
        }))?;
        Ok(Some(Checkpointer {
            thread: Some(thread),
        }))
    }
}

/// The writer's side: called after each commit with the log's length.
struct Commits {
    wake: mpsc::SyncSender<()>,
    /// False while the thread is on a pass.
    idle: Arc<AtomicBool>,
    /// The log's length when the thread was last woken, until the log
    /// starts over.
    woke_at: Option<i32>,
}

impl Commits {
    fn committed(&mut self, wal: &mut Wal, frames: i32) {
        if frames >= INLINE_AT_FRAMES {
            self.inline(wal);
            return;
        }
        match self.woke_at {
            Some(at) if frames < at => {
                // The log started over.
                self.woke_at = None;
            }
            Some(_) if self.idle.load(Ordering::Acquire) => {
                // The pass is done, but this write began before it ended, so
                // the log went on growing: copy what was written since.
                self.inline(wal);
            }
            Some(_) => {}
            None if frames >= WAKE_AT_FRAMES => {
                self.idle.store(false, Ordering::Release);
                if self.wake.try_send(()).is_ok() {
                    self.woke_at = Some(frames);
                } else {
                    // The thread is gone; SQLite's way, in this commit.
                    self.inline(wal);
                }
            }
            None => {}
        }
    }

    fn inline(&mut self, wal: &mut Wal) {
        // A failed checkpoint leaves the frames in the log, where they are
        // durable; a later commit tries again.
        let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
        self.woke_at = None;
    }
}

fn run(conn: Connection, woken: Receiver<()>, idle: Arc<AtomicBool>) {
    while woken.recv().is_ok() {
        // A failure (a full disk, say) leaves the frames in the log, where
        // they are durable; the writer copies them itself if it comes to that.
        let _ = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE);
        idle.store(true, Ordering::Release);
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
