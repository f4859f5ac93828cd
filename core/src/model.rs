//! The clinic's vocabulary: who does the work, what a handoff carries, what a
//! follow-up call produced. Plain data, no I/O.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = i64;
/// A staff member's id inside their team (chosen by the admin, e.g. `"dr.lee"`).
pub type UserId = String;
/// A task's id: stable across redaction, unlike the document holding it.
pub type TaskId = String;

/// Ids (users, templates, documents): 1-64 letters, digits or `. _ - @`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

pub const HOUR_MS: i64 = 60 * 60 * 1000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// A role in the practice. What each role may do is data in the team
/// document ([`RolePermissions`]); these are the roles the product knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Clinician,
    Manager,
    ClinicalAssistant,
    FrontDesk,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Clinician,
        Role::Manager,
        Role::ClinicalAssistant,
        Role::FrontDesk,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Manager => "manager",
            Role::ClinicalAssistant => "clinical_assistant",
            Role::FrontDesk => "front_desk",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The permissions a new team starts with; an admin may change them.
    pub fn default_permissions(self) -> RolePermissions {
        let none = RolePermissions::default();
        match self {
            Role::Clinician => RolePermissions {
                may_delegate: true,
                may_review: true,
                may_hold_clinician_only: true,
                ..none
            },
            Role::Manager => RolePermissions {
                may_delegate: true,
                may_review: true,
                may_manage_team: true,
                ..none
            },
            Role::ClinicalAssistant => none,
            Role::FrontDesk => none,
            Role::Admin => RolePermissions {
                may_manage_team: true,
                ..none
            },
        }
    }
}

/// What a role may do. Stored per role in the team document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolePermissions {
    /// Create tasks for others, assign and reassign, cancel.
    pub may_delegate: bool,
    /// Approve or return submitted work ("trust but verify").
    pub may_review: bool,
    /// Hold a clinician-only task (needs the licence).
    pub may_hold_clinician_only: bool,
    /// Change members, devices, SOP templates and policies.
    pub may_manage_team: bool,
}

/// How far a task may be delegated (from the practice guides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelegationLevel {
    /// Administrative and patient-engagement work anyone on the team may do.
    Delegable,
    /// Both roles do distinct parts (chart prep, patient education, med lists).
    Shared,
    /// Clinical judgement: only a role with the licence may hold it.
    ClinicianOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
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
}

/// Outcome of one follow-up call attempt (as on AHRQ's RED follow-up form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Reached,
    Voicemail,
    NoAnswer,
    Busy,
    NotHome,
    WrongNumber,
    Declined,
    Rescheduled,
}

/// The clear handoff a delegator writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub title: String,
    /// The outcome wanted, e.g. "contact all post-treatment patients within
    /// 48 hours and document recovery status".
    pub outcome: String,
    /// Why it matters.
    pub why: String,
    pub due: Option<Timestamp>,
    pub priority: Priority,
    pub category: Category,
    pub level: DelegationLevel,
    /// The SOP or call script to follow (an id in the team's templates).
    pub sop: Option<String>,
    /// Where the result goes (a user), when not back to the delegator.
    pub route_result_to: Option<UserId>,
}

/// The minimum a task needs to know about its patient. Lives apart from the
/// event list so that a redaction can drop it with its history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientRef {
    pub display_name: String,
    pub phone: Option<String>,
    /// The practice's own record number, not a national id.
    pub record_ref: Option<String>,
}

/// An answer to one question of the call script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptAnswer {
    pub question: String,
    pub answer: String,
}

/// One follow-up call attempt and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAttempt {
    pub outcome: CallOutcome,
    /// The number or alternate contact used.
    pub contact_used: Option<String>,
    pub notes: String,
    pub answers: Vec<ScriptAnswer>,
    pub next_attempt_due: Option<Timestamp>,
}

/// A named checklist and/or call questionnaire, e.g. "Follow-Up Call SOP CLN-003".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SopTemplate {
    pub id: String,
    pub name: String,
    pub checklist: Vec<String>,
    pub questions: Vec<String>,
}

/// Team policies: data, not code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Follow-up calls should reach the patient within this many hours of the task's creation.
    pub follow_up_within_hours: u32,
    /// After this many attempts without reaching the patient, escalate.
    pub max_call_attempts: u32,
    /// A submitted task should be reviewed within this many hours, else it escalates.
    pub review_within_hours: u32,
    /// Finished tasks older than this may be evicted from a phone.
    pub archive_after_days: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            follow_up_within_hours: 48,
            max_call_attempts: 3,
            review_within_hours: 72,
            archive_after_days: 30,
        }
    }
}

/// A staff member of the team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: UserId,
    pub name: String,
    pub role: Role,
    /// Trusted staff complete work without review; others submit for review.
    pub trusted: bool,
    pub active: bool,
}

/// A phone or terminal enrolled in the team, writing with its own actor id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The automerge actor id, hex.
    pub actor: String,
    pub user_id: UserId,
    pub revoked: bool,
}
