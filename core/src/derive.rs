//! Task state, derived from the event list. Pure: the same events and the
//! same team give the same state on every device and on the relay.
//!
//! Rules for concurrent actions (documented in ARCHITECTURE.md):
//! - Events are folded in [`Event::order_key`] order: Lamport time, then the
//!   author's clock, then the event id. Causally later events always fold
//!   later.
//! - Two claims of one pooled task: the first in that order wins; the other
//!   is refused with "X already has this task" and lands in its author's
//!   needs-attention view.
//! - A manager's assignment concurrent with a claim overrides the claim (the
//!   claim is superseded, its author told).
//! - An approval covers the work its reviewer had seen. Work concurrent with
//!   it (logged on a phone that had not seen the approval) is kept, and the
//!   approval becomes stale: the task goes back to "submitted" for review.
//! - Work causally after completion or cancellation, or concurrent with a
//!   cancellation, is refused (kept in the history, shown to its author).
//!
//! - Work logged by the assignee concurrent with a reassignment is kept: the
//!   call happened. (The door judged it on the task its author saw.) Their
//!   submission or completion concurrent with it does not stand, in either
//!   order ("the task was given to X meanwhile"): the new holder decides
//!   when it is done.
//!
//! What a role allows is not judged here but at the door, once, when the
//! event is written and when the relay takes it in ([`access::may_act`]):
//! a later change of role must not undo work done while it was allowed.
//! This same fold, with that door, validates every local command before it
//! is written, so a rule exists exactly once.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::access;
use crate::event::{Action, Event, EventId, Frontier};
use crate::model::{CallAttempt, CallOutcome, Handoff, Role, TaskId, Timestamp, UserId, HOUR_MS};
use crate::team::Team;

/// The version of these rules. A change to what any event derives to
/// comes with a new one: stores derive their index again when they open
/// (`Store::open`). 2: what a role allows is judged at the door. 3: the
/// loser of a claim race may not submit or complete the winner's task.
pub const RULES: &str = "3";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting in a shared pool for someone of the right role to claim it.
    Unassigned,
    Assigned,
    InProgress,
    /// Submitted for review.
    Submitted,
    /// Returned by the reviewer with feedback.
    Returned,
    Completed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Unassigned => "unassigned",
            TaskStatus::Assigned => "assigned",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::Submitted => "submitted",
            TaskStatus::Returned => "returned",
            TaskStatus::Completed => "completed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<TaskStatus> {
        use TaskStatus::*;
        [
            Unassigned, Assigned, InProgress, Submitted, Returned, Completed, Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
    pub fn is_closed(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Cancelled)
    }
}

/// Why an action did not take effect. Carries user ids, never patient data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    #[error("the task does not exist yet on this device")]
    NotCreatedYet,
    #[error("the task was already created")]
    AlreadyCreated,
    #[error("{user} is not an active member of the team")]
    NotAMember { user: UserId },
    #[error("this device is not enrolled for {user}")]
    DeviceNotEnrolled { user: UserId },
    #[error("your role may not {action}")]
    NotPermitted { action: String },
    #[error("a clinician-only task cannot go to {user}: their role has no licence for it")]
    ClinicianOnly { user: UserId },
    #[error("this task waits in another role's pool")]
    NotInPool,
    #[error("{by} already has this task")]
    AlreadyTaken { by: UserId },
    #[error("only the assignee or a reviewer may do that")]
    NotAssignee,
    #[error("the task is {status:?} and takes no more work")]
    TaskClosed { status: TaskStatus },
    #[error("not possible while the task is {status:?}")]
    WrongStatus { status: TaskStatus },
    #[error("your work needs review: submit it instead of completing")]
    NeedsReview,
    #[error("the checklist has no item {item}")]
    NoSuchChecklistItem { item: u32 },
    #[error("work was logged on another phone that this approval did not cover; review again")]
    ApprovalStale,
    #[error("a manager assigned the task to {to}")]
    ClaimOverridden { to: UserId },
    #[error("the task was given to {to} meanwhile")]
    Reassigned { to: UserId },
    #[error("the relay refused this change: {reason}")]
    RelayRefused { reason: String },
}

impl Refusal {
    /// A stable machine-readable code.
    pub fn code(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("code").and_then(|c| c.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Refused for want of a member or a device the team has not added
    /// yet: a team change that adds one can make the event take effect
    /// ([`crate::team::Team::reach_from`]).
    pub fn awaits_team(&self) -> bool {
        matches!(
            self,
            Refusal::NotAMember { .. } | Refusal::DeviceNotEnrolled { .. }
        )
    }
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// It never took effect.
    Refused {
        refusal: Refusal,
    },
    /// It took effect, then a concurrent action undid it.
    Superseded {
        refusal: Refusal,
    },
}

impl Outcome {
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Outcome::Applied => None,
            Outcome::Refused { refusal } | Outcome::Superseded { refusal } => Some(refusal),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecklistItem {
    pub text: String,
    pub done: Option<(UserId, Timestamp)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedCall {
    pub event_id: String,
    pub by: UserId,
    pub at: Timestamp,
    pub attempt: CallAttempt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub by: UserId,
    pub at: Timestamp,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved { heads: Vec<String> },
    Returned { feedback: String },
}

/// The latest review of the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub by: UserId,
    pub at: Timestamp,
    pub submitted_at: Timestamp,
    pub verdict: Verdict,
    /// Work was logged that this approval did not cover.
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub event_id: String,
    pub at: Timestamp,
    pub by: UserId,
    pub action: Action,
    pub outcome: Outcome,
}

impl HistoryEntry {
    /// The history line of one event and what became of it.
    pub fn of(e: &Event, outcome: Outcome) -> HistoryEntry {
        HistoryEntry {
            event_id: e.id.to_string(),
            at: e.at,
            by: e.by.clone(),
            action: e.action.clone(),
            outcome,
        }
    }
}

/// Everything a device knows about a task, derived from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub task_id: TaskId,
    pub handoff: Handoff,
    pub created_by: UserId,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub status: TaskStatus,
    pub pool: Option<Role>,
    pub assignee: Option<UserId>,
    pub acknowledged: bool,
    pub checklist: Vec<ChecklistItem>,
    pub questions: Vec<String>,
    pub calls: Vec<LoggedCall>,
    pub comments: Vec<Comment>,
    pub submitted: Option<(UserId, Timestamp)>,
    pub last_review: Option<Review>,
    pub completed: Option<(UserId, Timestamp)>,
    pub escalations: Vec<(UserId, Timestamp, String)>,
    /// Every event, in fold order, with what became of it: the audit trail.
    pub history: Vec<HistoryEntry>,
}

impl TaskState {
    pub fn first_reached_at(&self) -> Option<Timestamp> {
        self.calls
            .iter()
            .find(|c| c.attempt.outcome == CallOutcome::Reached)
            .map(|c| c.at)
    }

    /// When the next call attempt is due, while the patient is not reached.
    pub fn next_call_due(&self) -> Option<Timestamp> {
        if self.status.is_closed() || self.first_reached_at().is_some() {
            return None;
        }
        self.calls.last().and_then(|c| c.attempt.next_attempt_due)
    }

    /// When the pending review should be done, under the team's policy.
    pub fn review_due(&self, team: &Team) -> Option<Timestamp> {
        match (self.status, &self.submitted) {
            (TaskStatus::Submitted, Some((_, at))) => {
                Some(at.saturating_add(i64::from(team.policy.review_within_hours) * HOUR_MS))
            }
            _ => None,
        }
    }

    pub fn outcome_of(&self, event_id: &str) -> Option<&Outcome> {
        self.history
            .iter()
            .find(|h| h.event_id == event_id)
            .map(|h| &h.outcome)
    }
}

/// A small bitset over event positions, for "is A an ancestor of B".
#[derive(Clone, Default)]
struct Ancestors(Vec<u64>);

impl Ancestors {
    fn insert(&mut self, i: usize) {
        let (w, b) = (i / 64, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }
    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn union(&mut self, other: &Ancestors) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

/// Put events in fold order and drop duplicate ids (a redaction or a
/// re-delivery can copy an event twice; the copies are the same event).
pub fn order_events(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    events.dedup_by(|b, a| a.id == b.id);
    events
}

/// [`order_events`] on borrowed events; also the last of them in fold
/// order before the copies were dropped.
fn in_fold_order(events: &[Event]) -> (Vec<&Event>, Option<&Event>) {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    let last = sorted.last().copied();
    sorted.dedup_by(|b, a| a.id == b.id);
    (sorted, last)
}

/// Derive the task's state. `None` while no `created` event has arrived.
pub fn derive(task_id: &str, events: Vec<Event>, team: &Team) -> Option<TaskState> {
    let (state, history) = derive_with_history(task_id, events, team);
    state.map(|mut s| {
        s.history = history;
        s
    })
}

/// [`derive()`] from borrowed events (a cached parse stays in the cache).
pub fn derive_borrowed(task_id: &str, events: &[Event], team: &Team) -> Option<TaskState> {
    let (state, outcomes) = derive_outcomes(task_id, events, team);
    state.map(|s| with_history(s, outcomes))
}

/// The state with its history: every event in fold order and what became
/// of it (the outcomes [`derive_outcomes`] gives).
pub fn with_history(mut state: TaskState, outcomes: Vec<(&Event, Outcome)>) -> TaskState {
    state.history = outcomes
        .into_iter()
        .map(|(e, outcome)| HistoryEntry::of(e, outcome))
        .collect();
    state
}

/// The state (if any) and what became of every event, even when the task
/// was never created (a refused `created` event says why here).
pub fn derive_with_history(
    task_id: &str,
    events: Vec<Event>,
    team: &Team,
) -> (Option<TaskState>, Vec<HistoryEntry>) {
    let events = order_events(events);
    let (state, outcomes) = {
        let sorted: Vec<&Event> = events.iter().collect();
        fold(task_id, &sorted, team, None)
    };
    let history = events
        .into_iter()
        .zip(outcomes)
        .map(|(e, outcome)| HistoryEntry {
            event_id: e.id.to_string(),
            at: e.at,
            by: e.by,
            action: e.action,
            outcome,
        })
        .collect();
    (state, history)
}

/// The state and what became of each event, from borrowed events and
/// without building the history (the relay re-derives a task at every
/// change it admits). Outcomes come in fold order, with their event.
pub fn derive_outcomes<'e>(
    task_id: &str,
    events: &'e [Event],
    team: &Team,
) -> (Option<TaskState>, Vec<(&'e Event, Outcome)>) {
    derive_judging(task_id, events, team, None)
}

/// [`derive_outcomes`], with one event also judged at the door
/// ([`access::may_act`]) on the task as it stood just before it: a phone
/// writing a new event (which follows every event it has) asks this.
pub fn derive_at_door<'e>(
    task_id: &str,
    events: &'e [Event],
    team: &Team,
    door: &EventId,
) -> (Option<TaskState>, Vec<(&'e Event, Outcome)>) {
    derive_judging(task_id, events, team, Some(door))
}

fn derive_judging<'e>(
    task_id: &str,
    events: &'e [Event],
    team: &Team,
    door: Option<&EventId>,
) -> (Option<TaskState>, Vec<(&'e Event, Outcome)>) {
    let (sorted, _) = in_fold_order(events);
    let (state, outcomes) = fold(task_id, &sorted, team, door);
    (state, sorted.into_iter().zip(outcomes).collect())
}

/// Fold events already in fold order (see [`order_events`]), judging the
/// one at the `door`, if any, with [`access::may_act`] too.
fn fold(
    task_id: &str,
    events: &[&Event],
    team: &Team,
    door: Option<&EventId>,
) -> (Option<TaskState>, Vec<Outcome>) {
    let mut fold = Fold::over(events);
    for e in events {
        fold.push(task_id, e, team, door == Some(&e.id));
    }
    (fold.state, fold.outcomes)
}

/// A task folded up to its latest event, kept beside its events (in the
/// store's document cache): the event this device writes next follows
/// every one of them, so it folds alone, without folding the rest again.
#[derive(Clone)]
pub struct FoldedTask {
    fold: Fold,
    frontier: Frontier,
    /// The fold order key of the last event, folded or dropped as a copy.
    last: Option<(u64, Timestamp, String, u32)>,
    /// Made by folding every event (not by taking the last ones alone).
    folded_anew: bool,
}

impl FoldedTask {
    /// Fold `events` (in any order, duplicates welcome, as [`derive()`] takes them).
    pub fn of(task_id: &str, events: &[Event], team: &Team) -> FoldedTask {
        FoldedTask::of_judging(task_id, events, team, None).0
    }

    /// The state after every event folded, `None` before `created`.
    pub fn state(&self) -> Option<&TaskState> {
        self.fold.state.as_ref()
    }

    /// The state with its history, as [`derive_borrowed`] gives it for
    /// `events`, the events this fold is of (`None` also when they are not:
    /// more or fewer than it folded).
    pub fn with_history(&self, events: &[Event]) -> Option<TaskState> {
        let state = self.fold.state.clone()?;
        let (sorted, _) = in_fold_order(events);
        if sorted.len() != self.fold.outcomes.len() {
            return None;
        }
        let outcomes = sorted.into_iter().zip(self.fold.outcomes.iter().cloned());
        Some(with_history(state, outcomes.collect()))
    }

    /// The next event this device writes to the task ([`Event::next`]).
    pub fn next_event(&self, actor: &str, user: &str, now: Timestamp, action: Action) -> Event {
        self.frontier.next(actor, user, now, action)
    }

    /// Take `event`, judged at the door ([`derive_at_door`]): the fold
    /// with it, or why it does not take effect (the fold, part-way
    /// through it, is dropped). `events` are the ones folded so far and
    /// `event` after them: the same verdict and state as folding them all
    /// again. An event that would not fold last (its Lamport time at the
    /// ceiling) is judged by folding them all again.
    pub fn take(
        mut self,
        task_id: &str,
        events: &[Event],
        event: &Event,
        team: &Team,
    ) -> Result<FoldedTask, Refusal> {
        if !self.folds_in_order(std::slice::from_ref(event)) {
            let mut all = events.to_vec();
            all.push(event.clone());
            let (again, at) = FoldedTask::of_judging(task_id, &all, team, Some(&event.id));
            return again.verdict(at).map(|()| again);
        }
        let at = self.fold.outcomes.len();
        self.fold.push(task_id, event, team, true);
        self.frontier.advance(events, event);
        self.last = Some(owned_key(event));
        self.folded_anew = false;
        self.verdict(Some(at)).map(|()| self)
    }

    /// Take the events that came after the ones folded, `events[from..]`
    /// (`events[..from]` being those), as [`derive_outcomes`] folds them:
    /// not judged at the door. The relay keeps each task this way.
    pub fn extend(&mut self, task_id: &str, events: &[Event], from: usize, team: &Team) {
        let new = events.get(from..).unwrap_or_default();
        if !self.folds_in_order(new) {
            *self = FoldedTask::of(task_id, events, team);
            return;
        }
        for (k, e) in new.iter().enumerate() {
            self.fold.push(task_id, e, team, false);
            self.frontier.advance(&events[..from + k], e);
        }
        if let Some(e) = new.last() {
            self.last = Some(owned_key(e));
        }
        self.folded_anew = false;
    }

    /// Was this fold made by folding every event, rather than by taking
    /// the last ones onto an earlier fold? Taken alone, an event that folds
    /// last changes an earlier event's outcome only from applied to
    /// superseded, so [`FoldedTask::unapplied`] then tells whether the
    /// task's needs-attention rows moved; folded anew, an event folding
    /// among the others can change any later one's outcome.
    pub fn folded_anew(&self) -> bool {
        self.folded_anew
    }

    /// How many events did not take effect (refused or superseded).
    pub fn unapplied(&self) -> usize {
        self.fold
            .outcomes
            .iter()
            .filter(|o| **o != Outcome::Applied)
            .count()
    }

    /// Some event waits for a member or a device the team has not added
    /// yet, or the task has no state: a team change that adds one may
    /// change what the task derives to ([`Refusal::awaits_team`]).
    pub fn awaits_team(&self) -> bool {
        self.fold.state.is_none()
            || self
                .fold
                .outcomes
                .iter()
                .any(|o| o.refusal().is_some_and(Refusal::awaits_team))
    }

    /// Would `new`, in this order, fold after every event folded, as
    /// folding them all again would fold them: each after the one before
    /// in fold order, none a copy of an event already there (folding
    /// again drops such a copy when it sorts next to its original).
    fn folds_in_order(&self, new: &[Event]) -> bool {
        let mut last = self.last.as_ref().map(borrowed_key);
        for (k, e) in new.iter().enumerate() {
            let key = e.order_key();
            if last.is_some_and(|l| key <= l)
                || self.fold.position.contains_key(&e.id)
                || new[..k].iter().any(|x| x.id == e.id)
            {
                return false;
            }
            last = Some(key);
        }
        true
    }

    /// [`FoldedTask::of`], judging the event `door`, if any, at the door
    /// too; with the position in fold order of its first copy.
    fn of_judging(
        task_id: &str,
        events: &[Event],
        team: &Team,
        door: Option<&EventId>,
    ) -> (FoldedTask, Option<usize>) {
        // The last in fold order of all, copies dropped included: an event
        // folding before a dropped copy would keep it from being dropped
        // when everything is folded again.
        let (sorted, last) = in_fold_order(events);
        let last = last.map(owned_key);
        let mut fold = Fold::over(&sorted);
        for e in &sorted {
            fold.push(task_id, e, team, door == Some(&e.id));
        }
        let at = door.and_then(|id| sorted.iter().position(|e| e.id == *id));
        let folded = FoldedTask {
            fold,
            frontier: Frontier::of(events),
            last,
            folded_anew: true,
        };
        (folded, at)
    }

    /// Whether the event at position `at` in fold order took effect, as
    /// [`derive_at_door`]'s callers judge it: applied, and the task exists.
    fn verdict(&self, at: Option<usize>) -> Result<(), Refusal> {
        if let Some(refusal) = at.and_then(|i| self.fold.outcomes.get(i)?.refusal()) {
            return Err(refusal.clone());
        }
        match self.fold.state {
            Some(_) => Ok(()),
            None => Err(Refusal::NotCreatedYet),
        }
    }
}

impl Default for FoldedTask {
    /// A task with no events yet.
    fn default() -> FoldedTask {
        FoldedTask {
            fold: Fold::with_capacity(0),
            frontier: Frontier::default(),
            last: None,
            folded_anew: true,
        }
    }
}

fn owned_key(e: &Event) -> (u64, Timestamp, String, u32) {
    (e.lt, e.at, e.id.actor.clone(), e.id.n)
}

fn borrowed_key(k: &(u64, Timestamp, String, u32)) -> (u64, Timestamp, &str, u32) {
    (k.0, k.1, k.2.as_str(), k.3)
}

/// A fold under way: the events folded so far, in fold order, and what
/// the rules remember of them.
#[derive(Clone)]
struct Fold {
    /// Each event's position in fold order.
    position: HashMap<EventId, usize>,
    /// Each event's ancestors among the events before it.
    ancestors: Vec<Ancestors>,
    state: Option<TaskState>,
    outcomes: Vec<Outcome>,
    /// The claim that made the current assignee, if it was a claim.
    claim_event: Option<usize>,
    /// The assignment that set the current assignee, if it was one.
    assign_event: Option<usize>,
    /// The approval that completed the task, if it was one.
    approval_event: Option<usize>,
    work_events: Vec<usize>,
    /// The events that set who holds the task, and whom, in fold order.
    holders: Vec<(usize, UserId)>,
    /// The submission or completion that set the current status, if one
    /// did: a reassignment its author had not seen undoes it.
    done: Option<Done>,
}

/// A submission or completion, and what it replaced.
#[derive(Clone)]
struct Done {
    event: usize,
    by: UserId,
    replaced: Progress,
}

/// The parts of a task's state that a submission or completion sets.
#[derive(Clone, PartialEq)]
struct Progress {
    status: TaskStatus,
    submitted: Option<(UserId, Timestamp)>,
    completed: Option<(UserId, Timestamp)>,
}

impl Progress {
    fn of(s: &TaskState) -> Progress {
        Progress {
            status: s.status,
            submitted: s.submitted.clone(),
            completed: s.completed.clone(),
        }
    }
}

/// Held by a member, active or not. Members are never taken off the
/// team (only made inactive), so this holds for good once it holds.
fn may_hold(team: &Team, user: &str) -> Result<(), Refusal> {
    match team.member(user) {
        Some(_) => Ok(()),
        None => Err(Refusal::NotAMember { user: user.into() }),
    }
}

impl Fold {
    /// A fold of `events` (in fold order) to come. A dependency names the
    /// last copy of its id in the whole list, and counts only if that copy
    /// folds before the event (copies of an id are rare: a device that
    /// wrote one id twice).
    fn over(events: &[&Event]) -> Fold {
        let mut fold = Fold::with_capacity(events.len() + 1);
        for (i, e) in events.iter().enumerate() {
            fold.position.insert(e.id.clone(), i);
        }
        fold
    }

    fn with_capacity(n: usize) -> Fold {
        Fold {
            position: HashMap::with_capacity(n),
            ancestors: Vec::with_capacity(n),
            state: None,
            outcomes: Vec::with_capacity(n),
            claim_event: None,
            assign_event: None,
            approval_event: None,
            work_events: Vec::new(),
            holders: Vec::new(),
            done: None,
        }
    }

    /// Fold the next event in fold order (it folds after every event
    /// folded so far), judging it at the door too if `at_door`.
    fn push(&mut self, task_id: &str, e: &Event, team: &Team, at_door: bool) {
        let i = self.ancestors.len();
        let mut set = Ancestors::default();
        for d in &e.deps {
            match self.position.get(d) {
                Some(&p) if p < i => {
                    set.insert(p);
                    set.union(&self.ancestors[p]);
                }
                _ => {}
            }
        }
        self.ancestors.push(set);
        // Folded past its list ([`Fold::over`]): an event whose id is new.
        if !self.position.contains_key(&e.id) {
            self.position.insert(e.id.clone(), i);
        }
        self.outcomes.push(Outcome::Applied);
        let judged = match at_door {
            true => access::may_act(team, self.state.as_ref(), e),
            false => Ok(()),
        };
        let before = self.state.as_ref().map(Progress::of);
        let outcome = match judged.and_then(|()| self.apply(task_id, i, e, team)) {
            Ok(()) => {
                self.note_status(i, e, before);
                Outcome::Applied
            }
            Err(refusal) => {
                // Its author went on as the holder: they held the task as
                // they saw it from here (see `held_as_seen`).
                if matches!(e.action, Action::Claimed) {
                    self.holders.push((i, e.by.clone()));
                }
                Outcome::Refused { refusal }
            }
        };
        // `apply` may already have superseded this event; its own verdict otherwise:
        if self.outcomes[i] == Outcome::Applied {
            self.outcomes[i] = outcome;
        }
    }

    /// Take one event into the state, by the rules the state decides.
    /// What the author's role allows was judged at the door
    /// ([`access::may_act`]) and is not judged again: a role changed
    /// since must not undo work that was allowed when it was done.
    fn apply(&mut self, task_id: &str, i: usize, e: &Event, team: &Team) -> Result<(), Refusal> {
        // The author: a member, writing from a device enrolled for them
        // (devices, like members, stay in the team document for good).
        may_hold(team, &e.by)?;
        if team.device_user(&e.id.actor) != Some(e.by.as_str()) {
            return Err(Refusal::DeviceNotEnrolled { user: e.by.clone() });
        }

        if let Action::Created {
            handoff,
            checklist,
            questions,
            pool,
            assignee,
        } = &e.action
        {
            if self.state.is_some() {
                return Err(Refusal::AlreadyCreated);
            }
            if let Some(a) = assignee {
                may_hold(team, a)?;
            }
            self.state = Some(TaskState {
                task_id: task_id.into(),
                handoff: handoff.clone(),
                created_by: e.by.clone(),
                created_at: e.at,
                updated_at: e.at,
                status: if assignee.is_some() {
                    TaskStatus::Assigned
                } else {
                    TaskStatus::Unassigned
                },
                pool: *pool,
                assignee: assignee.clone(),
                acknowledged: false,
                checklist: checklist
                    .iter()
                    .map(|t| ChecklistItem {
                        text: t.clone(),
                        done: None,
                    })
                    .collect(),
                questions: questions.clone(),
                calls: Vec::new(),
                comments: Vec::new(),
                submitted: None,
                last_review: None,
                completed: None,
                escalations: Vec::new(),
                history: Vec::new(),
            });
            return Ok(());
        }

        let Some(s) = self.state.as_ref() else {
            return Err(Refusal::NotCreatedYet);
        };
        let status = s.status;
        let is_assignee = s.assignee.as_deref() == Some(e.by.as_str());

        if e.action.is_work() {
            match status {
                TaskStatus::Unassigned => return Err(Refusal::WrongStatus { status }),
                TaskStatus::Completed => {
                    // Work the approver had not seen makes the approval stale.
                    match self.approval_event {
                        Some(a) if !self.ancestors[i].contains(a) => {
                            self.outcomes[a] = Outcome::Superseded {
                                refusal: Refusal::ApprovalStale,
                            };
                            self.approval_event = None;
                            let s = self.state_mut();
                            s.status = TaskStatus::Submitted;
                            s.completed = None;
                            if let Some(r) = s.last_review.as_mut() {
                                r.stale = true;
                            }
                        }
                        _ => return Err(Refusal::TaskClosed { status }),
                    }
                }
                TaskStatus::Cancelled => return Err(Refusal::TaskClosed { status }),
                _ => {}
            }
            self.work_events.push(i);
        }

        match &e.action {
            Action::Created { .. } => unreachable_created(),
            Action::Assigned { to } => {
                may_hold(team, to)?;
                self.undo_done(i, to);
                let status = self.state_ref().status;
                if status.is_closed() {
                    return Err(Refusal::TaskClosed { status });
                }
                if let Some(c) = self.claim_event.take() {
                    if !self.ancestors[i].contains(c) {
                        self.outcomes[c] = Outcome::Superseded {
                            refusal: Refusal::ClaimOverridden { to: to.clone() },
                        };
                    }
                }
                self.assign_event = Some(i);
                let s = self.state_mut();
                s.assignee = Some(to.clone());
                s.acknowledged = false;
                if s.status != TaskStatus::Submitted {
                    s.status = TaskStatus::Assigned;
                }
            }
            Action::Acknowledged { .. } => {
                if !is_assignee {
                    return Err(Refusal::NotAssignee);
                }
                if status.is_closed() {
                    return Err(Refusal::TaskClosed { status });
                }
                self.state_mut().acknowledged = true;
            }
            Action::Claimed => {
                if status.is_closed() {
                    return Err(Refusal::TaskClosed { status });
                }
                if let Some(by) = self.state_ref().assignee.clone() {
                    // A manager's assignment the claimant had not seen wins over the claim.
                    return Err(match self.assign_event {
                        Some(a) if !self.ancestors[i].contains(a) => {
                            Refusal::ClaimOverridden { to: by }
                        }
                        _ => Refusal::AlreadyTaken { by },
                    });
                }
                // Whose pool it is was judged at the door.
                if self.state_ref().pool.is_none() {
                    return Err(Refusal::NotInPool);
                }
                self.claim_event = Some(i);
                self.assign_event = None;
                let s = self.state_mut();
                s.assignee = Some(e.by.clone());
                s.acknowledged = true;
                s.status = TaskStatus::Assigned;
            }
            Action::Started => {
                if !matches!(status, TaskStatus::Assigned | TaskStatus::Returned) {
                    return Err(Refusal::WrongStatus { status });
                }
                self.state_mut().status = TaskStatus::InProgress;
            }
            Action::ChecklistItemDone { item } => {
                let s = self.state_mut();
                let Some(entry) = s.checklist.get_mut(*item as usize) else {
                    return Err(Refusal::NoSuchChecklistItem { item: *item });
                };
                entry.done.get_or_insert((e.by.clone(), e.at));
                if matches!(s.status, TaskStatus::Assigned | TaskStatus::Returned) {
                    s.status = TaskStatus::InProgress;
                }
            }
            Action::CallLogged { attempt } => {
                let s = self.state_mut();
                s.calls.push(LoggedCall {
                    event_id: e.id.to_string(),
                    by: e.by.clone(),
                    at: e.at,
                    attempt: attempt.clone(),
                });
                if matches!(s.status, TaskStatus::Assigned | TaskStatus::Returned) {
                    s.status = TaskStatus::InProgress;
                }
            }
            Action::Commented { text } => {
                self.state_mut().comments.push(Comment {
                    by: e.by.clone(),
                    at: e.at,
                    text: text.clone(),
                });
            }
            Action::Submitted { .. } => {
                self.not_moved_meanwhile(i, &e.by, is_assignee)?;
                if !matches!(
                    status,
                    TaskStatus::Assigned | TaskStatus::InProgress | TaskStatus::Returned
                ) {
                    return Err(Refusal::WrongStatus { status });
                }
                let s = self.state_mut();
                s.status = TaskStatus::Submitted;
                s.submitted = Some((e.by.clone(), e.at));
            }
            Action::Approved { heads, .. } => {
                if status != TaskStatus::Submitted {
                    return Err(Refusal::WrongStatus { status });
                }
                let stale = self
                    .work_events
                    .iter()
                    .any(|&w| !self.ancestors[i].contains(w));
                let s = self.state_mut();
                let submitted_at = s.submitted.as_ref().map_or(e.at, |x| x.1);
                s.last_review = Some(Review {
                    by: e.by.clone(),
                    at: e.at,
                    submitted_at,
                    verdict: Verdict::Approved {
                        heads: heads.clone(),
                    },
                    stale,
                });
                if stale {
                    self.outcomes[i] = Outcome::Superseded {
                        refusal: Refusal::ApprovalStale,
                    };
                } else {
                    s.status = TaskStatus::Completed;
                    s.completed = Some((e.by.clone(), e.at));
                    self.approval_event = Some(i);
                }
            }
            Action::Returned { feedback } => {
                if status != TaskStatus::Submitted {
                    return Err(Refusal::WrongStatus { status });
                }
                let s = self.state_mut();
                let submitted_at = s.submitted.as_ref().map_or(e.at, |x| x.1);
                s.last_review = Some(Review {
                    by: e.by.clone(),
                    at: e.at,
                    submitted_at,
                    verdict: Verdict::Returned {
                        feedback: feedback.clone(),
                    },
                    stale: false,
                });
                s.status = TaskStatus::Returned;
            }
            Action::Completed { .. } => {
                if status.is_closed() {
                    return Err(Refusal::TaskClosed { status });
                }
                if status == TaskStatus::Unassigned {
                    return Err(Refusal::WrongStatus { status });
                }
                self.not_moved_meanwhile(i, &e.by, is_assignee)?;
                let s = self.state_mut();
                s.status = TaskStatus::Completed;
                s.completed = Some((e.by.clone(), e.at));
            }
            Action::Cancelled { .. } => {
                if status.is_closed() {
                    return Err(Refusal::TaskClosed { status });
                }
                self.state_mut().status = TaskStatus::Cancelled;
            }
            Action::Escalated { reason } => {
                if status.is_closed() {
                    return Err(Refusal::TaskClosed { status });
                }
                self.state_mut()
                    .escalations
                    .push((e.by.clone(), e.at, reason.clone()));
            }
        }
        let s = self.state_mut();
        s.updated_at = s.updated_at.max(e.at);
        Ok(())
    }

    /// Submitting or completing is the holder's word that the work is done:
    /// from someone who held the task as they saw it but does not hold it
    /// here, it does not stand (their calls do: they happened). The task
    /// was taken from them by what they had not seen: an assignment, or
    /// a claim that won the race theirs lost. This is the order where that
    /// folds first; [`Fold::undo_done`] is the other (for assignments).
    fn not_moved_meanwhile(&self, i: usize, by: &str, is_assignee: bool) -> Result<(), Refusal> {
        match &self.state_ref().assignee {
            Some(to) if !is_assignee && self.held_as_seen(i, by) => Err(match self.claim_event {
                Some(_) => Refusal::AlreadyTaken { by: to.clone() },
                None => Refusal::Reassigned { to: to.clone() },
            }),
            _ => Ok(()),
        }
    }

    /// Did `by` hold the task as the author of event `i` saw it (the last
    /// holder set among the events it builds on, a claim that lost its race
    /// included: its author's phone went on from it)?
    fn held_as_seen(&self, i: usize, by: &str) -> bool {
        self.holders
            .iter()
            .rev()
            .find(|(j, _)| self.ancestors[i].contains(*j))
            .is_some_and(|(_, holder)| holder == by)
    }

    /// An assignment at `i` that the holder's submission or completion had
    /// not seen, folded after it: that word no longer stands, and the task
    /// goes back to where it was before it.
    fn undo_done(&mut self, i: usize, to: &str) {
        let outgoing = self.state_ref().assignee.clone();
        let Some(done) = self.done.take() else {
            return;
        };
        if self.ancestors[i].contains(done.event) || outgoing.as_deref() != Some(done.by.as_str()) {
            self.done = Some(done);
            return;
        }
        self.outcomes[done.event] = Outcome::Superseded {
            refusal: Refusal::Reassigned { to: to.into() },
        };
        let s = self.state_mut();
        s.status = done.replaced.status;
        s.submitted = done.replaced.submitted;
        s.completed = done.replaced.completed;
    }

    /// After event `i` applied: who holds the task now, and whether its
    /// status is a submission's or completion's word.
    fn note_status(&mut self, i: usize, e: &Event, before: Option<Progress>) {
        let holder = match &e.action {
            Action::Created { assignee, .. } => assignee.clone(),
            Action::Assigned { to } => Some(to.clone()),
            Action::Claimed => Some(e.by.clone()),
            _ => None,
        };
        if let Some(h) = holder {
            self.holders.push((i, h));
        }
        let Some(now) = self.state.as_ref().map(Progress::of) else {
            return;
        };
        let Some(replaced) = before.filter(|b| *b != now) else {
            return;
        };
        self.done = match e.action {
            Action::Submitted { .. } | Action::Completed { .. } => Some(Done {
                event: i,
                by: e.by.clone(),
                replaced,
            }),
            _ => None,
        };
    }

    fn state_ref(&self) -> &TaskState {
        match &self.state {
            Some(s) => s,
            None => unreachable_created(),
        }
    }

    fn state_mut(&mut self) -> &mut TaskState {
        match &mut self.state {
            Some(s) => s,
            None => unreachable_created(),
        }
    }
}

/// `apply` returns before reaching any state access when there is no state.
#[allow(clippy::panic)]
fn unreachable_created() -> ! {
    panic!("derive: state accessed before the created event")
}
