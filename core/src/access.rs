//! Who may read and write which document. The relay filters what it sends
//! with these functions, so a phone and the relay can never disagree.

use crate::derive::{Outcome, TaskState};
use crate::team::Team;

/// May `user` read this task? Reviewers (managers, clinicians) see every
/// task; others see what they created, what they hold or receive the result
/// of, what waits unassigned in their role's pool, and tasks where an action
/// of theirs did not take effect. Reassignment moves visibility with the task.
pub fn may_read_task(team: &Team, user: &str, task: &TaskState) -> bool {
    let Some(member) = team.member(user).filter(|m| m.active) else {
        return false;
    };
    let perms = team.role_permissions(member.role);
    perms.may_review
        || perms.may_delegate
        || task.created_by == user
        || task.assignee.as_deref() == Some(user)
        || task.handoff.route_result_to.as_deref() == Some(user)
        || (task.assignee.is_none() && task.pool == Some(member.role))
        // Whoever lost a race on it (a claim, a stale approval) keeps seeing
        // it, so their phone learns the outcome.
        || task
            .history
            .iter()
            .any(|h| h.by == user && !matches!(h.outcome, Outcome::Applied))
}

/// May `user` write to the team document? (The relay alone enrols devices.)
pub fn may_change_team(team: &Team, user: &str) -> bool {
    team.member(user).is_some_and(|m| m.active) && team.permissions(user).may_manage_team
}
