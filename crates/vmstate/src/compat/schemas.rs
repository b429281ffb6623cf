//! Schema against schema, as QEMU's static checker compares two `-dump-vmstate` files, but
//! without stopping at the first field mismatch of a description.

use super::release::{knows_virtio_subsection, Release};
use super::{Problem, ProblemKind};
use crate::schema::{virtio::VIRTIO_TYPE, Description, Field, Schema, SectionSchema};

/// Section names that changed between releases with the same state (QEMU commit 292b1634).
const RENAMED_SECTIONS: &[(&str, &str)] = &[("ICH9 LPC", "ICH9-LPC")];

/// Every problem of migrating from what `src` describes to what `dst` describes, in `src`'s
/// section order. `releases` are the two sides' QEMU releases where known: they decide the
/// virtio internals that `-dump-vmstate` does not show.
pub fn compare_schemas(
    src: &Schema,
    dst: &Schema,
    releases: (Option<Release>, Option<Release>),
) -> Vec<Problem> {
    let mut out = Vec::new();
    if let (Some(s), Some(d)) = (&src.machine, &dst.machine) {
        if s != d {
            out.push(Problem::new(
                ProblemKind::MachineType,
                "vmschkmachine",
                format!("incompatible machine types: \"{s}\", \"{d}\""),
            ));
        }
    }
    for section in &src.sections {
        let Some(target) = counterpart(dst, &section.name) else {
            out.push(Problem::new(
                ProblemKind::SectionMissing,
                &section.name,
                format!(
                    "section \"{}\" does not exist in the destination",
                    section.name
                ),
            ));
            continue;
        };
        compare_section(&mut out, section, target);
        if let Some(desc) = &section.description {
            virtio_internals(&mut out, &section.name, desc, releases);
        }
    }
    out
}

fn counterpart<'a>(dst: &'a Schema, name: &str) -> Option<&'a SectionSchema> {
    dst.section(name).or_else(|| {
        RENAMED_SECTIONS.iter().find_map(|(a, b)| match name {
            n if n == *a => dst.section(b),
            n if n == *b => dst.section(a),
            _ => None,
        })
    })
}

fn compare_section(out: &mut Vec<Problem>, src: &SectionSchema, dst: &SectionSchema) {
    versions(
        out,
        &src.name,
        None,
        src.version_id,
        (Some(dst.version_id), dst.minimum_version_id),
    );
    match (&src.description, &dst.description) {
        (Some(s), Some(d)) => compare_descriptions(out, &src.name, s, d),
        (Some(s), None) => out.push(
            Problem::new(
                ProblemKind::DescriptionMissing,
                &src.name,
                "the destination's class has no description".to_owned(),
            )
            .in_description(&s.name),
        ),
        _ => {}
    }
}

/// The static checker's version test: above the destination's version, or below its minimum.
fn versions(
    out: &mut Vec<Problem>,
    section: &str,
    description: Option<&str>,
    version: u32,
    (dst_version, dst_minimum): (Option<u32>, Option<u32>),
) {
    let with = |p: Problem| match description {
        Some(d) => p.in_description(d),
        None => p,
    };
    if let Some(d) = dst_version.filter(|d| version > *d) {
        out.push(with(Problem::new(
            ProblemKind::VersionTooNew,
            section,
            format!("version error: {version} > {d}"),
        )));
    }
    if let Some(m) = dst_minimum.filter(|m| version < *m) {
        out.push(with(Problem::new(
            ProblemKind::VersionTooOld,
            section,
            format!("minimum version error: {version} < {m}"),
        )));
    }
}

fn compare_descriptions(
    out: &mut Vec<Problem>,
    section: &str,
    src: &Description,
    dst: &Description,
) {
    if let Some(v) = src.version_id {
        versions(
            out,
            section,
            Some(&src.name),
            v,
            (dst.version_id, dst.minimum_version_id),
        );
    }
    if src.name != dst.name {
        out.push(
            Problem::new(
                ProblemKind::DescriptionRenamed,
                section,
                format!(
                    "description \"{}\" missing, got \"{}\" instead",
                    src.name, dst.name
                ),
            )
            .in_description(&src.name),
        );
        return;
    }
    if !src.fields.is_empty() && dst.fields.is_empty() {
        out.push(
            Problem::new(
                ProblemKind::FieldsMissing,
                section,
                format!(
                    "the destination's description has no fields (the source's has {})",
                    src.fields.len()
                ),
            )
            .in_description(&src.name),
        );
    } else {
        compare_fields(out, section, &src.name, &src.fields, &dst.fields);
    }
    for sub in &src.subsections {
        match dst.subsection(&sub.name) {
            Some(d) => compare_descriptions(out, section, sub, d),
            None => {
                let why = if dst.subsections.is_empty() {
                    " (the destination's description has no subsections)"
                } else {
                    ""
                };
                out.push(
                    Problem::new(
                        ProblemKind::SubsectionMissing,
                        section,
                        format!("subsection \"{}\" not found{why}", sub.name),
                    )
                    .in_description(&src.name)
                    .on(&sub.name),
                );
            }
        }
    }
}

/// The fields of one description, expanded where one side moved fields into a substruct
/// (the checker's rule: the substruct's first field has the other side's name).
fn compare_fields(out: &mut Vec<Problem>, section: &str, desc: &str, src: &[Field], dst: &[Field]) {
    let mut src: Vec<&Field> = src.iter().collect();
    let mut dst: Vec<&Field> = dst.iter().collect();
    let (mut i, mut j) = (0usize, 0usize);
    let problem = |kind, message: String, field: &str| {
        Problem::new(kind, section, message)
            .in_description(desc)
            .on(field)
    };
    while let Some(s) = src.get(i).copied() {
        let Some(d) = dst.get(j).copied() else {
            out.push(problem(
                ProblemKind::FieldNotRead,
                format!(
                    "expected field \"{}\", while the destination has no further fields",
                    s.name
                ),
                &s.name,
            ));
            i = i.saturating_add(1);
            continue;
        };
        if s.name == d.name {
            compare_pair(out, section, desc, s, d);
            i = i.saturating_add(1);
            j = j.saturating_add(1);
            continue;
        }
        if let Some(inner) = first_field_named(d, &s.name) {
            dst.splice(j..=j, inner.iter());
            continue;
        }
        if let Some(inner) = first_field_named(s, &d.name) {
            src.splice(i..=i, inner.iter());
            continue;
        }
        let expected = format!("expected field \"{}\", got \"{}\"", s.name, d.name);
        let src_later = src.iter().skip(i).position(|f| f.name == d.name);
        let dst_later = dst.iter().skip(j).position(|f| f.name == s.name);
        match (src_later, dst_later) {
            (None, None) => {
                let wire = if s.size == d.size && s.description.is_none() {
                    "renamed in place with the same size: the wire format is unchanged".to_owned()
                } else {
                    format!(
                        "{} is {} byte(s) in the source, {} {} in the destination",
                        s.name,
                        total(s),
                        d.name,
                        total(d)
                    )
                };
                out.push(problem(
                    ProblemKind::FieldMismatch,
                    format!("{expected}: {wire}"),
                    &s.name,
                ));
                i = i.saturating_add(1);
                j = j.saturating_add(1);
            }
            (Some(a), Some(b)) if b < a => {
                out.push(problem(
                    ProblemKind::FieldNotSent,
                    format!("{expected}: the source does not send \"{}\"", d.name),
                    &d.name,
                ));
                j = j.saturating_add(1);
            }
            (None, Some(_)) => {
                out.push(problem(
                    ProblemKind::FieldNotSent,
                    format!("{expected}: the source does not send \"{}\"", d.name),
                    &d.name,
                ));
                j = j.saturating_add(1);
            }
            _ => {
                out.push(problem(
                    ProblemKind::FieldNotRead,
                    format!("{expected}: the destination does not read \"{}\"", s.name),
                    &s.name,
                ));
                i = i.saturating_add(1);
            }
        }
    }
}

fn first_field_named<'a>(field: &'a Field, name: &str) -> Option<&'a [Field]> {
    let nested = field.description.as_ref()?;
    (nested.fields.first()?.name == name).then_some(nested.fields.as_slice())
}

fn total(field: &Field) -> u64 {
    field.size.saturating_mul(field.count())
}

fn compare_pair(out: &mut Vec<Problem>, section: &str, desc: &str, src: &Field, dst: &Field) {
    if src.version_id > dst.version_id {
        out.push(
            Problem::new(
                ProblemKind::VersionTooNew,
                section,
                format!("version error: {} > {}", src.version_id, dst.version_id),
            )
            .in_description(desc)
            .on(&src.name),
        );
    }
    // QEMU 7.2's -dump-vmstate writes no element counts: compare them where both have one.
    let counts_differ = matches!((src.num, dst.num), (Some(a), Some(b)) if a != b);
    if src.description.is_none() && (src.size != dst.size || counts_differ) {
        let message = if src.size != dst.size {
            format!("size mismatch: {}, {}", src.size, dst.size)
        } else {
            format!(
                "count mismatch: {} element(s), {}",
                src.count(),
                dst.count()
            )
        };
        out.push(
            Problem::new(ProblemKind::SizeMismatch, section, message)
                .in_description(desc)
                .on(&src.name),
        );
    }
    match (&src.description, &dst.description) {
        (Some(s), Some(d)) => compare_descriptions(out, section, s, d),
        (Some(_), None) => out.push(
            Problem::new(
                ProblemKind::DescriptionMissing,
                section,
                format!("field \"{}\": missing description", src.name),
            )
            .in_description(desc)
            .on(&src.name),
        ),
        _ => {}
    }
}

/// Core virtio subsections a source release sends that the destination release does not
/// read, for every section with a `virtio` field.
fn virtio_internals(
    out: &mut Vec<Problem>,
    section: &str,
    desc: &Description,
    (src, dst): (Option<Release>, Option<Release>),
) {
    let (Some(src), Some(dst)) = (src, dst) else {
        return;
    };
    let Some(layout) = desc
        .fields
        .iter()
        .find(|f| f.name == VIRTIO_TYPE)
        .and_then(|f| f.description.as_ref())
    else {
        return;
    };
    for sub in &layout.subsections {
        if knows_virtio_subsection(src, &sub.name) == Some(true)
            && knows_virtio_subsection(dst, &sub.name) == Some(false)
        {
            out.push(
                Problem::new(
                    ProblemKind::VirtioInternals,
                    section,
                    format!(
                        "QEMU {src} may send core subsection \"{}\", which QEMU {dst} does not read",
                        sub.name
                    ),
                )
                .in_description(VIRTIO_TYPE)
                .on(&sub.name),
            );
        }
    }
}
