//! Limits on what people type, judged where an event is made (the store's
//! commands) and where it enters the feed (the relay), so text a phone
//! would refuse to write never reaches another phone either. Errors name
//! the field and the limit, never the text.

use crate::error::{Error, Result};
use crate::event::Action;
use crate::model::Handoff;

/// The longest free text a person may enter (call notes, comments...).
pub const MAX_TEXT: usize = 10_000;
/// Names and titles.
pub const MAX_NAME: usize = 200;
/// One checklist item or script question.
pub const MAX_ITEM: usize = 1_000;
/// A whole action, as JSON: one event, with room to spare, in a change the
/// relay takes ([`crate::sync::wire::MAX_CHANGE`], 512 KB). Every field can
/// be within its limit and the whole still too large (sixty script answers
/// of 10,000 characters): the relay would refuse it, and it would never
/// reach the team.
pub const MAX_ACTION_BYTES: usize = 256 * 1024;

impl Action {
    /// Does every field of this action fit its limit, and the whole?
    pub fn check_input(&self) -> Result<()> {
        self.check_fields()?;
        let bytes = serde_json::to_vec(self)?.len();
        if bytes > MAX_ACTION_BYTES {
            return Err(Error::InvalidInput(format!(
                "this entry is too long to send ({} KB; {} KB at most)",
                bytes.div_ceil(1024),
                MAX_ACTION_BYTES / 1024
            )));
        }
        Ok(())
    }

    fn check_fields(&self) -> Result<()> {
        match self {
            Action::Created {
                handoff,
                checklist,
                questions,
                ..
            } => {
                check_handoff(handoff)?;
                for item in checklist {
                    check_text("checklist item", item, MAX_ITEM)?;
                }
                for q in questions {
                    check_text("script question", q, MAX_ITEM)?;
                }
                Ok(())
            }
            Action::CallLogged { attempt } => {
                check_text("call notes", &attempt.notes, MAX_TEXT)?;
                check_opt("contact used", &attempt.contact_used, MAX_NAME)?;
                for a in &attempt.answers {
                    check_text("script question", &a.question, MAX_ITEM)?;
                    check_text("script answer", &a.answer, MAX_TEXT)?;
                }
                Ok(())
            }
            Action::Commented { text } => check_nonempty("comment", text, MAX_TEXT),
            Action::Returned { feedback } => check_nonempty("feedback", feedback, MAX_TEXT),
            Action::Escalated { reason } => check_nonempty("reason", reason, MAX_TEXT),
            Action::Cancelled { reason } => check_text("reason", reason, MAX_TEXT),
            Action::Acknowledged { note }
            | Action::Submitted { note }
            | Action::Approved { note, .. }
            | Action::Completed { note } => check_text("note", note, MAX_TEXT),
            Action::Assigned { .. }
            | Action::Claimed
            | Action::Started
            | Action::ChecklistItemDone { .. } => Ok(()),
        }
    }
}

fn check_handoff(h: &Handoff) -> Result<()> {
    check_nonempty("title", &h.title, MAX_NAME)?;
    check_text("outcome", &h.outcome, MAX_TEXT)?;
    check_text("why", &h.why, MAX_TEXT)?;
    Ok(())
}

pub(crate) fn check_text(field: &str, s: &str, max: usize) -> Result<()> {
    // Bytes bound characters from above: most text needs no count.
    if s.len() > max && s.chars().count() > max {
        return Err(Error::InvalidInput(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_nonempty(field: &str, s: &str, max: usize) -> Result<()> {
    if s.trim().is_empty() {
        return Err(Error::InvalidInput(format!("{field} is empty")));
    }
    check_text(field, s, max)
}

pub(crate) fn check_opt(field: &str, s: &Option<String>, max: usize) -> Result<()> {
    s.as_deref().map_or(Ok(()), |s| check_text(field, s, max))
}
