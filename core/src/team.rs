//! The team document: members and roles, enrolled devices, SOP templates and
//! policies. One automerge document per team; each entry is a JSON string
//! under a map key, so concurrent edits of different members merge and an
//! edit of the same member resolves last-writer-wins.

use std::collections::BTreeMap;

use automerge::{AutoCommit, ObjType, ReadDoc, ROOT};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Device, Member, Policy, Role, RolePermissions, SopTemplate, UserId};

const MEMBERS: &str = "members";
const DEVICES: &str = "devices";
const ROLES: &str = "roles";
const SOPS: &str = "sops";
const POLICY: &str = "policy";

/// Read a string out of an automerge value reference.
pub(crate) trait AsRefStr {
    fn as_ref_str(&self) -> Option<&str>;
}

impl AsRefStr for automerge::ValueRef<'_> {
    fn as_ref_str(&self) -> Option<&str> {
        match self {
            automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// How far a change of the team reaches into the tasks' derived state
/// ([`Team::reach_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Roles, names, templates, policy, a member made inactive: no task
    /// derives differently (what a role allows was judged at the door).
    Nothing,
    /// New members or devices: the tasks with an event refused because
    /// its author, its device or the user it names was not known yet, and
    /// tasks whose first event was (they have no state at all yet).
    WaitingForTheTeam,
    /// Every task.
    Everything,
}

/// The team as every device derives it from the team document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Team {
    pub name: String,
    pub members: BTreeMap<UserId, Member>,
    /// By actor id (hex).
    pub devices: BTreeMap<String, Device>,
    pub roles: BTreeMap<Role, RolePermissions>,
    pub sops: BTreeMap<String, SopTemplate>,
    pub policy: Policy,
}

impl Team {
    pub fn member(&self, user: &str) -> Option<&Member> {
        self.members.get(user)
    }

    /// The permissions of a member's current role (none for a stranger).
    pub fn permissions(&self, user: &str) -> RolePermissions {
        self.members
            .get(user)
            .map(|m| self.role_permissions(m.role))
            .unwrap_or_default()
    }

    pub fn role_permissions(&self, role: Role) -> RolePermissions {
        self.roles
            .get(&role)
            .copied()
            .unwrap_or_else(|| role.default_permissions())
    }

    /// The user a device actor is enrolled for.
    pub fn device_user(&self, actor: &str) -> Option<&str> {
        self.devices.get(actor).map(|d| d.user_id.as_str())
    }

    /// Which tasks' derived state a change from `before` to `self` can
    /// alter. Deriving a task reads the team only through two questions:
    /// is this user a member, and which user does this device write for
    /// ([`crate::derive`]). Members and devices are only ever added, so
    /// an answer that was yes stays yes; a change that only adds can turn
    /// a "no" into a "yes", which matters only to tasks where some event
    /// was refused for that "no".
    pub fn reach_from(&self, before: Option<&Team>) -> Reach {
        let Some(before) = before else {
            return Reach::Everything;
        };
        let lost_member = before
            .members
            .keys()
            .any(|user| !self.members.contains_key(user));
        let moved_device = before
            .devices
            .iter()
            .any(|(actor, d)| self.device_user(actor) != Some(d.user_id.as_str()));
        if lost_member || moved_device {
            // Not something this app writes; a team rebuilt without a
            // refused change can get here. Everything, to be safe.
            Reach::Everything
        } else if self.members.len() > before.members.len()
            || self.devices.len() > before.devices.len()
        {
            Reach::WaitingForTheTeam
        } else {
            Reach::Nothing
        }
    }

    /// Read the team from its document. Entries that do not parse are
    /// skipped (a newer app may have written them), never fatal.
    pub fn read(doc: &AutoCommit) -> Team {
        let name = match doc.get(ROOT, "name") {
            Ok(Some((v, _))) => v.as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        let policy = read_map::<Policy>(doc, POLICY)
            .remove("current")
            .unwrap_or_default();
        Team {
            name,
            members: read_map(doc, MEMBERS),
            devices: read_map(doc, DEVICES),
            roles: read_map::<RolePermissions>(doc, ROLES)
                .into_iter()
                .filter_map(|(k, v)| Role::parse(&k).map(|r| (r, v)))
                .collect(),
            sops: read_map(doc, SOPS),
            policy,
        }
    }
}

/// Does a change to the team document `doc` only do what the app does: set
/// the team's name, or set entries in its sections, each the JSON of what
/// that section holds? One that deletes, makes objects (a new `members` map
/// would replace every member) or writes anything else is refused by the
/// relay: read back, it would silently drop members, roles or the policy.
pub fn change_fits(change: &automerge::Change, doc: &AutoCommit) -> bool {
    use automerge::legacy::{Key, ObjectId, OpType};
    let sections: Vec<(String, &str)> = [MEMBERS, DEVICES, ROLES, SOPS, POLICY]
        .iter()
        .filter_map(|s| match doc.get(ROOT, *s) {
            Ok(Some((automerge::Value::Object(ObjType::Map), id))) => Some((id.to_string(), *s)),
            _ => None,
        })
        .collect();
    let Some(decoded) = crate::task_doc::decoded(change) else {
        return false;
    };
    decoded.operations.iter().all(|op| {
        let (OpType::Put(automerge::ScalarValue::Str(value)), Key::Map(key), false) =
            (&op.action, &op.key, op.insert)
        else {
            return false;
        };
        let obj = match &op.obj {
            ObjectId::Root => return key.as_str() == "name",
            ObjectId::Id(o) => format!("{}@{}", o.0, o.1.to_hex_string()),
        };
        let parses =
            |json: &str| -> bool {
                match sections.iter().find(|(id, _)| *id == obj).map(|(_, s)| *s) {
                    Some(MEMBERS) => serde_json::from_str::<Member>(json)
                        .is_ok_and(|m| m.user_id == key.as_str()),
                    Some(DEVICES) => {
                        serde_json::from_str::<Device>(json).is_ok_and(|d| d.actor == key.as_str())
                    }
                    Some(ROLES) => {
                        Role::parse(key).is_some()
                            && serde_json::from_str::<RolePermissions>(json).is_ok()
                    }
                    Some(SOPS) => serde_json::from_str::<SopTemplate>(json)
                        .is_ok_and(|t| t.id == key.as_str()),
                    Some(POLICY) => {
                        key.as_str() == "current" && serde_json::from_str::<Policy>(json).is_ok()
                    }
                    _ => false,
                }
            };
        parses(value)
    })
}

/// One entry of a section, without reading the rest of the document (for
/// following a team change by change): `None` when it is missing or not
/// what that section holds, as [`Team::read`] leaves such an entry out.
fn read_entry<T: DeserializeOwned>(doc: &AutoCommit, map: &str, key: &str) -> Option<T> {
    let Ok(Some((_, obj))) = doc.get(ROOT, map) else {
        return None;
    };
    let Ok(Some((value, _))) = doc.get(&obj, key) else {
        return None;
    };
    serde_json::from_str(value.as_str()?).ok()
}

/// Can `change` alter what `user`, on the device `actor`, may read: does it
/// write their member entry, the device's, a role's permissions, or the
/// document's sections themselves? (Cheaper than applying it to see.)
pub fn may_move_sight(change: &automerge::Change, user: &str, actor: &str) -> bool {
    use automerge::legacy::{Key, ObjectId};
    let Some(decoded) = crate::task_doc::decoded(change) else {
        return true;
    };
    decoded
        .operations
        .iter()
        .any(|op| match (&op.obj, &op.key) {
            (ObjectId::Root, _) => true,
            (_, Key::Map(key)) => {
                key.as_str() == user || key.as_str() == actor || Role::parse(key).is_some()
            }
            (_, Key::Seq(_)) => true,
        })
}

/// The member an enrolled device writes for, and what their role allows,
/// read from the document as [`Team::read`] would: the outer `None` while
/// the document does not list the device, the inner while it lists no
/// such member.
pub fn device_member(doc: &AutoCommit, actor: &str) -> Option<Option<(Member, RolePermissions)>> {
    let device = read_entry::<Device>(doc, DEVICES, actor)?;
    Some(
        read_entry::<Member>(doc, MEMBERS, &device.user_id).map(|member| {
            let perms = read_entry(doc, ROLES, member.role.as_str())
                .unwrap_or_else(|| member.role.default_permissions());
            (member, perms)
        }),
    )
}

fn read_map<T: DeserializeOwned>(doc: &AutoCommit, map: &str) -> BTreeMap<String, T> {
    let Ok(Some((_, obj))) = doc.get(ROOT, map) else {
        return BTreeMap::new();
    };
    doc.map_range(&obj, ..)
        .filter_map(|item| {
            let json = item.value.as_ref_str()?;
            let value = serde_json::from_str(json).ok()?;
            Some((item.key.into_owned(), value))
        })
        .collect()
}

/// Writes to a team document. Permission checks live in the store, which
/// knows who is writing.
pub struct TeamWriter<'a>(pub &'a mut AutoCommit);

impl TeamWriter<'_> {
    /// Lay out a new team document with default role permissions and policy.
    pub fn init(&mut self, name: &str) -> Result<()> {
        use automerge::transaction::Transactable;
        self.0.put(ROOT, "name", name)?;
        for map in [MEMBERS, DEVICES, ROLES, SOPS, POLICY] {
            self.0.put_object(ROOT, map, ObjType::Map)?;
        }
        for role in Role::ALL {
            self.put(ROLES, role.as_str(), &role.default_permissions())?;
        }
        self.put(POLICY, "current", &Policy::default())
    }

    pub fn put<T: Serialize>(&mut self, map: &str, key: &str, value: &T) -> Result<()> {
        use automerge::transaction::Transactable;
        let obj = match self.0.get(ROOT, map)? {
            Some((_, obj)) => obj,
            None => return Err(Error::Corrupt("team document lacks a section")),
        };
        let json = serde_json::to_string(value)?;
        // Writing an unchanged value would still be an op; skip it.
        if let Ok(Some((old, _))) = self.0.get(&obj, key) {
            if old.as_str() == Some(json.as_str()) {
                return Ok(());
            }
        }
        self.0.put(&obj, key, json)?;
        Ok(())
    }

    pub fn member(&mut self, m: &Member) -> Result<()> {
        self.put(MEMBERS, &m.user_id, m)
    }
    pub fn device(&mut self, d: &Device) -> Result<()> {
        self.put(DEVICES, &d.actor, d)
    }
    pub fn sop(&mut self, s: &SopTemplate) -> Result<()> {
        self.put(SOPS, &s.id, s)
    }
    pub fn policy(&mut self, p: &Policy) -> Result<()> {
        self.put(POLICY, "current", p)
    }
    pub fn role(&mut self, role: Role, p: &RolePermissions) -> Result<()> {
        self.put(ROLES, role.as_str(), p)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Device;

    fn member(id: &str, role: Role) -> Member {
        Member {
            user_id: id.into(),
            name: id.into(),
            role,
            trusted: false,
            active: true,
        }
    }

    fn clinic() -> Team {
        let mut t = Team::default();
        for (id, role) in [("max", Role::Manager), ("ana", Role::ClinicalAssistant)] {
            t.members.insert(id.into(), member(id, role));
        }
        t.devices.insert(
            "aa01".into(),
            Device {
                actor: "aa01".into(),
                user_id: "ana".into(),
                revoked: false,
            },
        );
        t
    }

    #[test]
    fn what_a_change_of_the_team_can_alter_in_the_tasks() {
        let before = clinic();
        assert_eq!(before.reach_from(None), Reach::Everything);
        assert_eq!(before.reach_from(Some(&before)), Reach::Nothing);

        let mut changed = before.clone();
        changed.policy.max_call_attempts = 9;
        changed.name = "Riverside".into();
        let ana = changed.members.get_mut("ana").unwrap();
        ana.role = Role::FrontDesk;
        ana.active = false;
        changed.devices.get_mut("aa01").unwrap().revoked = true;
        assert_eq!(changed.reach_from(Some(&before)), Reach::Nothing);

        let mut hired = before.clone();
        hired
            .members
            .insert("nia".into(), member("nia", Role::FrontDesk));
        assert_eq!(hired.reach_from(Some(&before)), Reach::WaitingForTheTeam);
        let mut enrolled = before.clone();
        enrolled.devices.insert(
            "bb02".into(),
            Device {
                actor: "bb02".into(),
                user_id: "max".into(),
                revoked: false,
            },
        );
        assert_eq!(enrolled.reach_from(Some(&before)), Reach::WaitingForTheTeam);

        // What this app never writes, but a team rebuilt without a refused
        // change can show: a member or a device gone, a device moved.
        let mut lost = before.clone();
        lost.members.remove("ana");
        assert_eq!(lost.reach_from(Some(&before)), Reach::Everything);
        let mut moved = hired.clone();
        moved.devices.get_mut("aa01").unwrap().user_id = "nia".into();
        assert_eq!(moved.reach_from(Some(&before)), Reach::Everything);
        let mut unplugged = before.clone();
        unplugged.devices.clear();
        assert_eq!(unplugged.reach_from(Some(&before)), Reach::Everything);
    }
}
