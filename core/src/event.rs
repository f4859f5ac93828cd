//! The append-only event list inside every task document.
//!
//! Each event is one JSON string in an automerge list: one insert op per
//! action, so a logged call costs about its own bytes on the wire. Events
//! carry their own causal links (`deps`, a Lamport time `lt`), so the state
//! derived from them does not depend on automerge history and survives a
//! redaction, which re-creates the document.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{CallAttempt, Handoff, Role, Timestamp, UserId};

/// `"<device actor hex>:<n>"`: the n-th event this device wrote in this task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub actor: String,
    pub n: u32,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.n)
    }
}

impl FromStr for EventId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (actor, n) = s.rsplit_once(':').ok_or("event id without ':'")?;
        let n = n.parse().map_err(|_| "event id with a bad counter")?;
        if actor.is_empty() || !actor.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("event id with a bad actor".into());
        }
        Ok(EventId {
            actor: actor.to_owned(),
            n,
        })
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One thing a person did to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    /// The events this one's author had seen that nothing else they had seen
    /// follows (the frontier of the event graph when it was written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<EventId>,
    /// Lamport time: one more than any event the author had seen.
    pub lt: u64,
    /// Wall-clock time on the author's phone.
    pub at: Timestamp,
    /// The user the author's device is enrolled for.
    pub by: UserId,
    #[serde(flatten)]
    pub action: Action,
}

/// What was done. Work events (started, checklist, call) are the ones an
/// approval covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Action {
    Created {
        handoff: Handoff,
        /// Instantiated from the SOP when the task was created.
        #[serde(default)]
        checklist: Vec<String>,
        #[serde(default)]
        questions: Vec<String>,
        /// The shared pool it waits in when nobody is assigned.
        pool: Option<Role>,
        assignee: Option<UserId>,
    },
    Assigned {
        to: UserId,
    },
    Acknowledged {
        /// The assignee's "repeat back" of the handoff.
        #[serde(default)]
        note: String,
    },
    Claimed,
    Started,
    ChecklistItemDone {
        item: u32,
    },
    CallLogged {
        attempt: CallAttempt,
    },
    Commented {
        text: String,
    },
    Submitted {
        #[serde(default)]
        note: String,
    },
    Approved {
        /// The task document's heads (hex change hashes) the reviewer saw.
        heads: Vec<String>,
        #[serde(default)]
        note: String,
    },
    Returned {
        feedback: String,
    },
    Completed {
        #[serde(default)]
        note: String,
    },
    Cancelled {
        reason: String,
    },
    Escalated {
        reason: String,
    },
}

impl Action {
    pub fn is_work(&self) -> bool {
        matches!(
            self,
            Action::Started | Action::ChecklistItemDone { .. } | Action::CallLogged { .. }
        )
    }

    /// A short, PHI-free name for logs and history lines.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Created { .. } => "created",
            Action::Assigned { .. } => "assigned",
            Action::Acknowledged { .. } => "acknowledged",
            Action::Claimed => "claimed",
            Action::Started => "started",
            Action::ChecklistItemDone { .. } => "checklist_item_done",
            Action::CallLogged { .. } => "call_logged",
            Action::Commented { .. } => "commented",
            Action::Submitted { .. } => "submitted",
            Action::Approved { .. } => "approved",
            Action::Returned { .. } => "returned",
            Action::Completed { .. } => "completed",
            Action::Cancelled { .. } => "cancelled",
            Action::Escalated { .. } => "escalated",
        }
    }
}

impl Event {
    /// This event with its free text removed (call notes and answers,
    /// comments, notes, feedback): what a redacted task keeps of it.
    pub fn scrubbed(&self) -> Event {
        const R: &str = "[redacted]";
        let mut e = self.clone();
        match &mut e.action {
            Action::CallLogged { attempt } => {
                attempt.notes = R.into();
                attempt.contact_used = None;
                for a in &mut attempt.answers {
                    a.answer = R.into();
                }
            }
            Action::Commented { text } => *text = R.into(),
            Action::Acknowledged { note }
            | Action::Submitted { note }
            | Action::Approved { note, .. }
            | Action::Completed { note } => *note = String::new(),
            Action::Returned { feedback } => *feedback = R.into(),
            _ => {}
        }
        e
    }

    /// The next event a device writes to a task: after every event it has
    /// seen (`deps` is their frontier, `lt` one more than the latest).
    pub fn next(
        events: &[Event],
        actor: &str,
        user: &str,
        now: Timestamp,
        action: Action,
    ) -> Event {
        Frontier::of(events).next(actor, user, now, action)
    }

    /// The order every replica folds events in: causal (Lamport), then the
    /// author's clock, then the id. Total and the same everywhere.
    pub fn order_key(&self) -> (u64, Timestamp, &str, u32) {
        (self.lt, self.at, self.id.actor.as_str(), self.id.n)
    }
}

/// The highest Lamport time a document may hold for an event (more events
/// than a task will ever see): one above it is skipped when read.
pub const MAX_LT: u64 = 1 << 40;

/// How far past the latest event the relay holds of a task a new event's
/// Lamport time may go. A phone's is one more than the latest it has seen,
/// more only where its own earlier events on the task were refused (kept
/// on the phone, never relayed). Unbounded, one hand-made event at
/// [`MAX_LT`] would leave the task no room after it: every later write is
/// clamped to the ceiling and refused as not coming after it.
pub const MAX_LT_STEP: u64 = 1 << 20;

/// The most events one task holds: far past any task's calls, comments
/// and checklist. Every device keeps a task's fold in memory, with a set
/// of ancestors per event (its size grows with the square of the count):
/// unbounded, one member's hand-made changes could make one task cost the
/// relay and every manager's phone hundreds of megabytes.
pub const MAX_TASK_EVENTS: usize = 2_000;

/// What a device's next event to a task builds on: the events no other
/// event follows, the latest Lamport time, and each author's last number.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    heads: Vec<EventId>,
    lt: u64,
    /// Each author device's highest event number.
    numbered: Vec<(String, u32)>,
}

impl Frontier {
    pub fn of(events: &[Event]) -> Frontier {
        // A sorted list, not a hash set: a task has tens of events, and
        // hashing every id of every write showed in the write's profile.
        let mut referenced: Vec<&EventId> = events.iter().flat_map(|e| e.deps.iter()).collect();
        referenced.sort_unstable();
        let mut heads: Vec<EventId> = events
            .iter()
            .map(|e| &e.id)
            .filter(|id| referenced.binary_search(id).is_err())
            .cloned()
            .collect();
        heads.sort();
        heads.dedup();
        let mut frontier = Frontier {
            heads,
            ..Frontier::default()
        };
        for e in events {
            frontier.count(e);
        }
        frontier
    }

    /// The event `actor`'s device writes next, after every event so far.
    pub fn next(&self, actor: &str, user: &str, now: Timestamp, action: Action) -> Event {
        let last_n = self
            .numbered
            .iter()
            .find(|(a, _)| a == actor)
            .map_or(0, |(_, n)| *n);
        Event {
            id: EventId {
                actor: actor.into(),
                n: last_n.saturating_add(1),
            },
            deps: self.heads.clone(),
            // Never past the most a document may hold: a write above it would
            // be stored, then skipped as unreadable. (Only a hand-made event
            // gets near it.) At the ceiling a new event may fold before
            // others; `FoldedTask::take` sees to that.
            lt: self.lt.saturating_add(1).min(MAX_LT),
            at: now,
            by: user.into(),
            action,
        }
    }

    /// Take in `e`, come after `before` (the events this frontier is of):
    /// what [`Frontier::of`] gives for them and `e`.
    pub fn advance(&mut self, before: &[Event], e: &Event) {
        self.heads.retain(|h| !e.deps.contains(h));
        let followed = before.iter().any(|x| x.deps.contains(&e.id));
        if !followed && !e.deps.contains(&e.id) {
            if let Err(at) = self.heads.binary_search(&e.id) {
                self.heads.insert(at, e.id.clone());
            }
        }
        self.count(e);
    }

    fn count(&mut self, e: &Event) {
        self.lt = self.lt.max(e.lt);
        match self.numbered.iter_mut().find(|(a, _)| *a == e.id.actor) {
            Some((_, n)) => *n = (*n).max(e.id.n),
            None => self.numbered.push((e.id.actor.clone(), e.id.n)),
        }
    }
}
