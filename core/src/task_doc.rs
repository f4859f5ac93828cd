//! Layout of one task's automerge document:
//!
//! ```text
//! { task_id: str, generation: int, redacted_from?: str,
//!   events: [ str(JSON Event), ... ],      // append-only
//!   patient: { display_name, phone, record_ref } }
//! ```
//!
//! `generation` grows with each redaction, which re-creates the document.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};

use crate::error::Result;
use crate::event::Event;
use crate::model::PatientRef;
use crate::team::AsRefStr;

/// A new task document. The actor is set first: setting it later would
/// commit the layout as a separate change that never reaches the outbox.
pub fn new_doc(task_id: &str, generation: i64, actor: &ActorId) -> Result<AutoCommit> {
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    doc.put(ROOT, "task_id", task_id)?;
    doc.put(ROOT, "generation", generation)?;
    doc.put_object(ROOT, "events", ObjType::List)?;
    doc.put_object(ROOT, "patient", ObjType::Map)?;
    Ok(doc)
}

/// A task document's id: `<task>` for generation 0, `<task>.<g>` after `g`
/// redactions.
pub fn doc_id_of(task: &str, generation: i64) -> String {
    if generation == 0 {
        task.to_owned()
    } else {
        format!("{task}.{generation}")
    }
}

/// The task and generation a document id names. Only the form
/// [`doc_id_of`] writes counts: `a.01` or `a.0` is generation 0 of a task
/// so named.
pub fn split_doc_id(doc: &str) -> (&str, i64) {
    if let Some((task, g)) = doc.rsplit_once('.') {
        if let Ok(generation) = g.parse::<u32>() {
            if generation > 0 && g == generation.to_string() {
                return (task, i64::from(generation));
            }
        }
    }
    (doc, 0)
}

/// Does this document hold what its id says (its `task_id` and
/// `generation`)? A document that does not is ignored: it could otherwise
/// pose as a newer generation of someone else's task.
pub fn matches_id(doc: &AutoCommit, doc_id: &str) -> bool {
    task_id(doc).is_some_and(|task| doc_id_of(&task, generation(doc)) == doc_id)
}

/// The `task_id` and `generation` a change writes at the document's root
/// (a task document's first change writes both), if it writes them.
pub fn layout_in_change(change: &automerge::Change) -> (Option<String>, Option<i64>) {
    let mut task = None;
    let mut generation = None;
    for op in change.decode().operations {
        if !matches!(op.obj, automerge::legacy::ObjectId::Root) {
            continue;
        }
        let key = match &op.key {
            automerge::legacy::Key::Map(k) => k.as_str(),
            _ => continue,
        };
        match (key, &op.action) {
            ("task_id", automerge::legacy::OpType::Put(ScalarValue::Str(s))) => {
                task = Some(s.to_string());
            }
            ("generation", automerge::legacy::OpType::Put(ScalarValue::Int(g))) => {
                generation = Some(*g);
            }
            ("generation", automerge::legacy::OpType::Put(ScalarValue::Uint(g))) => {
                generation = i64::try_from(*g).ok();
            }
            _ => {}
        }
    }
    (task, generation)
}

pub fn task_id(doc: &AutoCommit) -> Option<String> {
    match doc.get(ROOT, "task_id") {
        Ok(Some((v, _))) => v.as_str().map(str::to_owned),
        _ => None,
    }
}

pub fn generation(doc: &AutoCommit) -> i64 {
    match doc.get(ROOT, "generation") {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Int(i) => *i,
            ScalarValue::Uint(u) => i64::try_from(*u).unwrap_or(i64::MAX),
            _ => 0,
        },
        _ => 0,
    }
}

fn events_obj(doc: &AutoCommit) -> Option<ObjId> {
    match doc.get(ROOT, "events") {
        Ok(Some((Value::Object(ObjType::List), id))) => Some(id),
        _ => None,
    }
}

/// The events, in list order. One that does not parse (written by a newer
/// app, or damaged) is skipped and counted, never fatal.
pub fn events(doc: &AutoCommit) -> (Vec<Event>, usize) {
    let Some(list) = events_obj(doc) else {
        return (Vec::new(), 0);
    };
    let mut skipped = 0;
    let events = doc
        .list_range(&list, ..)
        .filter_map(|item| {
            let parsed = item
                .value
                .as_ref_str()
                .and_then(|s| serde_json::from_str::<Event>(s).ok());
            if parsed.is_none() {
                skipped += 1;
            }
            parsed
        })
        .collect();
    (events, skipped)
}

pub fn append(doc: &mut AutoCommit, event: &Event) -> Result<()> {
    let list = match events_obj(doc) {
        Some(l) => l,
        None => doc.put_object(ROOT, "events", ObjType::List)?,
    };
    let len = doc.length(&list);
    doc.insert(&list, len, serde_json::to_string(event)?)?;
    Ok(())
}

fn patient_obj(doc: &mut AutoCommit) -> Result<ObjId> {
    Ok(match doc.get(ROOT, "patient")? {
        Some((Value::Object(ObjType::Map), id)) => id,
        _ => doc.put_object(ROOT, "patient", ObjType::Map)?,
    })
}

pub(crate) fn put_patient(doc: &mut AutoCommit, p: &PatientRef) -> Result<()> {
    let obj = patient_obj(doc)?;
    doc.put(&obj, "display_name", p.display_name.as_str())?;
    for (key, value) in [("phone", &p.phone), ("record_ref", &p.record_ref)] {
        match value {
            Some(v) => doc.put(&obj, key, v.as_str())?,
            None => {
                if doc.get(&obj, key)?.is_some() {
                    doc.delete(&obj, key)?;
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn patient(doc: &AutoCommit) -> Option<PatientRef> {
    let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(ROOT, "patient") else {
        return None;
    };
    let get = |k: &str| match doc.get(&obj, k) {
        Ok(Some((v, _))) => v.as_str().map(str::to_owned),
        _ => None,
    };
    let display_name = get("display_name")?;
    Some(PatientRef {
        display_name,
        phone: get("phone"),
        record_ref: get("record_ref"),
    })
}

/// The events a change inserts (what the relay checks before storing it),
/// without loading the document. Strings that are not events are skipped,
/// as [`events`] skips them.
pub fn events_in_change(change: &automerge::Change) -> Vec<Event> {
    change
        .decode()
        .operations
        .iter()
        .filter(|op| op.insert)
        .filter_map(|op| match &op.action {
            automerge::legacy::OpType::Put(ScalarValue::Str(s)) => {
                serde_json::from_str::<Event>(s).ok()
            }
            _ => None,
        })
        .collect()
}
