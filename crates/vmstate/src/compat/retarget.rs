//! Rewriting a stream for an older (or other) destination, where nothing of its state is lost.
//!
//! Three rewrites lose nothing: a command the destination does not know and that carries no
//! state is dropped; the machine type is renamed to the destination's (the destination must
//! then run that machine type); a section's version is lowered to the destination's when the
//! stream, read at the lower version, holds no field the destination would not read. Anything
//! else the destination would refuse is refused here, with the field and its value named.
//!
//! A destination known by its release alone gets what that release decides: commands
//! dropped, the machine type renamed to the release's of its family (`pc-q35-10.0` becomes
//! `pc-q35-7.2`); versions, which need its schema, are left as they are.

use serde::Serialize;

use super::release::machine_for_release;
use super::stream::check_stream;
use super::{Destination, Problem, ProblemKind};
use crate::devices::VirtioSection;
use crate::schema::Schema;
use crate::stream::{self, Record, Stream, StructValue, Value};

/// Commands that carry no state: a destination that does not know them loses nothing when
/// they are dropped (SWITCHOVER_START only tells the destination that the switchover began).
const STATELESS_COMMANDS: &[u16] = &[0x0b];

/// One rewrite [`retarget`] made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What was rewritten: `machine`, `command` or `version`.
    pub what: &'static str,
    /// The section or command concerned.
    pub section: String,
    /// The change, in words.
    pub message: String,
    /// Where it was in the stream that was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

enum Plan {
    Machine(String),
    DropCommand(u64),
    LowerVersion {
        idstr: String,
        instance: u32,
        to: u32,
    },
}

/// Rewrites `stream` so that the destination `dst` loads it, and lists what was changed.
/// `devices` are the stream's decoded virtio devices. When anything cannot be rewritten
/// without losing state, nothing is changed and every refusal is returned, each naming the
/// field and the value it holds.
pub fn retarget(
    stream: &mut Stream,
    devices: &[VirtioSection],
    dst: Destination<'_>,
) -> std::result::Result<Vec<Change>, Vec<Problem>> {
    let carried = Schema::from_stream(stream, devices);
    let found = check_stream(stream, devices, &carried, dst);
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    for problem in found.problems {
        match plan(stream, &carried, dst, &problem) {
            Some(p) => plans.push((p, problem)),
            None => refused.push(explain(stream, problem)),
        }
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    let mut changes = Vec::with_capacity(plans.len());
    for (plan, problem) in plans {
        changes.push(apply(stream, plan, &problem).map_err(|reason| {
            vec![Problem {
                message: format!("{}: {reason}", problem.message),
                ..problem
            }]
        })?);
    }
    // A lowered version may leave fields the destination does not read at that version.
    let again = check_stream(stream, devices, &Schema::from_stream(stream, devices), dst);
    if !again.problems.is_empty() {
        return Err(again
            .problems
            .into_iter()
            .map(|p| explain(stream, p))
            .collect());
    }
    Ok(changes)
}

fn plan(
    stream: &Stream,
    carried: &Schema,
    dst: Destination<'_>,
    problem: &Problem,
) -> Option<Plan> {
    match problem.kind {
        ProblemKind::MachineType => match dst {
            Destination::Schema(schema, _) => schema.machine.clone(),
            Destination::Release(release) => stream
                .configuration()
                .and_then(|c| machine_for_release(&c.machine, release)),
        }
        .map(Plan::Machine),
        ProblemKind::UnknownCommand => {
            let offset = problem.offset?;
            stream
                .commands()
                .into_iter()
                .find(|c| {
                    c.span.offset == offset
                        && STATELESS_COMMANDS.contains(&c.number)
                        && c.payload.is_empty()
                        && c.packaged.is_none()
                })
                .map(|c| Plan::DropCommand(c.span.offset))
        }
        ProblemKind::VersionTooNew if problem.field.is_none() => {
            let Destination::Schema(dst, _) = dst else {
                return None;
            };
            let section = carried.section(&problem.section)?;
            let vmsd = section.vmsd_name()?;
            let to = dst.sections_of(vmsd).map(|s| s.version_id).max()?;
            Some(Plan::LowerVersion {
                idstr: section.name.clone(),
                instance: section.instance_id.unwrap_or(0),
                to,
            })
        }
        _ => None,
    }
}

fn apply(
    stream: &mut Stream,
    plan: Plan,
    problem: &Problem,
) -> std::result::Result<Change, String> {
    match plan {
        Plan::Machine(to) => {
            let from = rename_machine(stream, &to)?;
            Ok(Change {
                what: "machine",
                section: "configuration".to_owned(),
                message: format!(
                    "machine type {from} renamed {to}: the destination must run -machine {to}"
                ),
                offset: problem.offset,
            })
        }
        Plan::DropCommand(offset) => {
            let name = drop_command(&mut stream.records, offset)
                .ok_or_else(|| format!("no command at offset {offset}"))?;
            Ok(Change {
                what: "command",
                section: "commands".to_owned(),
                message: format!(
                    "command {name} dropped: it carries no state, and the destination does not \
                     know it"
                ),
                offset: Some(offset),
            })
        }
        Plan::LowerVersion {
            idstr,
            instance,
            to,
        } => {
            let mut from = None;
            for record in &mut stream.records {
                if let Record::Section(s) = record {
                    if s.idstr == idstr && s.instance_id == instance {
                        from.get_or_insert(s.version_id);
                        s.version_id = to;
                    }
                }
            }
            let from = from.ok_or_else(|| format!("no section {idstr} instance {instance}"))?;
            Ok(Change {
                what: "version",
                section: idstr,
                message: format!(
                    "version {from} lowered to {to}: every field it carries is one version {to} reads"
                ),
                offset: problem.offset,
            })
        }
    }
}

fn rename_machine(stream: &mut Stream, to: &str) -> std::result::Result<String, String> {
    let len = u64::try_from(to.len()).map_err(|e| e.to_string())?;
    let config = stream
        .records
        .iter_mut()
        .find_map(|r| match r {
            Record::Configuration(c) => Some(c),
            _ => None,
        })
        .ok_or("the stream has no configuration section")?;
    let from = std::mem::replace(&mut config.machine, to.to_owned());
    for field in &mut config.state.fields {
        match field.name.as_str() {
            "len" => field.value = Value::Unsigned(len),
            "name" => {
                field.value = Value::Raw(to.as_bytes().to_vec());
                field.size = len;
            }
            _ => {}
        }
    }
    if let Some(trailer) = &mut stream.trailer {
        trailer.json =
            stream::set_configuration_name_size(&trailer.json, len).map_err(|e| e.to_string())?;
    }
    Ok(from)
}

fn drop_command(records: &mut Vec<Record>, offset: u64) -> Option<&'static str> {
    let at = records
        .iter()
        .position(|r| matches!(r, Record::Command(c) if c.span.offset == offset));
    if let Some(at) = at {
        if let Record::Command(c) = records.remove(at) {
            return Some(c.name);
        }
    }
    records.iter_mut().find_map(|r| match r {
        Record::Command(c) => c
            .packaged
            .as_mut()
            .and_then(|p| drop_command(&mut p.records, offset)),
        _ => None,
    })
}

/// The refusal of `problem`, with the value the stream holds there.
fn explain(stream: &Stream, mut problem: Problem) -> Problem {
    let value = problem
        .field
        .as_deref()
        .and_then(|field| held_value(stream, &problem.section, field));
    if let Some(value) = value {
        problem.message = format!("{} (the stream holds {value})", problem.message);
    }
    problem
}

/// What the stream holds in `field` (a field or a subsection) of section `idstr`.
fn held_value(stream: &Stream, idstr: &str, field: &str) -> Option<String> {
    let section = stream.sections().into_iter().find(|s| s.idstr == idstr)?;
    match &section.body {
        stream::SectionBody::Device(state) => find_value(state, field),
        _ => None,
    }
}

fn find_value(state: &StructValue, name: &str) -> Option<String> {
    if let Some(sub) = state.subsection(name) {
        return Some(format!("{name} = {{{}}}", render_struct(&sub.state)));
    }
    for field in &state.fields {
        if field.name == name {
            return Some(format!("{name} = {}", render(&field.value)));
        }
        if let Value::Struct(inner) = &field.value {
            if let Some(found) = find_value(inner, name) {
                return Some(found);
            }
        }
    }
    state
        .subsections
        .iter()
        .find_map(|s| find_value(&s.state, name))
}

fn render_struct(state: &StructValue) -> String {
    state
        .fields
        .iter()
        .map(|f| format!("{}: {}", f.name, render(&f.value)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn render(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Unsigned(n) => format!("{n:#x}"),
        Value::Signed(n) => n.to_string(),
        Value::Text(t) => format!("{t:?}"),
        Value::Raw(bytes) if bytes.len() <= 16 => crate::hex::hex(bytes),
        Value::Raw(bytes) => format!("{} bytes", bytes.len()),
        Value::Struct(s) => format!("{{{}}}", render_struct(s)),
        Value::Array(items) => format!("[{} elements]", items.len()),
        Value::Uints(items) => format!("[{} numbers]", items.len()),
    }
}
