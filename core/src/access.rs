//! Who may read and write which document, and what a member's role lets
//! them do ([`may_act`]). The relay filters what it sends and judges what
//! it takes in with these functions, so a phone and the relay can never
//! disagree.

use crate::derive::{Refusal, TaskState};
use crate::event::{Action, Event};
use crate::model::{DelegationLevel, Role};
use crate::team::Team;

/// May `user` read this task? Reviewers (managers, clinicians) see every
/// task; others see what they created, what they hold or receive the result
/// of, and what waits unassigned in their role's pool. Reassignment moves
/// visibility with the task: the relay still sends whoever loses sight of a
/// task the change that took it from them (and what came before it), so
/// their phone learns where it went, who won a claim race, or that their
/// work arrived after the task moved ([`losing_sight`]).
pub fn may_read_task(team: &Team, user: &str, task: &TaskState) -> bool {
    sight(team, user).is_some_and(|sight| reads_task_with(sight, user, task))
}

fn reads_task_with(sight: Sight, user: &str, task: &TaskState) -> bool {
    reads_with(
        sight,
        user,
        &task.created_by,
        task.assignee.as_deref(),
        task.handoff.route_result_to.as_deref(),
        task.pool,
    )
}

/// [`may_read_task`] for someone who sees as `sight` says.
fn reads_with(
    sight: Sight,
    user: &str,
    created_by: &str,
    assignee: Option<&str>,
    route_result_to: Option<&str>,
    pool: Option<Role>,
) -> bool {
    sight.every_task
        || created_by == user
        || assignee == Some(user)
        || route_result_to == Some(user)
        || (assignee.is_none() && pool == Some(sight.role))
}

/// The parts of a task that decide who may read it ([`may_read_task`]):
/// kept from before a change, to tell who lost sight of it with the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whereabouts {
    pub created_by: String,
    pub assignee: Option<String>,
    pub route_result_to: Option<String>,
    pub pool: Option<Role>,
}

impl Whereabouts {
    pub fn of(task: &TaskState) -> Whereabouts {
        Whereabouts {
            created_by: task.created_by.clone(),
            assignee: task.assignee.clone(),
            route_result_to: task.handoff.route_result_to.clone(),
            pool: task.pool,
        }
    }

    /// Is `task` where this says (could its readers have changed)?
    pub fn still(&self, task: &TaskState) -> bool {
        self.created_by == task.created_by
            && self.assignee == task.assignee
            && self.route_result_to == task.handoff.route_result_to
            && self.pool == task.pool
    }

    /// [`may_read_task`] of a task with these whereabouts.
    pub fn readable_by(&self, team: &Team, user: &str) -> bool {
        sight(team, user).is_some_and(|sight| self.readable_with(sight, user))
    }

    /// Did `user` create, hold or receive the result of the task?
    fn theirs(&self, user: &str) -> bool {
        self.created_by == user
            || self.assignee.as_deref() == Some(user)
            || self.route_result_to.as_deref() == Some(user)
    }

    fn readable_with(&self, sight: Sight, user: &str) -> bool {
        reads_with(
            sight,
            user,
            &self.created_by,
            self.assignee.as_deref(),
            self.route_result_to.as_deref(),
            self.pool,
        )
    }
}

/// What the team decides of which tasks a member may read
/// ([`may_read_task`]); `None` for someone inactive or not a member. When
/// it changes, so may what they can read without any task changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sight {
    /// Their role: its pool.
    pub role: Role,
    /// Reviewers and delegators see every task.
    pub every_task: bool,
}

pub fn sight(team: &Team, user: &str) -> Option<Sight> {
    let member = team.member(user).filter(|m| m.active)?;
    Some(sight_of(team, member))
}

/// What `member`'s role lets them read, active or not.
fn sight_of(team: &Team, member: &crate::model::Member) -> Sight {
    sight_with(member, team.role_permissions(member.role))
}

fn sight_with(member: &crate::model::Member, perms: crate::model::RolePermissions) -> Sight {
    Sight {
        role: member.role,
        every_task: perms.may_review || perms.may_delegate,
    }
}

/// The [`sight`] of the user an enrolled device writes for, read straight
/// from the team document (cheap enough after every change of a page):
/// `None` while the document does not list the device yet.
pub fn device_sight(team_doc: &automerge::AutoCommit, actor: &str) -> Option<Option<Sight>> {
    let member = crate::team::device_member(team_doc, actor)?;
    Some(
        member
            .filter(|(m, _)| m.active)
            .map(|(m, perms)| sight_with(&m, perms)),
    )
}

/// The members who may read the task as it was `before` a change and not
/// as it is `after` it. Members deactivated (on leave) count too, for a
/// task that was theirs in person (they created, held or receive it): back
/// one day, their phone holds it as it was, and must be sent where it
/// went. Not for their role's pool, nor (a reviewer) every task: they were
/// sent none of those while away, and need not be sent them on return.
pub fn losing_sight(team: &Team, before: &Whereabouts, after: Option<&TaskState>) -> Vec<String> {
    team.members
        .iter()
        .filter(|(user, member)| {
            let sight = sight_of(team, member);
            let had = match member.active {
                true => before.readable_with(sight, user),
                false => before.theirs(user),
            };
            had && !after.is_some_and(|a| reads_task_with(sight, user, a))
        })
        .map(|(user, _)| user.clone())
        .collect()
}

/// May `user` write to the team document? (The relay alone enrols devices.)
pub fn may_change_team(team: &Team, user: &str) -> bool {
    team.member(user).is_some_and(|m| m.active) && team.permissions(user).may_manage_team
}

/// May the author of `event` do what it does, given their role in `team`
/// and the task as they saw it (`seen`: the events it builds on; `None`
/// before the task exists)?
///
/// This is the door: a phone asks it before it writes an event, and the
/// relay asks it, with the team as it is then, before it takes the event
/// into the feed. [`crate::derive`] does not ask it again: every event a
/// phone folds came through a door, so a later change of role or of what a
/// role may do never undoes work that was allowed when it was done
/// (demoting a manager leaves the tasks they delegated where they are).
/// What the task's state decides (a race for a claim, a closed task, a
/// stale approval) stays with `derive`, where every phone judges it alike.
pub fn may_act(team: &Team, seen: Option<&TaskState>, event: &Event) -> Result<(), Refusal> {
    let by = event.by.as_str();
    let Some(author) = team.member(by) else {
        return Err(Refusal::NotAMember { user: by.into() });
    };
    if team.device_user(&event.id.actor) != Some(by) {
        return Err(Refusal::DeviceNotEnrolled { user: by.into() });
    }
    let perms = team.role_permissions(author.role);
    let not_permitted = |action: &str| {
        Err(Refusal::NotPermitted {
            action: action.into(),
        })
    };
    let holds = |task: &TaskState| task.assignee.as_deref() == Some(by);
    match (&event.action, seen) {
        (
            Action::Created {
                handoff,
                pool,
                assignee,
                ..
            },
            _,
        ) => {
            if let Some(a) = assignee {
                if a != by && !perms.may_delegate {
                    return not_permitted("delegate tasks");
                }
                may_hold(team, a, handoff.level)?;
            }
            if let (Some(role), DelegationLevel::ClinicianOnly) = (pool, handoff.level) {
                if !team.role_permissions(*role).may_hold_clinician_only {
                    return not_permitted("pool a clinician-only task for that role");
                }
            }
            Ok(())
        }
        // Everything else is judged on the task the author saw, which
        // must exist.
        (_, None) => Err(Refusal::NotCreatedYet),
        (Action::Assigned { to }, Some(task)) => {
            if !perms.may_delegate {
                return not_permitted("assign tasks");
            }
            may_hold(team, to, task.handoff.level)
        }
        (Action::Claimed, Some(task)) => {
            if task.pool.is_some_and(|pool| pool != author.role) {
                return Err(Refusal::NotInPool);
            }
            may_hold(team, by, task.handoff.level)
        }
        (action, Some(task)) if action.is_work() || matches!(action, Action::Submitted { .. }) => {
            if holds(task) || perms.may_review {
                Ok(())
            } else {
                Err(Refusal::NotAssignee)
            }
        }
        (Action::Approved { .. }, _) if !perms.may_review => not_permitted("approve work"),
        (Action::Returned { .. }, _) if !perms.may_review => not_permitted("return work"),
        (Action::Completed { .. }, Some(task)) if !perms.may_review => {
            if !holds(task) {
                Err(Refusal::NotAssignee)
            } else if !author.trusted {
                Err(Refusal::NeedsReview)
            } else {
                Ok(())
            }
        }
        (Action::Cancelled { .. }, Some(task))
            if !(perms.may_delegate || task.created_by == by) =>
        {
            not_permitted("cancel tasks")
        }
        _ => Ok(()),
    }
}

/// May `user` hold a task of this delegation level? Any member may, active
/// or not (giving work to an inactive member is refused by the command
/// that would, `Store::assign`); clinician-only work needs a role with the
/// licence.
fn may_hold(team: &Team, user: &str, level: DelegationLevel) -> Result<(), Refusal> {
    let member = team
        .member(user)
        .ok_or_else(|| Refusal::NotAMember { user: user.into() })?;
    if level == DelegationLevel::ClinicianOnly
        && !team.role_permissions(member.role).may_hold_clinician_only
    {
        return Err(Refusal::ClinicianOnly { user: user.into() });
    }
    Ok(())
}
