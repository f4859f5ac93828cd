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

/// How far past a task's newest generation (0 for a task not seen yet) a
/// document's generation may go. Each redaction takes the next one; a
/// phone that redacted a task several times before it synced skips a
/// few. The relay looks at each generation below a document's for copies
/// of events, so an id like `<task>.4294967295` would cost it billions of
/// lookups.
pub const MAX_GENERATION_STEP: i64 = 64;

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
    let read = read_change(change);
    (read.task_id, read.generation)
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
///
/// Two delegators who remove the patient's details at the same time each
/// lay out the next generation, so its document can hold two events lists
/// (a conflict at the root). The events are those of every list: each
/// redactor's copies, and what was appended to either. Copies of one event
/// share its id; [`crate::derive`] counts an id once.
pub fn events(doc: &AutoCommit) -> (Vec<Event>, usize) {
    let lists = match doc.get_all(ROOT, "events") {
        Ok(values) => values,
        Err(_) => return (Vec::new(), 0),
    };
    let mut skipped = 0;
    let mut events = Vec::new();
    for (value, list) in lists {
        if !matches!(value, Value::Object(ObjType::List)) {
            continue;
        }
        events.extend(doc.list_range(&list, ..).filter_map(|item| {
            let parsed = item.value.as_ref_str().and_then(parse_event);
            if parsed.is_none() {
                skipped += 1;
            }
            parsed
        }));
    }
    (events, skipped)
}

/// Append to the events list every replica with the same changes sees
/// first (automerge's winner of a conflict at the root, see [`events`]).
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

/// An event as a document holds it: JSON, with its clock reading and
/// Lamport time in range. One out of range (written by hand, not by an app)
/// is skipped like one that does not parse: arithmetic on it would
/// overflow, and it would sort after every event written later.
fn parse_event(s: &str) -> Option<Event> {
    /// Year 5138, in ms since 1970.
    const LATEST: i64 = 100_000_000_000_000;
    let e: Event = serde_json::from_str(s).ok()?;
    ((0..=LATEST).contains(&e.at) && e.lt <= crate::event::MAX_LT).then_some(e)
}

/// The events a change inserts (what the relay checks before storing it),
/// without loading the document. Strings that are not events are skipped,
/// as [`events`] skips them.
pub fn events_in_change(change: &automerge::Change) -> Vec<Event> {
    read_change(change).events
}

/// What a change does to a task document, read once from its operations.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRead {
    /// The events it inserts (strings that are not events are skipped).
    pub events: Vec<Event>,
    /// The `task_id` and `generation` it writes at the root, if it does.
    pub task_id: Option<String>,
    pub generation: Option<i64>,
    /// It writes the patient's details (a layout's patient map).
    pub patient_details: bool,
    pub shape: Shape,
}

/// The only two kinds of change a task document takes. The events list is
/// named by the operation that made it, `"<counter>@<actor hex>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A document's first change: `task_id`, `generation`, the events list,
    /// the patient map and its fields, and events appended to that list.
    Layout { events_list: String },
    /// Events (strings) appended to one list, and nothing else; `None` for
    /// a change with no operations.
    Appends { list: Option<String> },
    /// Anything else: deleting or overwriting events, the layout or
    /// values of another type. Taken in, it would quietly remove events or
    /// the whole task from every phone, while the relay still counted them.
    Malformed(&'static str),
}

/// A change's operations, or `None` for one automerge parses but cannot
/// read: its operations name an actor past the change's list of them
/// (a hand-made change; automerge panics on it).
pub(crate) fn decoded(change: &automerge::Change) -> Option<automerge::ExpandedChange> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode())).ok()
}

/// Read a change's events, layout and shape in one pass.
pub fn read_change(change: &automerge::Change) -> ChangeRead {
    use automerge::legacy::{Key, ObjectId, OpId, OpType};
    let Some(decoded) = decoded(change) else {
        return ChangeRead {
            events: Vec::new(),
            task_id: None,
            generation: None,
            patient_details: false,
            shape: Shape::Malformed("its operations name actors it does not list"),
        };
    };
    let first = decoded.deps.is_empty();
    let mut read = ChangeRead {
        events: Vec::new(),
        task_id: None,
        generation: None,
        patient_details: false,
        shape: Shape::Appends { list: None },
    };
    // Objects by the operation that made them; named as strings at the end.
    let mut events_list: Option<OpId> = None;
    let mut patient: Option<OpId> = None;
    let mut appended_to: Option<&OpId> = None;
    let mut malformed: Option<&'static str> = None;
    let made_here = |i: usize| OpId(decoded.start_op.get() + i as u64, decoded.actor_id.clone());
    for (i, op) in decoded.operations.iter().enumerate() {
        let obj = match &op.obj {
            ObjectId::Root => None,
            ObjectId::Id(o) => Some(o),
        };
        let key = match &op.key {
            Key::Map(k) => Some(k.as_str()),
            Key::Seq(_) => None,
        };
        if op.insert {
            if let OpType::Put(ScalarValue::Str(s)) = &op.action {
                read.events.extend(parse_event(s));
            }
        }
        match (&op.action, obj, key) {
            (OpType::Put(ScalarValue::Str(s)), None, Some("task_id")) => {
                read.task_id = Some(s.to_string());
            }
            (OpType::Put(ScalarValue::Int(g)), None, Some("generation")) => {
                read.generation = Some(*g);
            }
            (OpType::Put(ScalarValue::Uint(g)), None, Some("generation")) => {
                read.generation = i64::try_from(*g).ok();
            }
            _ => {}
        }
        let fits = match (&op.action, obj, key) {
            _ if !op.pred.is_empty() => false,
            (OpType::Put(ScalarValue::Str(_)), Some(list), None) if op.insert => {
                match appended_to {
                    Some(l) if l != list => false,
                    _ => {
                        appended_to = Some(list);
                        !first || events_list.as_ref() == Some(list)
                    }
                }
            }
            _ if !first || op.insert => false,
            (OpType::Put(ScalarValue::Str(_)), None, Some("task_id")) => true,
            (OpType::Put(ScalarValue::Int(_) | ScalarValue::Uint(_)), None, Some("generation")) => {
                true
            }
            (OpType::Make(ObjType::List), None, Some("events")) if events_list.is_none() => {
                events_list = Some(made_here(i));
                true
            }
            (OpType::Make(ObjType::Map), None, Some("patient")) if patient.is_none() => {
                patient = Some(made_here(i));
                true
            }
            (
                OpType::Put(ScalarValue::Str(_)),
                Some(map),
                Some("display_name" | "phone" | "record_ref"),
            ) => {
                let details = patient.as_ref() == Some(map);
                read.patient_details |= details;
                details
            }
            _ => false,
        };
        if !fits && malformed.is_none() {
            malformed = Some(if first {
                "a task document's first change lays it out and appends events, nothing else"
            } else {
                "a change to a task document only appends events"
            });
        }
    }
    let name = |id: &OpId| format!("{}@{}", id.0, id.1.to_hex_string());
    read.shape = match (malformed, first, events_list) {
        (Some(why), _, _) => Shape::Malformed(why),
        (None, true, Some(list)) => Shape::Layout {
            events_list: name(&list),
        },
        (None, true, None) => {
            Shape::Malformed("a task document's first change makes its events list")
        }
        (None, false, _) => Shape::Appends {
            list: appended_to.map(name),
        },
    };
    read
}
