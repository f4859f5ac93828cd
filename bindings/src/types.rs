//! The records and enums Kotlin and Swift see, and their translation from
//! (and, for inputs, to) the core's types. Field for field: no rule and no
//! computation lives here. Times are milliseconds since the Unix epoch, UTC.

use handoff_core as core;

/// Mirror a fieldless core enum both ways.
macro_rules! mirror_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
        pub enum $name { $($variant),+ }

        impl From<core::$name> for $name {
            fn from(v: core::$name) -> Self {
                match v { $(core::$name::$variant => $name::$variant),+ }
            }
        }
        impl From<$name> for core::$name {
            fn from(v: $name) -> Self {
                match v { $($name::$variant => core::$name::$variant),+ }
            }
        }
    };
}

mirror_enum!(
    /// A role in the practice.
    Role { Clinician, Manager, ClinicalAssistant, FrontDesk, Admin }
);
mirror_enum!(Priority {
    Low,
    Normal,
    High,
    Urgent
});
mirror_enum!(Category {
    FollowUpCall,
    Scheduling,
    PriorAuthorization,
    RecordsRequest,
    Inventory,
    ChartPrep,
    PatientEducation,
    MedicationList,
    Clinical,
    Other,
});
mirror_enum!(
    /// How far a task may be delegated.
    DelegationLevel { Delegable, Shared, ClinicianOnly }
);
mirror_enum!(
    /// Outcome of one follow-up call attempt.
    CallOutcome { Reached, Voicemail, NoAnswer, Busy, NotHome, WrongNumber, Declined, Rescheduled }
);
mirror_enum!(TaskStatus {
    Unassigned,
    Assigned,
    InProgress,
    Submitted,
    Returned,
    Completed,
    Cancelled
});
mirror_enum!(
    /// Why a task needs a manager's eye now.
    Escalation { Overdue, CallOverdue, AttemptsExhausted, FollowUpWindowMissed, ReviewOverdue, Raised }
);

mirror_enum!(
    /// A command on one task; `TaskDetail.availableCommands` lists the ones
    /// the user may do now (the buttons to show).
    TaskCommand {
        Assign, Claim, Acknowledge, Start, TickChecklistItem, LogCall, Comment, Submit, Approve,
        Return, Complete, Cancel, Escalate,
    }
);

fn map<A, B: From<A>>(v: Vec<A>) -> Vec<B> {
    v.into_iter().map(B::from).collect()
}

/// What a delegator fills in to hand a task off. Either `assignee` or `pool`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewTask {
    pub title: String,
    /// The outcome wanted.
    pub outcome: String,
    /// Why it matters.
    pub why: String,
    #[uniffi(default = None)]
    pub due_at: Option<i64>,
    pub priority: Priority,
    pub category: Category,
    pub level: DelegationLevel,
    /// An SOP template id from [`Team::sops`].
    #[uniffi(default = None)]
    pub sop: Option<String>,
    #[uniffi(default = None)]
    pub route_result_to: Option<String>,
    #[uniffi(default = None)]
    pub patient: Option<PatientRef>,
    #[uniffi(default = None)]
    pub assignee: Option<String>,
    #[uniffi(default = None)]
    pub pool: Option<Role>,
}

impl From<NewTask> for core::NewTask {
    fn from(t: NewTask) -> Self {
        core::NewTask {
            handoff: core::Handoff {
                title: t.title,
                outcome: t.outcome,
                why: t.why,
                due: t.due_at,
                priority: t.priority.into(),
                category: t.category.into(),
                level: t.level.into(),
                sop: t.sop,
                route_result_to: t.route_result_to,
            },
            patient: t.patient.map(Into::into),
            assignee: t.assignee,
            pool: t.pool.map(Into::into),
        }
    }
}

/// The minimum a task knows about its patient.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PatientRef {
    pub display_name: String,
    #[uniffi(default = None)]
    pub phone: Option<String>,
    #[uniffi(default = None)]
    pub record_ref: Option<String>,
}

impl From<PatientRef> for core::PatientRef {
    fn from(p: PatientRef) -> Self {
        core::PatientRef {
            display_name: p.display_name,
            phone: p.phone,
            record_ref: p.record_ref,
        }
    }
}
impl From<core::PatientRef> for PatientRef {
    fn from(p: core::PatientRef) -> Self {
        PatientRef {
            display_name: p.display_name,
            phone: p.phone,
            record_ref: p.record_ref,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ScriptAnswer {
    pub question: String,
    pub answer: String,
}

/// One follow-up call attempt, as the call form fills it in.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CallAttempt {
    pub outcome: CallOutcome,
    #[uniffi(default = None)]
    pub contact_used: Option<String>,
    #[uniffi(default = "")]
    pub notes: String,
    #[uniffi(default = [])]
    pub answers: Vec<ScriptAnswer>,
    #[uniffi(default = None)]
    pub next_attempt_due_at: Option<i64>,
}

impl From<CallAttempt> for core::CallAttempt {
    fn from(c: CallAttempt) -> Self {
        core::CallAttempt {
            outcome: c.outcome.into(),
            contact_used: c.contact_used,
            notes: c.notes,
            answers: c
                .answers
                .into_iter()
                .map(|a| core::ScriptAnswer {
                    question: a.question,
                    answer: a.answer,
                })
                .collect(),
            next_attempt_due: c.next_attempt_due_at,
        }
    }
}

/// A task in a list.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TaskSummary {
    pub task_id: String,
    pub title: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub category: Category,
    pub level: DelegationLevel,
    pub assignee: Option<String>,
    pub pool: Option<Role>,
    pub due_at: Option<i64>,
    pub next_call_due_at: Option<i64>,
    /// The sooner of the two above: what the queue sorts by.
    pub next_deadline_at: Option<i64>,
    pub call_attempts: u32,
    pub stale_approval: bool,
    pub escalations: Vec<Escalation>,
    pub updated_at: i64,
}

impl From<core::TaskSummary> for TaskSummary {
    fn from(s: core::TaskSummary) -> Self {
        TaskSummary {
            next_deadline_at: s.next_deadline(),
            task_id: s.task_id,
            title: s.title,
            status: s.status.into(),
            priority: s.priority.into(),
            category: s.category.into(),
            level: s.level.into(),
            assignee: s.assignee,
            pool: s.pool.map(Into::into),
            due_at: s.due_at,
            next_call_due_at: s.next_call_due_at,
            call_attempts: s.call_attempts,
            stale_approval: s.stale_approval,
            escalations: map(s.escalations),
            updated_at: s.updated_at,
        }
    }
}

/// My open tasks: late, for today (the phone's local day), later.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MyQueue {
    pub overdue: Vec<TaskSummary>,
    pub today: Vec<TaskSummary>,
    pub upcoming: Vec<TaskSummary>,
}

impl From<core::MyQueue> for MyQueue {
    fn from(q: core::MyQueue) -> Self {
        MyQueue {
            overdue: map(q.overdue),
            today: map(q.today),
            upcoming: map(q.upcoming),
        }
    }
}

/// Submitted work waiting for my review.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReviewItem {
    pub task: TaskSummary,
    pub submitted_at: i64,
    pub review_due_at: i64,
    pub overdue: bool,
}

impl From<core::ReviewItem> for ReviewItem {
    fn from(r: core::ReviewItem) -> Self {
        ReviewItem {
            task: r.task.into(),
            submitted_at: r.submitted_at,
            review_due_at: r.review_due_at,
            overdue: r.overdue,
        }
    }
}

/// An action of mine that did not take effect, and why.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttentionItem {
    /// Pass to `dismissAttention`.
    pub key: String,
    pub task_id: Option<String>,
    pub title: Option<String>,
    /// What I tried (`claimed`, `approved`, ...).
    pub action: String,
    /// Stable code (`already_taken`, `approval_stale`, `relay_refused`, ...).
    pub code: String,
    /// A sentence to show.
    pub reason: String,
    pub at: i64,
}

impl From<core::AttentionItem> for AttentionItem {
    fn from(a: core::AttentionItem) -> Self {
        AttentionItem {
            key: a.key,
            task_id: a.task_id,
            title: a.title,
            action: a.action,
            code: a.code,
            reason: a.reason,
            at: a.at,
        }
    }
}

/// The handoff as its delegator wrote it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Handoff {
    pub title: String,
    pub outcome: String,
    pub why: String,
    pub due_at: Option<i64>,
    pub priority: Priority,
    pub category: Category,
    pub level: DelegationLevel,
    pub sop: Option<String>,
    pub route_result_to: Option<String>,
}

impl From<core::Handoff> for Handoff {
    fn from(h: core::Handoff) -> Self {
        Handoff {
            title: h.title,
            outcome: h.outcome,
            why: h.why,
            due_at: h.due,
            priority: h.priority.into(),
            category: h.category.into(),
            level: h.level.into(),
            sop: h.sop,
            route_result_to: h.route_result_to,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChecklistItem {
    pub text: String,
    pub done_by: Option<String>,
    pub done_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LoggedCall {
    pub by: String,
    pub at: i64,
    pub outcome: CallOutcome,
    pub contact_used: Option<String>,
    pub notes: String,
    pub answers: Vec<ScriptAnswer>,
    pub next_attempt_due_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Comment {
    pub by: String,
    pub at: i64,
    pub text: String,
}

/// The latest review of a task.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Review {
    pub by: String,
    pub at: i64,
    pub submitted_at: i64,
    pub approved: bool,
    /// The reviewer's feedback when the work was returned.
    pub feedback: Option<String>,
    /// Work was logged that this approval did not cover.
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TaskEscalation {
    pub by: String,
    pub at: i64,
    pub reason: String,
}

/// What became of one action in a task's history.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ActionOutcome {
    Applied,
    /// It never took effect.
    Refused {
        code: String,
        reason: String,
    },
    /// It took effect, then a concurrent action undid it.
    Superseded {
        code: String,
        reason: String,
    },
}

impl From<core::Outcome> for ActionOutcome {
    fn from(o: core::Outcome) -> Self {
        match o {
            core::Outcome::Applied => ActionOutcome::Applied,
            core::Outcome::Refused { refusal } => ActionOutcome::Refused {
                code: refusal.code(),
                reason: refusal.to_string(),
            },
            core::Outcome::Superseded { refusal } => ActionOutcome::Superseded {
                code: refusal.code(),
                reason: refusal.to_string(),
            },
        }
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryEntry {
    pub event_id: String,
    pub at: i64,
    pub by: String,
    /// `created`, `assigned`, `claimed`, `call_logged`, `approved`, ...
    pub action: String,
    pub outcome: ActionOutcome,
}

/// A task with everything this device knows of it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TaskDetail {
    pub task_id: String,
    pub handoff: Handoff,
    pub patient: Option<PatientRef>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub status: TaskStatus,
    pub pool: Option<Role>,
    pub assignee: Option<String>,
    pub acknowledged: bool,
    pub checklist: Vec<ChecklistItem>,
    /// The call script's questions, for the call form.
    pub questions: Vec<String>,
    pub calls: Vec<LoggedCall>,
    pub comments: Vec<Comment>,
    pub submitted_by: Option<String>,
    pub submitted_at: Option<i64>,
    pub last_review: Option<Review>,
    pub completed_by: Option<String>,
    pub completed_at: Option<i64>,
    pub raised_escalations: Vec<TaskEscalation>,
    /// Why it needs a manager's eye now.
    pub escalations: Vec<Escalation>,
    /// What I may do to it now, by the core's rules: the buttons to show.
    pub available_commands: Vec<TaskCommand>,
    pub history: Vec<HistoryEntry>,
    /// Events written by a newer app that this one cannot show.
    pub unreadable_events: u32,
}

impl From<core::TaskDetail> for TaskDetail {
    fn from(d: core::TaskDetail) -> Self {
        let s = d.state;
        TaskDetail {
            task_id: s.task_id,
            handoff: s.handoff.into(),
            patient: d.patient.map(Into::into),
            created_by: s.created_by,
            created_at: s.created_at,
            updated_at: s.updated_at,
            status: s.status.into(),
            pool: s.pool.map(Into::into),
            assignee: s.assignee,
            acknowledged: s.acknowledged,
            checklist: s
                .checklist
                .into_iter()
                .map(|c| {
                    let (done_by, done_at) = c.done.unzip();
                    ChecklistItem {
                        text: c.text,
                        done_by,
                        done_at,
                    }
                })
                .collect(),
            questions: s.questions,
            calls: s
                .calls
                .into_iter()
                .map(|c| LoggedCall {
                    by: c.by,
                    at: c.at,
                    outcome: c.attempt.outcome.into(),
                    contact_used: c.attempt.contact_used,
                    notes: c.attempt.notes,
                    answers: c
                        .attempt
                        .answers
                        .into_iter()
                        .map(|a| ScriptAnswer {
                            question: a.question,
                            answer: a.answer,
                        })
                        .collect(),
                    next_attempt_due_at: c.attempt.next_attempt_due,
                })
                .collect(),
            comments: s
                .comments
                .into_iter()
                .map(|c| Comment {
                    by: c.by,
                    at: c.at,
                    text: c.text,
                })
                .collect(),
            submitted_by: s.submitted.as_ref().map(|(by, _)| by.clone()),
            submitted_at: s.submitted.map(|(_, at)| at),
            last_review: s.last_review.map(|r| {
                let (approved, feedback) = match r.verdict {
                    core::derive::Verdict::Approved { .. } => (true, None),
                    core::derive::Verdict::Returned { feedback } => (false, Some(feedback)),
                };
                Review {
                    by: r.by,
                    at: r.at,
                    submitted_at: r.submitted_at,
                    approved,
                    feedback,
                    stale: r.stale,
                }
            }),
            completed_by: s.completed.as_ref().map(|(by, _)| by.clone()),
            completed_at: s.completed.map(|(_, at)| at),
            raised_escalations: s
                .escalations
                .into_iter()
                .map(|(by, at, reason)| TaskEscalation { by, at, reason })
                .collect(),
            escalations: map(d.escalations),
            available_commands: map(d.available),
            history: s
                .history
                .into_iter()
                .map(|h| HistoryEntry {
                    event_id: h.event_id,
                    at: h.at,
                    by: h.by,
                    action: h.action.name().to_owned(),
                    outcome: h.outcome.into(),
                })
                .collect(),
            unreadable_events: u32::try_from(d.unreadable_events).unwrap_or(u32::MAX),
        }
    }
}

/// Key figures for one owner over a period.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OwnerKpis {
    pub user_id: String,
    pub name: String,
    pub done: u32,
    pub done_on_time: u32,
    pub follow_ups: u32,
    pub reached_within_policy: u32,
    pub reviews: u32,
    pub median_review_turnaround_ms: Option<i64>,
    pub open: u32,
    pub overdue: u32,
}

impl From<core::OwnerKpis> for OwnerKpis {
    fn from(k: core::OwnerKpis) -> Self {
        OwnerKpis {
            user_id: k.user_id,
            name: k.name,
            done: k.done,
            done_on_time: k.done_on_time,
            follow_ups: k.follow_ups,
            reached_within_policy: k.reached_within_policy,
            reviews: k.reviews,
            median_review_turnaround_ms: k.median_review_turnaround_ms,
            open: k.open,
            overdue: k.overdue,
        }
    }
}

/// A staff member of the team (for assignee pickers).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    pub user_id: String,
    pub name: String,
    pub role: Role,
    pub trusted: bool,
    pub active: bool,
}

impl From<core::Member> for Member {
    fn from(m: core::Member) -> Self {
        Member {
            user_id: m.user_id,
            name: m.name,
            role: m.role.into(),
            trusted: m.trusted,
            active: m.active,
        }
    }
}

/// A named checklist and/or call script.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SopTemplate {
    pub id: String,
    pub name: String,
    pub checklist: Vec<String>,
    pub questions: Vec<String>,
}

impl From<core::SopTemplate> for SopTemplate {
    fn from(s: core::SopTemplate) -> Self {
        SopTemplate {
            id: s.id,
            name: s.name,
            checklist: s.checklist,
            questions: s.questions,
        }
    }
}

/// The team as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Team {
    pub name: String,
    pub members: Vec<Member>,
    pub sops: Vec<SopTemplate>,
}

impl From<core::Team> for Team {
    fn from(t: core::Team) -> Self {
        Team {
            name: t.name,
            members: t.members.into_values().map(Into::into).collect(),
            sops: t.sops.into_values().map(Into::into).collect(),
        }
    }
}

/// Who this device belongs to, once enrolled.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Enrolment {
    pub team_id: String,
    pub user_id: String,
    pub role: Role,
}

/// What one sync round moved.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// My changes the relay now has.
    pub pushed: u32,
    /// My changes the relay refused (now in "needs attention").
    pub refused: u32,
    /// Changes from other devices applied here.
    pub pulled: u32,
    pub tasks_updated: u32,
    /// My changes a relay restored from a backup had lost, and took again.
    pub offered_again: u32,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl From<core::SyncReport> for SyncReport {
    fn from(r: core::SyncReport) -> Self {
        SyncReport {
            pushed: count(r.pushed),
            refused: count(r.refused),
            pulled: count(r.pulled),
            tasks_updated: count(r.tasks_updated),
            offered_again: count(r.offered_again),
        }
    }
}

/// What live sync tells the app.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum SyncEvent {
    /// A round finished: the device is up to date with the relay.
    Synced { report: SyncReport },
    /// Tasks or the team changed because of other devices, or the relay
    /// set one of this device's changes aside: re-read the views.
    /// `tasks_updated` is 0 when only the team (names, roles, policy) changed.
    DataChanged { tasks_updated: u32 },
    /// Far behind (a new phone, or back after days away), the device pulls
    /// page after page: `at` of `of` entries so far (a progress bar).
    CatchingUp { at: u64, of: u64 },
    /// A long outbox (back after hours offline, on a weak signal) goes up
    /// request after request: `sent` of `of` changes so far.
    Sending { sent: u64, of: u64 },
    /// The relay is unreachable; sync tries again after the delay. Nothing
    /// is lost.
    Offline { reason: String, retry_in_ms: u64 },
    /// The relay refuses this device's credentials; sync stopped.
    AuthFailed { code: String, reason: String },
    /// The device was revoked; its data has been wiped; sync stopped.
    Revoked,
}

impl From<core::SyncEvent> for SyncEvent {
    fn from(e: core::SyncEvent) -> Self {
        match e {
            core::SyncEvent::Synced(report) => SyncEvent::Synced {
                report: report.into(),
            },
            core::SyncEvent::DataChanged { tasks_updated } => SyncEvent::DataChanged {
                tasks_updated: count(tasks_updated),
            },
            core::SyncEvent::CatchingUp { at, of } => SyncEvent::CatchingUp { at, of },
            core::SyncEvent::Sending { sent, of } => SyncEvent::Sending { sent, of },
            core::SyncEvent::Offline {
                message,
                retry_in_ms,
            } => SyncEvent::Offline {
                reason: message,
                retry_in_ms,
            },
            core::SyncEvent::AuthFailed { code, message } => SyncEvent::AuthFailed {
                code,
                reason: message,
            },
            core::SyncEvent::Revoked => SyncEvent::Revoked,
        }
    }
}
