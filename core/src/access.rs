//! Who may read and write which document. The relay filters what it sends
//! with these functions, so a phone and the relay can never disagree.

use crate::derive::TaskState;
use crate::team::Team;

/// May `user` read this task? Reviewers (managers, clinicians) see every
/// task; others see what they created, what they hold or receive the result
/// of, and what waits unassigned in their role's pool. Reassignment moves
/// visibility with the task: the relay still sends whoever loses sight of a
/// task the change that took it from them (and what came before it), so
/// their phone learns where it went, who won a claim race, or that their
/// work arrived after the task moved ([`losing_sight`]).
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
}

/// The members who may read the task as it was `before` a change and not
/// as it is `after` it.
pub fn losing_sight(team: &Team, before: &TaskState, after: Option<&TaskState>) -> Vec<String> {
    team.members
        .keys()
        .filter(|user| {
            may_read_task(team, user, before)
                && !after.is_some_and(|a| may_read_task(team, user, a))
        })
        .cloned()
        .collect()
}

/// May `user` write to the team document? (The relay alone enrols devices.)
pub fn may_change_team(team: &Team, user: &str) -> bool {
    team.member(user).is_some_and(|m| m.active) && team.permissions(user).may_manage_team
}
