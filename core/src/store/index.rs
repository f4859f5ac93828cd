//! The SQLite index the views read, written from a derived [`TaskState`] in
//! the same transaction as the change that produced it.

use rusqlite::{params, Connection, OptionalExtension};

use crate::derive::{HistoryEntry, Outcome, TaskState, TaskStatus, Verdict};
use crate::error::{Error, Result};
use crate::model::{Category, DelegationLevel, Priority};

pub(crate) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) fn priority_rank(p: Priority) -> i64 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Urgent => 3,
    }
}

pub(crate) fn priority_from_rank(r: i64) -> Priority {
    match r {
        0 => Priority::Low,
        2 => Priority::High,
        3 => Priority::Urgent,
        _ => Priority::Normal,
    }
}

pub(crate) fn category_from(s: &str) -> Category {
    serde_json::from_value(serde_json::Value::String(s.into())).unwrap_or(Category::Other)
}

pub(crate) fn level_from(s: &str) -> DelegationLevel {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .unwrap_or(DelegationLevel::Delegable)
}

/// The document currently holding a task, refusing archived ones.
pub(crate) fn doc_of(conn: &Connection, task_id: &str) -> Result<String> {
    let row: Option<(String, bool)> = conn
        .prepare_cached("SELECT doc_id, archived FROM tasks WHERE task_id = ?1")?
        .query_row([task_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        None => Err(Error::TaskNotFound(task_id.into())),
        Some((_, true)) => Err(Error::Archived(task_id.into())),
        Some((doc_id, false)) => Ok(doc_id),
    }
}

/// The task's row and its needs-attention rows (from `s.history`).
pub(crate) fn upsert(conn: &Connection, doc_id: &str, s: &TaskState) -> Result<()> {
    upsert_row(conn, doc_id, s)?;
    write_attention(conn, &s.task_id, &s.history)
}

/// The task's row alone: for a write that changed no event's outcome.
pub(crate) fn upsert_row(conn: &Connection, doc_id: &str, s: &TaskState) -> Result<()> {
    let (reviewed_by, reviewed_at, review_submitted_at, stale) = match &s.last_review {
        Some(r) => (
            Some(r.by.as_str()),
            Some(r.at),
            Some(r.submitted_at),
            matches!(r.verdict, Verdict::Approved { .. }) && r.stale,
        ),
        None => (None, None, None, false),
    };
    // Columns that are in a secondary index are only written when they
    // change, so a logged call does not rewrite four index B-trees (each an
    // encrypted page in the WAL).
    conn.prepare_cached(
        "INSERT INTO tasks (task_id, doc_id, title, status, level, priority, category, pool_role,
            assignee, created_by, created_at, updated_at, due_at, submitted_at, completed_at,
            reviewed_by, reviewed_at, review_submitted_at, review_stale, next_call_due_at,
            call_attempts, first_reached_at, escalations, archived)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23, 0)
         ON CONFLICT (task_id) DO UPDATE SET title = excluded.title, level = excluded.level,
            priority = excluded.priority, category = excluded.category,
            created_by = excluded.created_by, created_at = excluded.created_at,
            updated_at = excluded.updated_at, due_at = excluded.due_at,
            submitted_at = excluded.submitted_at, completed_at = excluded.completed_at,
            reviewed_by = excluded.reviewed_by, reviewed_at = excluded.reviewed_at,
            review_submitted_at = excluded.review_submitted_at,
            review_stale = excluded.review_stale, next_call_due_at = excluded.next_call_due_at,
            call_attempts = excluded.call_attempts, first_reached_at = excluded.first_reached_at,
            escalations = excluded.escalations",
    )?
    .execute(params![
        s.task_id,
        doc_id,
        s.handoff.title,
        s.status.as_str(),
        enum_str(&s.handoff.level),
        priority_rank(s.handoff.priority),
        enum_str(&s.handoff.category),
        s.pool.map(|r| r.as_str()),
        s.assignee,
        s.created_by,
        s.created_at,
        s.updated_at,
        s.handoff.due,
        s.submitted.as_ref().map(|x| x.1),
        s.completed.as_ref().map(|x| x.1),
        reviewed_by,
        reviewed_at,
        review_submitted_at,
        stale,
        s.next_call_due(),
        s.calls.len() as i64,
        s.first_reached_at(),
        s.escalations.len() as i64,
    ])?;
    conn.prepare_cached(
        "UPDATE tasks SET doc_id = ?2, status = ?3, pool_role = ?4, assignee = ?5
         WHERE task_id = ?1 AND (doc_id IS NOT ?2 OR status IS NOT ?3 OR pool_role IS NOT ?4
            OR assignee IS NOT ?5)",
    )?
    .execute(params![
        s.task_id,
        doc_id,
        s.status.as_str(),
        s.pool.map(|r| r.as_str()),
        s.assignee
    ])?;

    Ok(())
}

/// The task's needs-attention rows: one per event of `history` that did not
/// take effect.
pub(crate) fn write_attention(
    conn: &Connection,
    task_id: &str,
    history: &[HistoryEntry],
) -> Result<()> {
    conn.prepare_cached("DELETE FROM attention WHERE task_id = ?1")?
        .execute([task_id])?;
    let mut insert = conn.prepare_cached(
        "INSERT OR REPLACE INTO attention (task_id, event_id, user_id, action, code, reason, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for h in history {
        if let Outcome::Refused { refusal } | Outcome::Superseded { refusal } = &h.outcome {
            insert.execute(params![
                task_id,
                h.event_id,
                h.by,
                h.action.name(),
                refusal.code(),
                refusal.to_string(),
                h.at
            ])?;
        }
    }
    Ok(())
}

pub(crate) fn status_from(s: &str) -> TaskStatus {
    TaskStatus::parse(s).unwrap_or(TaskStatus::Assigned)
}
