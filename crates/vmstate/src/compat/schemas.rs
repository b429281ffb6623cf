//! Schema against schema, as QEMU's static checker compares two `-dump-vmstate` files, but
//! without stopping at the first field mismatch of a description, and without guessing what
//! a dump does not say: a field whose dump gives no element count (QEMU 7.2's gives none) is
//! compared by name, position and element size, never by its size.

use super::release::{knows_virtio_subsection, machine_release, Release};
use super::{Findings, Problem, ProblemKind};
use crate::schema::{virtio::VIRTIO_TYPE, Count, Description, Field, Schema, SectionSchema};

/// Section names that changed between releases with the same state (QEMU commit 292b1634).
const RENAMED_SECTIONS: &[(&str, &str)] = &[("ICH9 LPC", "ICH9-LPC")];

/// Every problem of migrating from what `src` describes to what `dst` describes, in `src`'s
/// section order. `releases` are the two sides' QEMU releases where known: they decide the
/// virtio internals that `-dump-vmstate` does not show.
pub fn compare_schemas(
    src: &Schema,
    dst: &Schema,
    releases: (Option<Release>, Option<Release>),
) -> Findings {
    let mut out = Findings::default();
    if let (Some(s), Some(d)) = (&src.machine, &dst.machine) {
        if s != d {
            out.problems.push(Problem::new(
                ProblemKind::MachineType,
                "vmschkmachine",
                format!("incompatible machine types: \"{s}\", \"{d}\""),
            ));
        }
    }
    for (schema, side) in [(src, "source"), (dst, "destination")] {
        if !schema.counts_known() {
            out.unchecked.push(format!(
                "the {side}'s -dump-vmstate file gives no element counts (QEMU 7.2's writes \
                 none): its fields were compared by name, position and element size, the size \
                 of an array could not be compared"
            ));
        }
    }
    for section in &src.sections {
        let Some(target) = counterpart(dst, &section.name) else {
            out.problems.push(Problem::new(
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
            virtio_internals(&mut out.problems, &section.name, desc, releases);
        }
    }
    out
}

/// What can be told of migrating from what `src` describes to a destination known by its
/// QEMU release alone: its machine types and the virtio internals of `src`'s release.
pub fn compare_with_release(
    src: &Schema,
    (src_release, dst_release): (Option<Release>, Release),
) -> Findings {
    let mut out = Findings::default();
    if let Some(machine) = &src.machine {
        match machine_release(machine) {
            Some(since) if since > dst_release => out.problems.push(Problem::new(
                ProblemKind::MachineType,
                "vmschkmachine",
                format!("QEMU {dst_release} has no machine {machine} (it is of QEMU {since})"),
            )),
            Some(_) => {}
            None => out.unchecked.push(format!(
                "machine type {machine} names no release: whether QEMU {dst_release} has it \
                 was not checked"
            )),
        }
    }
    for section in &src.sections {
        if let Some(desc) = &section.description {
            let releases = (src_release, Some(dst_release));
            virtio_internals(&mut out.problems, &section.name, desc, releases);
        }
    }
    out.without_schema();
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

fn compare_section(out: &mut Findings, src: &SectionSchema, dst: &SectionSchema) {
    versions(
        &mut out.problems,
        &src.name,
        None,
        src.version_id,
        (Some(dst.version_id), dst.minimum_version_id),
    );
    match (&src.description, &dst.description) {
        (Some(s), Some(d)) => compare_descriptions(out, &src.name, s, d),
        (Some(s), None) => out.problems.push(
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

fn compare_descriptions(out: &mut Findings, section: &str, src: &Description, dst: &Description) {
    if let Some(v) = src.version_id {
        versions(
            &mut out.problems,
            section,
            Some(&src.name),
            v,
            (dst.version_id, dst.minimum_version_id),
        );
    }
    if src.name != dst.name {
        out.problems.push(
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
        out.problems.push(
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
                out.problems.push(
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
fn compare_fields(out: &mut Findings, section: &str, desc: &str, src: &[Field], dst: &[Field]) {
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
            let message = format!(
                "expected field \"{}\", while the destination has no further fields",
                s.name
            );
            out.push_unless_conditional(problem(ProblemKind::FieldNotRead, message, &s.name), s);
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
                let (src_run, dst_run) = replaced_runs(&src, i, &dst, j);
                let src_run = src.get(i..i.saturating_add(src_run)).unwrap_or_default();
                let dst_run = dst.get(j..j.saturating_add(dst_run)).unwrap_or_default();
                out.problems.push(problem(
                    ProblemKind::FieldMismatch,
                    format!("{expected}: {}", wire(src_run, dst_run)),
                    &s.name,
                ));
                i = i.saturating_add(src_run.len().max(1));
                j = j.saturating_add(dst_run.len().max(1));
            }
            (Some(a), Some(b)) if b < a => {
                let message = format!("{expected}: the source does not send \"{}\"", d.name);
                out.push_unless_conditional(
                    problem(ProblemKind::FieldNotSent, message, &d.name),
                    d,
                );
                j = j.saturating_add(1);
            }
            (None, Some(_)) => {
                let message = format!("{expected}: the source does not send \"{}\"", d.name);
                out.push_unless_conditional(
                    problem(ProblemKind::FieldNotSent, message, &d.name),
                    d,
                );
                j = j.saturating_add(1);
            }
            _ => {
                let message = format!("{expected}: the destination does not read \"{}\"", s.name);
                out.push_unless_conditional(
                    problem(ProblemKind::FieldNotRead, message, &s.name),
                    s,
                );
                i = i.saturating_add(1);
            }
        }
    }
}

impl Findings {
    /// `problem`, about a field one side has and the other does not; when a test decides
    /// whether that field is sent (or read), it is undecided: a problem only when the test
    /// holds, which a dump does not tell (QEMU ties many such tests to the machine type).
    fn push_unless_conditional(&mut self, problem: Problem, field: &Field) {
        if !field.field_exists {
            self.problems.push(problem);
            return;
        }
        let whose = match problem.kind {
            ProblemKind::FieldNotSent => "read",
            _ => "sent",
        };
        let message = format!(
            "{}: {} is conditional (field_exists), {whose} only when its test holds: a problem \
             only if the test holds for the machine type and state migrated",
            problem.message, field.name
        );
        self.undecided.push(Problem {
            kind: ProblemKind::Conditional,
            message,
            ..problem
        });
    }
}

/// At a mismatch of names that neither side has further on: how many fields of each side
/// stand for the other side's. When one side's next field comes back later on the other
/// side, the fields before it there were replaced by this one (QEMU replaces removed fields
/// by one `unused` field of their size).
fn replaced_runs(src: &[&Field], i: usize, dst: &[&Field], j: usize) -> (usize, usize) {
    // Where the field after `at` on side `next` is found after `from` on side `other`.
    let found_later = |next: &[&Field], at: usize, other: &[&Field], from: usize| {
        let name = &next.get(at.saturating_add(1))?.name;
        other
            .iter()
            .skip(from.saturating_add(1))
            .position(|f| &f.name == name)
    };
    let in_dst = found_later(src, i, dst, j);
    let in_src = found_later(dst, j, src, i);
    match (in_dst, in_src) {
        (Some(0), _) | (_, Some(0)) | (None, None) => (1, 1),
        (Some(k), Some(o)) if o < k => (o.saturating_add(1), 1),
        (Some(k), _) => (1, k.saturating_add(1)),
        (None, Some(o)) => (o.saturating_add(1), 1),
    }
}

/// Whether the bytes of fields that stand for each other are the same, in words.
fn wire(src: &[&Field], dst: &[&Field]) -> String {
    let total = |run: &[&Field]| {
        run.iter()
            .try_fold(0u64, |sum, f| f.bytes().map(|b| sum.saturating_add(b)))
    };
    let plain = src.iter().chain(dst).all(|f| f.description.is_none());
    match (total(src), total(dst)) {
        (Some(a), Some(b)) if a == b && plain && src.len() == 1 && dst.len() == 1 => {
            "renamed in place with the same size: the wire format is unchanged".to_owned()
        }
        (Some(a), Some(b)) if a == b && plain => format!(
            "{} in the source stand for {} in the destination, {a} byte(s) on both sides: \
             the wire format is unchanged",
            names(src),
            names(dst)
        ),
        (Some(a), Some(b)) => format!(
            "{} {a} byte(s) in the source, {} {b} in the destination",
            names(src),
            names(dst)
        ),
        (a, b) => format!(
            "{}; {}: the size could not be compared",
            sizes(src, "source", a),
            sizes(dst, "destination", b)
        ),
    }
}

/// The size of a run of fields of one side, or that its dump gives no element count.
fn sizes(run: &[&Field], side: &str, total: Option<u64>) -> String {
    let names = names(run);
    match total {
        Some(bytes) => format!("{names} is {bytes} byte(s) in the {side}"),
        None => {
            let each: Vec<String> = run.iter().map(|f| f.size.to_string()).collect();
            format!(
                "the {side}'s dump gives no element count for {names} (elements of {} byte(s))",
                each.join(", ")
            )
        }
    }
}

fn names(run: &[&Field]) -> String {
    run.iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_field_named<'a>(field: &'a Field, name: &str) -> Option<&'a [Field]> {
    let nested = field.description.as_ref()?;
    (nested.fields.first()?.name == name).then_some(nested.fields.as_slice())
}

fn compare_pair(out: &mut Findings, section: &str, desc: &str, src: &Field, dst: &Field) {
    let problem = |kind, message: String| {
        Problem::new(kind, section, message)
            .in_description(desc)
            .on(&src.name)
    };
    if src.version_id > dst.version_id {
        out.problems.push(problem(
            ProblemKind::VersionTooNew,
            format!("version error: {} > {}", src.version_id, dst.version_id),
        ));
    }
    if src.description.is_none() {
        let counts = (src.elements(), dst.elements());
        if src.size != dst.size {
            match counts {
                (Some(_), Some(_)) => out.problems.push(problem(
                    ProblemKind::SizeMismatch,
                    format!("size mismatch: {}, {}", src.size, dst.size),
                )),
                _ => out.undecided.push(problem(
                    ProblemKind::SizeUnknown,
                    format!(
                        "elements of {} byte(s) in the source, {} in the destination, and a dump \
                         gives no element count: the size could not be compared",
                        src.size, dst.size
                    ),
                )),
            }
        } else if let (Count::Array(a), Count::Array(b)) = (src.count, dst.count) {
            // A dump without `num` may hold an array whose length another field holds: only
            // two fixed arrays have counts to compare.
            if a != b {
                out.problems.push(problem(
                    ProblemKind::SizeMismatch,
                    format!("count mismatch: {a} element(s), {b}"),
                ));
            }
        }
    }
    match (&src.description, &dst.description) {
        (Some(s), Some(d)) => compare_descriptions(out, section, s, d),
        (Some(_), None) => out.problems.push(problem(
            ProblemKind::DescriptionMissing,
            format!("field \"{}\": missing description", src.name),
        )),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump with one class `dev` of these fields (`[name, size, num or null, field_exists]`).
    fn dump(fields: &[(&str, u64, Option<u64>, bool)]) -> Schema {
        let fields: Vec<String> = fields
            .iter()
            .map(|(name, size, num, exists)| {
                let num = num.map(|n| format!(", \"num\": {n}")).unwrap_or_default();
                format!(
                    "{{\"field\": \"{name}\", \"version_id\": 0, \"field_exists\": {exists}, \
                     \"size\": {size}{num}}}"
                )
            })
            .collect();
        let json = format!(
            "{{\"dev\": {{\"Name\": \"dev\", \"version_id\": 1, \"minimum_version_id\": 1, \
             \"Description\": {{\"name\": \"dev\", \"version_id\": 1, \"minimum_version_id\": 1, \
             \"Fields\": [{}]}}}}}}",
            fields.join(", ")
        );
        Schema::from_dump(json.as_bytes()).unwrap()
    }

    fn messages(found: &[Problem]) -> Vec<(ProblemKind, String)> {
        found
            .iter()
            .map(|p| (p.kind, p.field.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn a_field_whose_dump_gives_no_count_has_no_size_to_differ_and_the_rest_stays_aligned() {
        // As QEMU 10.0 writes e1000e (`num` on arrays), and 7.2 (no `num` at all).
        let src = dump(&[
            ("core.eitr", 32, Some(5), false),
            ("unused", 5, None, false),
            ("core.itr_guest_value", 4, None, false),
            ("core.vet", 2, Some(2), false),
        ]);
        let dst = dump(&[
            ("core.eitr", 32, None, false),
            ("core.eitr_intr_pending", 1, None, false),
            ("core.itr_guest_value", 4, None, false),
            ("core.vet", 4, None, false),
        ]);
        let found = compare_schemas(&src, &dst, (None, None));
        assert_eq!(
            messages(&found.problems),
            [(ProblemKind::FieldMismatch, "unused".to_owned())]
        );
        let message = &found.problems[0].message;
        assert!(
            message.contains("the size could not be compared"),
            "{message}"
        );
        assert!(!message.contains("1 in the destination"), "{message}");
        // Elements of another size with no count: not measured, so not a size mismatch.
        assert_eq!(
            messages(&found.undecided),
            [(ProblemKind::SizeUnknown, "core.vet".to_owned())]
        );
        assert_eq!(found.unchecked.len(), 1, "{:?}", found.unchecked);
        // With counts on both sides, the same difference is a size mismatch.
        let known = dump(&[("core.vet", 4, Some(2), false)]);
        let other = dump(&[("core.vet", 2, Some(2), false)]);
        let found = compare_schemas(&known, &other, (None, None));
        assert_eq!(
            messages(&found.problems),
            [(ProblemKind::SizeMismatch, "core.vet".to_owned())]
        );
    }

    #[test]
    fn fields_replaced_by_one_unused_field_are_one_mismatch_of_the_same_size() {
        let src = dump(&[("unused", 20, None, false), ("in_index", 4, Some(1), false)]);
        let names = ["irq", "dma", "hdma", "port", "ver"];
        let mut fields: Vec<(&str, u64, Option<u64>, bool)> =
            names.iter().map(|n| (*n, 4, None, false)).collect();
        fields.push(("in_index", 4, Some(1), false));
        let found = compare_schemas(&src, &dump(&fields), (None, None));
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        let message = &found.problems[0].message;
        assert!(message.contains("irq, dma, hdma, port, ver"), "{message}");
        assert!(
            message.contains("the wire format is unchanged"),
            "{message}"
        );
        // One byte more on one side is a difference.
        fields[0].1 = 5;
        let found = compare_schemas(&src, &dump(&fields), (None, None));
        assert!(found.problems[0]
            .message
            .contains("20 byte(s) in the source, irq"));
    }

    #[test]
    fn a_conditional_field_one_side_lacks_is_undecided_not_missing() {
        let src = dump(&[("a", 4, None, false), ("core.timadj", 8, None, true)]);
        let dst = dump(&[("a", 4, None, false)]);
        let found = compare_schemas(&src, &dst, (None, None));
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        assert_eq!(
            messages(&found.undecided),
            [(ProblemKind::Conditional, "core.timadj".to_owned())]
        );
        assert!(found.undecided[0].message.contains("conditional"));
        // The other way, the destination reads it only when its test holds.
        let found = compare_schemas(&dst, &src, (None, None));
        assert!(found.problems.is_empty() && found.undecided.is_empty());
        // A field without a test that the destination lacks is a problem.
        let plain = dump(&[("a", 4, None, false), ("b", 8, None, false)]);
        let found = compare_schemas(&plain, &dst, (None, None));
        assert_eq!(
            messages(&found.problems),
            [(ProblemKind::FieldNotRead, "b".to_owned())]
        );
    }

    #[test]
    fn a_release_alone_decides_the_machine_type_and_lists_what_it_cannot() {
        let mut src = dump(&[("a", 4, None, false)]);
        src.machine = Some("pc-q35-10.0".to_owned());
        let found = compare_with_release(&src, (None, Release::new(7, 2)));
        assert_eq!(
            messages(&found.problems),
            [(ProblemKind::MachineType, String::new())]
        );
        assert_eq!(found.unchecked.len(), super::super::WITHOUT_SCHEMA.len());
        let found = compare_with_release(&src, (None, Release::new(10, 0)));
        assert!(found.problems.is_empty());
    }
}
