//! What the apps render, computed here so no rule is written twice in Kotlin
//! and Swift. Lists come from the SQLite index; only the task detail loads
//! its (small) document.
//!
//! Views show what is on this device. Which documents reach a device is the
//! relay's decision (minimum necessary access), so a view never needs to
//! filter by permission beyond "whose queue".

use std::collections::HashMap;
use std::sync::MutexGuard;

use automerge::ActorId;
use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

use super::{docs, index, Db, Seen, Store};
use crate::derive::{derive_borrowed, FoldedTask, TaskState, TaskStatus};
use crate::error::{Error, Result};
use crate::event::{Action, Event};
use crate::model::{
    CallAttempt, CallOutcome, Category, DelegationLevel, PatientRef, Priority, Role, TaskId,
    Timestamp, UserId, DAY_MS, HOUR_MS,
};
use crate::task_doc;
use crate::team::Team;

/// Why a task needs a manager's eye now. Computed from the index and the
/// team's policy at view time, the same on every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Escalation {
    /// Past its due time.
    Overdue,
    /// The next call attempt is past due.
    CallOverdue,
    /// As many attempts as policy allows, patient not reached.
    AttemptsExhausted,
    /// A follow-up call task whose patient was not reached within the policy window.
    FollowUpWindowMissed,
    /// Submitted and not reviewed within the policy window.
    ReviewOverdue,
    /// Someone escalated it by hand.
    Raised,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task_id: TaskId,
    pub title: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub category: Category,
    pub level: DelegationLevel,
    pub assignee: Option<UserId>,
    pub pool: Option<Role>,
    pub due_at: Option<Timestamp>,
    pub next_call_due_at: Option<Timestamp>,
    pub call_attempts: u32,
    pub stale_approval: bool,
    pub escalations: Vec<Escalation>,
    pub updated_at: Timestamp,
}

impl TaskSummary {
    /// The time that matters most: the sooner of due and next call.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match (self.due_at, self.next_call_due_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// "My tasks": what is late, what is for today, what comes later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MyQueue {
    pub overdue: Vec<TaskSummary>,
    pub today: Vec<TaskSummary>,
    pub upcoming: Vec<TaskSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewItem {
    pub task: TaskSummary,
    pub submitted_at: Timestamp,
    pub review_due_at: Timestamp,
    pub overdue: bool,
}

/// An action of mine that did not take effect, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionItem {
    /// Pass to [`Store::dismiss_attention`].
    pub key: String,
    pub task_id: Option<TaskId>,
    pub title: Option<String>,
    pub action: String,
    pub code: String,
    pub reason: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDetail {
    pub state: TaskState,
    pub patient: Option<PatientRef>,
    pub escalations: Vec<Escalation>,
    /// What this device's user may do to the task now: the buttons to show.
    pub available: Vec<TaskCommand>,
    /// Events this device could not read (written by a newer app).
    pub unreadable_events: usize,
}

/// A command on one task, as offered to the user. The apps show a button
/// for each command in [`TaskDetail::available`] and decide nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskCommand {
    /// (Re)assign to someone of the team.
    Assign,
    Claim,
    Acknowledge,
    Start,
    TickChecklistItem,
    LogCall,
    Comment,
    Submit,
    Approve,
    Return,
    Complete,
    Cancel,
    Escalate,
}

impl TaskCommand {
    pub const ALL: [TaskCommand; 13] = [
        TaskCommand::Assign,
        TaskCommand::Claim,
        TaskCommand::Acknowledge,
        TaskCommand::Start,
        TaskCommand::TickChecklistItem,
        TaskCommand::LogCall,
        TaskCommand::Comment,
        TaskCommand::Submit,
        TaskCommand::Approve,
        TaskCommand::Return,
        TaskCommand::Complete,
        TaskCommand::Cancel,
        TaskCommand::Escalate,
    ];

    /// The candidate events that would carry this command (placeholder text;
    /// for Assign, one per possible assignee; for a checklist tick, one per
    /// open item). The command is available if any of them would apply.
    fn candidates(self, state: &TaskState, team: &Team) -> Vec<Action> {
        let text = || "-".to_owned();
        match self {
            TaskCommand::Assign => team
                .members
                .values()
                .filter(|m| m.active && state.assignee.as_deref() != Some(m.user_id.as_str()))
                .map(|m| Action::Assigned {
                    to: m.user_id.clone(),
                })
                .collect(),
            TaskCommand::Claim => vec![Action::Claimed],
            TaskCommand::Acknowledge => vec![Action::Acknowledged { note: text() }],
            TaskCommand::Start => vec![Action::Started],
            TaskCommand::TickChecklistItem => state
                .checklist
                .iter()
                .enumerate()
                .filter(|(_, c)| c.done.is_none())
                .filter_map(|(i, _)| u32::try_from(i).ok())
                .map(|item| Action::ChecklistItemDone { item })
                .take(1)
                .collect(),
            TaskCommand::LogCall => vec![Action::CallLogged {
                attempt: CallAttempt {
                    outcome: CallOutcome::NoAnswer,
                    contact_used: None,
                    notes: text(),
                    answers: Vec::new(),
                    next_attempt_due: None,
                },
            }],
            TaskCommand::Comment => vec![Action::Commented { text: text() }],
            TaskCommand::Submit => vec![Action::Submitted { note: text() }],
            TaskCommand::Approve => vec![Action::Approved {
                heads: Vec::new(),
                note: text(),
            }],
            TaskCommand::Return => vec![Action::Returned { feedback: text() }],
            TaskCommand::Complete => vec![Action::Completed { note: text() }],
            TaskCommand::Cancel => vec![Action::Cancelled { reason: text() }],
            TaskCommand::Escalate => vec![Action::Escalated { reason: text() }],
        }
    }
}

/// Key figures for one owner over a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerKpis {
    pub user_id: UserId,
    pub name: String,
    /// Completed in the period.
    pub done: u32,
    /// ... of which on or before their due time.
    pub done_on_time: u32,
    /// Follow-up call tasks created in the period.
    pub follow_ups: u32,
    /// ... of which the patient was reached within the policy window.
    pub reached_within_policy: u32,
    /// Reviews this person did in the period, and their median turnaround.
    pub reviews: u32,
    pub median_review_turnaround_ms: Option<i64>,
    /// Right now.
    pub open: u32,
    pub overdue: u32,
}

const SUMMARY_COLUMNS: &str = "task_id, title, status, priority, category, level, assignee,
    pool_role, due_at, next_call_due_at, call_attempts, review_stale, updated_at, escalations,
    first_reached_at, created_at, submitted_at";

const OPEN: &str = "('assigned', 'in_progress', 'returned')";

fn summary(row: &Row<'_>, team: &Team, now: Timestamp) -> rusqlite::Result<TaskSummary> {
    let status = index::status_from(&row.get::<_, String>(2)?);
    let category = index::category_from(&row.get::<_, String>(4)?);
    let due_at: Option<i64> = row.get(8)?;
    let next_call: Option<i64> = row.get(9)?;
    let attempts: i64 = row.get(10)?;
    let raised: i64 = row.get(13)?;
    let first_reached: Option<i64> = row.get(14)?;
    let created_at: i64 = row.get(15)?;
    let submitted_at: Option<i64> = row.get(16)?;
    let p = &team.policy;
    let open = !status.is_closed();
    let mut escalations = Vec::new();
    if open {
        if due_at.is_some_and(|d| d < now) {
            escalations.push(Escalation::Overdue);
        }
        if next_call.is_some_and(|d| d < now) {
            escalations.push(Escalation::CallOverdue);
        }
        if first_reached.is_none() && attempts >= i64::from(p.max_call_attempts) {
            escalations.push(Escalation::AttemptsExhausted);
        }
        if category == Category::FollowUpCall
            && first_reached.is_none()
            && created_at.saturating_add(i64::from(p.follow_up_within_hours) * HOUR_MS) < now
        {
            escalations.push(Escalation::FollowUpWindowMissed);
        }
        if status == TaskStatus::Submitted
            && submitted_at
                .is_some_and(|s| s.saturating_add(i64::from(p.review_within_hours) * HOUR_MS) < now)
        {
            escalations.push(Escalation::ReviewOverdue);
        }
        if raised > 0 {
            escalations.push(Escalation::Raised);
        }
    }
    Ok(TaskSummary {
        task_id: row.get(0)?,
        title: row.get(1)?,
        status,
        priority: index::priority_from_rank(row.get(3)?),
        category,
        level: index::level_from(&row.get::<_, String>(5)?),
        assignee: row.get(6)?,
        pool: row
            .get::<_, Option<String>>(7)?
            .and_then(|r| Role::parse(&r)),
        due_at,
        next_call_due_at: next_call,
        call_attempts: u32::try_from(attempts).unwrap_or(0),
        stale_approval: row.get(11)?,
        escalations,
        updated_at: row.get(12)?,
    })
}

/// Tasks of the index that are not archived, as summaries.
fn summaries(
    conn: &Connection,
    team: &Team,
    now: Timestamp,
    sql_where: &str,
    order: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<TaskSummary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM tasks WHERE archived = 0 AND {sql_where} ORDER BY {order}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, |r| summary(r, team, now))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What a list view reads with: the store's read-only connection and the
/// user and team as the writer last left them (see [`Store::read`]).
pub(super) struct Read<'a> {
    pub(super) conn: MutexGuard<'a, Connection>,
    pub(super) seen: Seen,
}

impl Read<'_> {
    fn team(&self) -> Result<&Team> {
        self.seen.team.as_deref().ok_or(Error::NotEnrolled)
    }

    fn me(&self) -> Result<&str> {
        self.seen.user.as_deref().ok_or(Error::NotEnrolled)
    }

    fn now(&self) -> Timestamp {
        self.seen.clock.now()
    }

    fn summaries(
        &self,
        sql_where: &str,
        order: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<TaskSummary>> {
        summaries(&self.conn, self.team()?, self.now(), sql_where, order, args)
    }
}

/// A task's document, read: what its detail is computed from.
struct Opened<'a> {
    task_id: &'a str,
    events: &'a [Event],
    /// The task folded over `events` under the team, when the writer's
    /// cache has it.
    fold: Option<&'a FoldedTask>,
    unreadable: usize,
    patient: Option<PatientRef>,
}

impl Opened<'_> {
    fn detail(
        self,
        conn: &Connection,
        team: &Team,
        user: Option<&str>,
        actor_hex: &str,
        now: Timestamp,
    ) -> Result<TaskDetail> {
        let task_id = self.task_id;
        let built;
        let fold = match self.fold {
            Some(f) => f,
            None => {
                built = FoldedTask::of(task_id, self.events, team);
                &built
            }
        };
        let state = match fold.with_history(self.events) {
            Some(state) => state,
            // A fold of other events than these: never kept, but no reason
            // to show a wrong history.
            None => derive_borrowed(task_id, self.events, team)
                .ok_or_else(|| Error::TaskNotFound(task_id.into()))?,
        };
        // Each command is offered only if the same fold that validates it
        // would apply it now: the buttons cannot disagree with the rules.
        let available = match user {
            Some(user) => TaskCommand::ALL
                .into_iter()
                .filter(|command| {
                    command.candidates(&state, team).into_iter().any(|action| {
                        let event = fold.next_event(actor_hex, user, now, action);
                        fold.clone()
                            .take(task_id, self.events, &event, team)
                            .is_ok()
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        let escalations = summaries(conn, team, now, "task_id = ?1", "task_id", &[&task_id])?
            .pop()
            .map(|s| s.escalations)
            .unwrap_or_default();
        Ok(TaskDetail {
            state,
            patient: self.patient,
            escalations,
            available,
            unreadable_events: self.unreadable,
        })
    }
}

impl Store {
    /// My open tasks: overdue, due today (the phone's local day), upcoming.
    pub fn my_queue(&self) -> Result<MyQueue> {
        let me = self.read().me()?.to_owned();
        self.queue_of(&me)
    }

    /// Someone's open tasks, as they see them (managers watch progress).
    pub fn queue_of(&self, user: &str) -> Result<MyQueue> {
        let db = self.read();
        let now = db.now();
        let local = now + db.seen.utc_offset_ms;
        let end_of_today = local - local.rem_euclid(DAY_MS) + DAY_MS - db.seen.utc_offset_ms;
        let tasks = db.summaries(
            &format!("assignee = ?1 AND status IN {OPEN}"),
            "coalesce(min(coalesce(due_at, next_call_due_at), coalesce(next_call_due_at, due_at)), 9223372036854775807), priority DESC, task_id",
            &[&user],
        )?;
        let mut q = MyQueue::default();
        for t in tasks {
            match t.next_deadline() {
                Some(d) if d < now => q.overdue.push(t),
                Some(d) if d < end_of_today => q.today.push(t),
                _ => q.upcoming.push(t),
            }
        }
        Ok(q)
    }

    /// Unclaimed tasks waiting in my role's pool, most urgent first.
    pub fn shared_pool(&self) -> Result<Vec<TaskSummary>> {
        let role = {
            let db = self.read();
            let me = db.me()?;
            db.team()?
                .member(me)
                .map(|m| m.role)
                .ok_or(Error::NotEnrolled)?
        };
        self.pool_of(role)
    }

    pub fn pool_of(&self, role: Role) -> Result<Vec<TaskSummary>> {
        self.read().summaries(
            "status = 'unassigned' AND pool_role = ?1",
            "priority DESC, coalesce(due_at, 9223372036854775807), created_at, task_id",
            &[&role.as_str()],
        )
    }

    /// Work submitted for review, oldest first; empty for a role that does not review.
    pub fn review_inbox(&self) -> Result<Vec<ReviewItem>> {
        let db = self.read();
        let team = db.team()?;
        if !team.permissions(db.me()?).may_review {
            return Ok(Vec::new());
        }
        let window = i64::from(team.policy.review_within_hours) * HOUR_MS;
        let now = db.now();
        let mut stmt = db.conn.prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM tasks WHERE archived = 0 AND status = 'submitted'
             ORDER BY submitted_at, task_id"
        ))?;
        let rows = stmt.query_map([], |r| {
            let task = summary(r, team, now)?;
            let submitted_at: i64 = r.get::<_, Option<i64>>(16)?.unwrap_or(0);
            Ok(ReviewItem {
                task,
                submitted_at,
                review_due_at: submitted_at.saturating_add(window),
                overdue: submitted_at.saturating_add(window) < now,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// My actions that did not take effect: races lost, approvals gone
    /// stale, changes the relay refused.
    pub fn needs_attention(&self) -> Result<Vec<AttentionItem>> {
        let me = self.read().me()?.to_owned();
        self.attention_of(&me)
    }

    pub fn attention_of(&self, user: &str) -> Result<Vec<AttentionItem>> {
        let db = self.read();
        let mut items = Vec::new();
        let mut stmt = db.conn.prepare_cached(
            "SELECT a.task_id || '/' || a.event_id, a.task_id, t.title, a.action, a.code,
                    a.reason, a.at
             FROM attention a JOIN tasks t ON t.task_id = a.task_id
             WHERE a.user_id = ?1 AND t.archived = 0
               AND NOT EXISTS (SELECT 1 FROM dismissed d
                               WHERE d.event_id = a.task_id || '/' || a.event_id)
             ORDER BY a.at, a.event_id",
        )?;
        for row in stmt.query_map([user], |r| {
            Ok(AttentionItem {
                key: r.get(0)?,
                task_id: r.get(1)?,
                title: r.get(2)?,
                action: r.get(3)?,
                code: r.get(4)?,
                reason: r.get(5)?,
                at: r.get(6)?,
            })
        })? {
            items.push(row?);
        }
        // The outbox holds only this device's own changes.
        if db.seen.user.as_deref() == Some(user) {
            let mut stmt = db.conn.prepare_cached(
                "SELECT 'outbox:' || lower(hex(o.hash)), d.task_id, t.title, o.refused_code,
                        o.refused_reason, o.queued_at, o.bytes, o.doc_id,
                        EXISTS (SELECT 1 FROM dismissed x
                                WHERE x.event_id = 'outbox:' || lower(hex(o.hash)))
                 FROM outbox o LEFT JOIN documents d ON d.doc_id = o.doc_id
                 LEFT JOIN tasks t ON t.task_id = d.task_id
                 WHERE o.refused_code IS NOT NULL
                   -- dismissed ones only to name a task that is gone
                   AND (d.doc_id IS NULL
                        OR NOT EXISTS (SELECT 1 FROM dismissed x
                                       WHERE x.event_id = 'outbox:' || lower(hex(o.hash))))
                 ORDER BY o.id",
            )?;
            let mut refused = Vec::new();
            // A new task the relay refused has no document or index row left
            // on this phone: its own first change names it, for the changes
            // made on it afterwards too.
            let mut never_delivered: HashMap<String, String> = HashMap::new();
            for row in stmt.query_map([], |r| {
                // What the refused change did, named like the other items.
                let first = automerge::Change::from_bytes(r.get::<_, Vec<u8>>(6)?)
                    .ok()
                    .and_then(|c| task_doc::events_in_change(&c).into_iter().next());
                let item = AttentionItem {
                    key: r.get(0)?,
                    task_id: r.get(1)?,
                    title: r.get(2)?,
                    action: first.as_ref().map_or("sync", |e| e.action.name()).into(),
                    code: r.get(3)?,
                    reason: r.get(4)?,
                    at: r.get(5)?,
                };
                let doc_id: String = r.get(7)?;
                let dismissed: bool = r.get(8)?;
                Ok((item, doc_id, first, dismissed))
            })? {
                let (item, doc_id, first, dismissed) = row?;
                if let Some(Action::Created { handoff, .. }) = first.map(|e| e.action) {
                    if item.task_id.is_none() {
                        never_delivered.insert(doc_id.clone(), handoff.title);
                    }
                }
                if !dismissed {
                    refused.push((item, doc_id));
                }
            }
            for (mut item, doc_id) in refused {
                if item.title.is_none() {
                    item.title = never_delivered.get(&doc_id).cloned();
                }
                items.push(item);
            }
        }
        Ok(items)
    }

    /// The user has seen this item; stop showing it.
    pub fn dismiss_attention(&self, key: &str) -> Result<()> {
        self.lock()
            .conn
            .prepare_cached("INSERT OR IGNORE INTO dismissed (event_id) VALUES (?1)")?
            .execute([key])?;
        Ok(())
    }

    /// One task with its handoff, checklist, calls, reviews and full history.
    ///
    /// From the writer's cached document when the writer is free; while a
    /// write or a merge holds it, from the last commit through the views'
    /// connection, so opening a task never waits for sync.
    pub fn task_detail(&self, task_id: &str) -> Result<TaskDetail> {
        let Some(mut db) = self.try_lock() else {
            let read = self.read();
            // One read transaction: the snapshot, the changes and the outbox
            // as of one commit (a delivery moves a change between the last two).
            let tx = read.conn.unchecked_transaction()?;
            let doc_id = index::doc_of(&tx, task_id)?;
            let doc = docs::load(&tx, &doc_id, &ActorId::random())?
                .ok_or(Error::Corrupt("indexed task has no document"))?;
            drop(tx);
            let (events, unreadable) = task_doc::events(&doc);
            let opened = Opened {
                task_id,
                events: &events,
                fold: None,
                unreadable,
                patient: task_doc::patient(&doc),
            };
            return opened.detail(
                &read.conn,
                read.team()?,
                read.seen.user.as_deref(),
                &read.seen.actor_hex,
                read.now(),
            );
        };
        let doc_id = index::doc_of(&db.conn, task_id)?;
        let Db { conn, st } = &mut *db;
        let mut doc = match st.docs.take(&doc_id) {
            Some(d) => d,
            None => docs::load(conn, &doc_id, &st.actor)?
                .ok_or(Error::Corrupt("indexed task has no document"))?,
        };
        // Kept in the cache beside the document: the write that usually
        // follows opening a task (logging the call) need not parse them again.
        let heads = doc.get_heads();
        let mut parsed = st.docs.take_events(&doc_id, &doc, &heads);
        let patient = task_doc::patient(&doc);
        st.docs.put(&doc_id, doc);
        // Folded once here, judges the commands offered, and is kept for the
        // write that follows.
        if let (None, Some(team)) = (&parsed.folded, st.team.as_ref()) {
            parsed.folded = Some(FoldedTask::of(task_id, &parsed.events, team));
        }
        let opened = Opened {
            task_id,
            events: &parsed.events,
            fold: parsed.folded.as_ref(),
            unreadable: parsed.unreadable,
            patient,
        };
        let detail = match st.team.as_ref() {
            Some(team) => opened.detail(
                conn,
                team,
                st.user.as_deref(),
                &st.actor_hex,
                st.clock.now(),
            ),
            None => Err(Error::NotEnrolled),
        };
        st.docs.put_events(&doc_id, heads, parsed);
        detail
    }

    /// Every task id on this device that is not archived, in id order.
    pub fn task_ids(&self) -> Result<Vec<TaskId>> {
        let db = self.read();
        let mut stmt = db
            .conn
            .prepare_cached("SELECT task_id FROM tasks WHERE archived = 0 ORDER BY task_id")?;
        let ids = stmt.query_map([], |r| r.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// KPIs per owner for `[from, to)`, and open/overdue counts as of now.
    pub fn kpis(&self, from: Timestamp, to: Timestamp) -> Result<Vec<OwnerKpis>> {
        if from > to {
            return Err(Error::InvalidInput(
                "the period ends before it starts".into(),
            ));
        }
        let db = self.read();
        let team = db.team()?;
        let now = db.now();
        let window = i64::from(team.policy.follow_up_within_hours) * HOUR_MS;
        let mut by_user: std::collections::BTreeMap<String, OwnerKpis> = Default::default();
        let mut stmt = db.conn.prepare_cached(&format!(
            "SELECT assignee,
               sum(status = 'completed' AND completed_at >= ?1 AND completed_at < ?2),
               sum(status = 'completed' AND completed_at >= ?1 AND completed_at < ?2
                   AND (due_at IS NULL OR completed_at <= due_at)),
               sum(category = 'follow_up_call' AND created_at >= ?1 AND created_at < ?2),
               sum(category = 'follow_up_call' AND created_at >= ?1 AND created_at < ?2
                   AND first_reached_at IS NOT NULL AND first_reached_at - created_at <= ?3),
               sum(status IN {OPEN} OR status = 'submitted'),
               sum((status IN {OPEN} OR status = 'submitted') AND due_at < ?4)
             FROM tasks WHERE assignee IS NOT NULL GROUP BY assignee"
        ))?;
        let rows = stmt.query_map(params![from, to, window, now], |r| {
            let n = |i: usize| -> rusqlite::Result<u32> {
                Ok(u32::try_from(r.get::<_, Option<i64>>(i)?.unwrap_or(0)).unwrap_or(0))
            };
            Ok(OwnerKpis {
                user_id: r.get(0)?,
                done: n(1)?,
                done_on_time: n(2)?,
                follow_ups: n(3)?,
                reached_within_policy: n(4)?,
                open: n(5)?,
                overdue: n(6)?,
                ..Default::default()
            })
        })?;
        for k in rows {
            let k = k?;
            by_user.insert(k.user_id.clone(), k);
        }
        let mut stmt = db.conn.prepare_cached(
            "SELECT reviewed_by, reviewed_at - review_submitted_at FROM tasks
             WHERE reviewed_by IS NOT NULL AND reviewed_at >= ?1 AND reviewed_at < ?2
             ORDER BY reviewed_by, 2",
        )?;
        let mut turnarounds: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for row in stmt.query_map(params![from, to], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (user, t) = row?;
            turnarounds.entry(user).or_default().push(t);
        }
        for (user, mut ts) in turnarounds {
            ts.sort_unstable();
            let k = by_user.entry(user.clone()).or_insert_with(|| OwnerKpis {
                user_id: user,
                ..Default::default()
            });
            k.reviews = u32::try_from(ts.len()).unwrap_or(u32::MAX);
            k.median_review_turnaround_ms = ts.get(ts.len() / 2).copied();
        }
        let mut out: Vec<OwnerKpis> = by_user.into_values().collect();
        for k in &mut out {
            k.name = team
                .member(&k.user_id)
                .map(|m| m.name.clone())
                .unwrap_or_default();
        }
        Ok(out)
    }
}
