//! A schema as an indented, readable tree.

use std::fmt::Write;

use super::{Count, Description, Field, Origin, Schema};

/// One line per section, struct, field and subsection, indented by nesting. Arrays show
/// their count (`[1024]`, `[?]` where a dump gives no counts), sizes are bytes of one
/// element (`?` where the size varies).
pub fn render_tree(schema: &Schema) -> String {
    let mut out = String::new();
    let origin = match schema.origin {
        Origin::Dump => "a -dump-vmstate file",
        Origin::Stream => "a stream",
    };
    let _ = writeln!(
        out,
        "schema of {origin}: machine {}, {} section(s)",
        schema.machine.as_deref().unwrap_or("(not stated)"),
        schema.sections.len()
    );
    for section in &schema.sections {
        let _ = write!(out, "{}", section.name);
        if let Some(id) = section.instance_id {
            let _ = write!(out, " instance {id}");
        }
        let _ = write!(out, " version {}", section.version_id);
        if let Some(min) = section.minimum_version_id {
            let _ = write!(out, " (loads {min}..={})", section.version_id);
        }
        if let Some(offset) = section.offset {
            let _ = write!(out, " at offset {offset}");
        }
        match &section.description {
            Some(desc) => {
                let _ = writeln!(out, ": {}", desc.name);
                description(&mut out, desc, 1);
            }
            None => {
                let _ = writeln!(out, ": no VMState description");
            }
        }
    }
    out
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn description(out: &mut String, desc: &Description, depth: usize) {
    for field in &desc.fields {
        line(out, field, depth);
    }
    for sub in &desc.subsections {
        indent(out, depth);
        let _ = write!(out, "subsection {}", sub.name);
        if let Some(v) = sub.version_id {
            let _ = write!(out, " version {v}");
        }
        out.push('\n');
        description(out, sub, depth.saturating_add(1));
    }
}

fn line(out: &mut String, field: &Field, depth: usize) {
    indent(out, depth);
    let _ = write!(out, "{}", field.name);
    match field.count {
        Count::One => {}
        Count::Array(num) => {
            let _ = write!(out, "[{num}]");
        }
        Count::Unknown => out.push_str("[?]"),
    }
    if let Some(t) = &field.type_name {
        let _ = write!(out, " {t}");
    }
    match (field.size, &field.description) {
        (0, Some(_)) => {}
        (0, None) => out.push_str(" ? bytes"),
        (n, _) => {
            let _ = write!(out, " {n} bytes");
        }
    }
    if field.version_id > 0 {
        let _ = write!(out, " (since version {})", field.version_id);
    }
    if field.field_exists {
        out.push_str(" (when present)");
    }
    match &field.description {
        Some(nested) => {
            let _ = writeln!(out, ": {}", nested.name);
            description(out, nested, depth.saturating_add(1));
        }
        None => out.push('\n'),
    }
}
