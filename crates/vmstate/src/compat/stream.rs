//! A stream against a destination: everything the destination would refuse, in stream order,
//! with the message QEMU prints for each.

use super::release::{
    knows_capability, knows_command, knows_device_subsection, knows_virtio_subsection,
    machine_for_release, machine_release, queue_size_limit, Release,
};
use super::{bytes_text, Destination, Findings, Problem, ProblemKind};
use crate::devices::VirtioSection;
use crate::schema::{virtio::VIRTIO_TYPE, Description, Field, Origin, Schema, SectionSchema};
use crate::stream::{Configuration, Stream};

/// Sections that QEMU registers without a device class VMState, which no `-dump-vmstate`
/// file lists: their versions and fields cannot be checked against one.
pub const NOT_IN_DUMPS: &[&str] = &[
    "ram",
    "block",
    "dirty-bitmap",
    "cpu",
    "cpu_common",
    "apic",
    "kvm-apic",
    "timer",
    "globalstate",
    "kvmclock",
    "slirp",
    "spapr",
    "s390-storage_attributes",
    "spapr/htab",
    "PCIBUS",
    "i2c_bus",
    "acpi_build",
    // PIIX IDE: QEMU 7.2 registered it without its class (10.0 dumps list `piix3-ide`).
    "ide",
    // The PS/2 keyboard and mouse: QEMU 5.2 registered them without a class (7.2's dumps
    // list `ps2kbd` and `ps2mouse`).
    "ps2kbd",
    "ps2mouse",
];

/// Compares what `stream` carries (`carried`, its [`Schema::from_stream`] from its decoded
/// virtio `devices`) with the destination `dst`: its schema (a `-dump-vmstate` file or
/// another stream) and release, or its release alone. The problems come in stream order.
pub fn check_stream(
    stream: &Stream,
    devices: &[VirtioSection],
    carried: &Schema,
    dst: Destination<'_>,
) -> Findings {
    let mut check = Findings::default();
    let release = dst.release();
    if let Some(config) = stream.configuration() {
        match dst {
            Destination::Schema(schema, _) => {
                machine(&mut check, config, schema.machine.as_deref(), release);
            }
            Destination::Release(release) => release_machine(&mut check, config, release),
        }
        capabilities(&mut check, config, release);
    }
    commands(&mut check, stream, release);
    if let Some(release) = release {
        queue_sizes(&mut check, devices, release);
    }
    match dst {
        Destination::Schema(schema, _) => sections(&mut check, carried, schema, release),
        Destination::Release(release) => {
            for section in &carried.sections {
                virtio_of_section(&mut check.problems, section, release);
            }
            check.without_schema();
        }
    }
    check.problems.sort_by_key(|p| p.offset.unwrap_or(u64::MAX));
    check
}

/// Queues saved with more entries than the destination's device allocates by default.
fn queue_sizes(check: &mut Findings, devices: &[VirtioSection], release: Release) {
    for section in devices {
        let kind = section.device.kind.vmsd_name();
        let Some(limit) = queue_size_limit(release, kind) else {
            continue;
        };
        for (index, q) in section.device.queues.iter().enumerate() {
            if q.num > limit {
                check.problems.push(
                    Problem::new(
                        ProblemKind::VirtioInternals,
                        &section.idstr,
                        format!(
                            "queue {index} was saved with {} entries; a {kind} of QEMU \
                             {release} allocates {limit} (its queue-size property) and refuses \
                             more, unless it is started with queue-size={}",
                            q.num, q.num
                        ),
                    )
                    .on(&format!("queues[{index}].num"))
                    .qemu(format!(
                        "VQ {index} vring.num {} exceeds allocated max {limit}",
                        q.num
                    ))
                    .at(Some(section.field_offset)),
                );
            }
        }
    }
}

/// Each section the stream carries against the destination's schema.
fn sections(check: &mut Findings, carried: &Schema, dst: &Schema, release: Option<Release>) {
    let mut not_described = Vec::new();
    for section in carried
        .sections
        .iter()
        .filter(|s| s.name != "configuration")
    {
        match section.description.as_ref() {
            Some(desc) => match best_match(dst, section, desc, release) {
                Some(found) => check.problems.extend(found),
                None if dst.origin == Origin::Dump
                    && NOT_IN_DUMPS.contains(&desc.name.as_str()) =>
                {
                    not_described.push(section.name.clone());
                }
                None => check.problems.push(
                    Problem::new(
                        ProblemKind::SectionMissing,
                        &section.name,
                        format!(
                            "the destination has no section of this kind ({}, instance {})",
                            desc.name,
                            section.instance_id.unwrap_or(0)
                        ),
                    )
                    .qemu(format!(
                        "Unknown savevm section or instance '{}' {}. Make sure that your current \
                         VM setup matches your saved VM setup, including any hotplugged devices",
                        section.name,
                        section.instance_id.unwrap_or(0)
                    ))
                    .at(section.offset),
                ),
            },
            None if dst.origin == Origin::Stream && dst.section(&section.name).is_none() => {
                check.problems.push(
                    Problem::new(
                        ProblemKind::SectionMissing,
                        &section.name,
                        "the destination stream has no such section".to_owned(),
                    )
                    .at(section.offset),
                );
            }
            None => not_described.push(section.name.clone()),
        }
    }
    if !not_described.is_empty() {
        check.unchecked.push(format!(
            "sections no -dump-vmstate file describes (registered without a device class), \
             not checked: {}",
            not_described.join(", ")
        ));
    }
    if dst.origin == Origin::Dump && !dst.counts_known() {
        check.unchecked.push(
            "the destination's -dump-vmstate file gives no element counts (QEMU 7.2's writes \
             none): fields were checked by element size, each as any number of elements"
                .to_owned(),
        );
    }
}

/// The stream's machine type against the one the destination runs (`dst`, when known).
fn machine(
    check: &mut Findings,
    config: &Configuration,
    dst: Option<&str>,
    release: Option<Release>,
) {
    let offset = Some(config.span.offset);
    let machine = &config.machine;
    match dst {
        Some(local) if local != machine => {
            let mut message =
                format!("the stream is of machine {machine}, the destination runs {local}");
            if let (Some(r), Some(m)) = (release, machine_release(machine)) {
                if m > r {
                    message.push_str(&format!(" (QEMU {r} has no machine {machine})"));
                }
            }
            check.problems.push(
                Problem::new(ProblemKind::MachineType, "configuration", message)
                    .on("name")
                    .qemu(format!(
                        "Machine type received is '{machine}' and local is '{local}'"
                    ))
                    .at(offset),
            );
        }
        Some(_) => {}
        None => check
            .unchecked
            .push("the destination names no machine type: the stream's was not checked".to_owned()),
    }
}

/// The stream's machine type against a destination known by its release alone: QEMU
/// `release` has the machine types of its own and older releases.
fn release_machine(check: &mut Findings, config: &Configuration, release: Release) {
    let machine = &config.machine;
    match machine_release(machine) {
        Some(since) if since > release => {
            let local = machine_for_release(machine, release).unwrap_or_default();
            check.problems.push(
                Problem::new(
                    ProblemKind::MachineType,
                    "configuration",
                    format!(
                        "the stream is of machine {machine}, which QEMU {release} does not have \
                         (it is of QEMU {since}; {release}'s of the family is {local})"
                    ),
                )
                .on("name")
                .qemu(format!(
                    "Machine type received is '{machine}' and local is '{local}'"
                ))
                .at(Some(config.span.offset)),
            );
        }
        Some(_) => {}
        None => check.unchecked.push(format!(
            "machine type {machine} names no release: whether QEMU {release} has it was not \
             checked"
        )),
    }
}

/// The capabilities the stream was written with, against what QEMU `release` knows.
fn capabilities(check: &mut Findings, config: &Configuration, release: Option<Release>) {
    let offset = Some(config.span.offset);
    for capability in config.capabilities() {
        let known = release.and_then(|r| knows_capability(r, capability));
        let problem = match known {
            Some(false) => Problem::new(
                ProblemKind::Capability,
                "configuration",
                format!(
                    "the stream needs capability {capability}, which QEMU {} does not have",
                    release.map(|r| r.to_string()).unwrap_or_default()
                ),
            )
            .qemu(format!("Received unknown capability {capability}")),
            _ => Problem::new(
                ProblemKind::Capability,
                "configuration",
                format!(
                    "the stream was written with capability {capability} on: the destination \
                     must turn it on before the stream arrives"
                ),
            )
            .qemu(format!(
                "Capability {capability} is off, but received capability is on"
            )),
        };
        check.problems.push(problem.on("capabilities").at(offset));
    }
}

fn commands(check: &mut Findings, stream: &Stream, release: Option<Release>) {
    let Some(release) = release else {
        if !stream.commands().is_empty() {
            check.unchecked.push(
                "the destination's QEMU release is not known: the stream's commands were not \
                 checked"
                    .to_owned(),
            );
        }
        return;
    };
    for command in stream.commands() {
        if knows_command(release, command.number) == Some(false) {
            check.problems.push(
                Problem::new(
                    ProblemKind::UnknownCommand,
                    "commands",
                    format!(
                        "command {} (0x{:x}) is not known to QEMU {release}",
                        command.name, command.number
                    ),
                )
                .on(command.name)
                .qemu(format!(
                    "MIG_CMD 0x{:x} unknown (len 0x{:x})",
                    command.number,
                    command.payload.len()
                ))
                .at(Some(command.span.offset)),
            );
        }
    }
}

/// The problems of `section` against the destination's section of its kind: of a dump's
/// classes with its description (several classes share one, `serial` and `isa-serial`), the
/// one that fits it best. `None` when the destination has none.
fn best_match(
    dst: &Schema,
    section: &SectionSchema,
    desc: &Description,
    release: Option<Release>,
) -> Option<Vec<Problem>> {
    let candidates: Vec<&SectionSchema> = match dst.origin {
        Origin::Stream => dst.section(&section.name).into_iter().collect(),
        Origin::Dump => dst.sections_of(&desc.name).collect(),
    };
    candidates
        .into_iter()
        .map(|target| {
            let mut found = Vec::new();
            compare_section(&mut found, section, desc, target, release);
            found
        })
        .min_by_key(Vec::len)
}

/// QEMU's message when loading a section's state fails inside it.
fn load_error(section: &SectionSchema) -> String {
    format!(
        "error while loading state for instance 0x{:x} of device '{}'",
        section.instance_id.unwrap_or(0),
        section.name
    )
}

fn compare_section(
    out: &mut Vec<Problem>,
    section: &SectionSchema,
    desc: &Description,
    target: &SectionSchema,
    release: Option<Release>,
) {
    let version = section.version_id;
    if version > target.version_id {
        out.push(
            Problem::new(
                ProblemKind::VersionTooNew,
                &section.name,
                format!(
                    "version {version}, the destination loads up to {}",
                    target.version_id
                ),
            )
            .in_description(&desc.name)
            .qemu(format!(
                "savevm: unsupported version {version} for '{}' v{}",
                section.name, target.version_id
            ))
            .at(section.offset),
        );
        return;
    }
    if let Some(min) = target.minimum_version_id.filter(|m| version < *m) {
        out.push(
            Problem::new(
                ProblemKind::VersionTooOld,
                &section.name,
                format!("version {version}, the destination loads {min} and up"),
            )
            .in_description(&desc.name)
            .qemu(format!(
                "{}: incoming version_id {version} is too old for local minimum version_id  {min}",
                desc.name
            ))
            .at(section.offset),
        );
        return;
    }
    let Some(dst_desc) = &target.description else {
        return;
    };
    let context = Context {
        section,
        release,
        qemu: load_error(section),
    };
    context.description(out, desc, dst_desc, version);
}

/// The virtio internals of `section` against QEMU `release`, without the destination's
/// schema.
fn virtio_of_section(out: &mut Vec<Problem>, section: &SectionSchema, release: Release) {
    let Some(field) = section.description.as_ref().and_then(|d| {
        d.fields
            .iter()
            .find(|f| f.type_name.as_deref() == Some(VIRTIO_TYPE))
    }) else {
        return;
    };
    let context = Context {
        section,
        release: Some(release),
        qemu: load_error(section),
    };
    context.virtio(out, field);
}

struct Context<'a> {
    section: &'a SectionSchema,
    release: Option<Release>,
    qemu: String,
}

impl Context<'_> {
    fn problem(&self, kind: ProblemKind, desc: &str, field: &str, message: String) -> Problem {
        Problem::new(kind, &self.section.name, message)
            .in_description(desc)
            .on(field)
    }

    /// One struct as sent against the destination's description of it, loaded at `version`.
    fn description(
        &self,
        out: &mut Vec<Problem>,
        sent: &Description,
        dst: &Description,
        version: u32,
    ) {
        let read: Vec<&Field> = dst
            .fields
            .iter()
            .filter(|f| f.version_id <= version)
            .collect();
        self.fields(out, sent, &sent.fields.iter().collect::<Vec<_>>(), &read);
        for sub in &sent.subsections {
            let Some(known) = dst.subsection(&sub.name) else {
                out.push(
                    self.problem(
                        ProblemKind::SubsectionMissing,
                        &sent.name,
                        &sub.name,
                        format!(
                            "the stream carries subsection {}, which the destination does not know",
                            sub.name
                        ),
                    )
                    .qemu(self.qemu.clone())
                    .at(sub.offset),
                );
                continue;
            };
            let sub_version = sub.version_id.unwrap_or(0);
            if let Some(v) = known.version_id.filter(|v| sub_version > *v) {
                out.push(
                    self.problem(
                        ProblemKind::VersionTooNew,
                        &sub.name,
                        &sub.name,
                        format!(
                            "subsection version {sub_version}, the destination loads up to {v}"
                        ),
                    )
                    .qemu(format!(
                        "{}: incoming version_id {sub_version} is too new for local version_id {v}",
                        sub.name
                    ))
                    .at(sub.offset),
                );
                continue;
            }
            if let Some(m) = known.minimum_version_id.filter(|m| sub_version < *m) {
                out.push(
                    self.problem(
                        ProblemKind::VersionTooOld,
                        &sub.name,
                        &sub.name,
                        format!("subsection version {sub_version}, the destination loads {m} and up"),
                    )
                    .qemu(format!(
                        "{}: incoming version_id {sub_version} is too old for local minimum version_id  {m}",
                        sub.name
                    ))
                    .at(sub.offset),
                );
                continue;
            }
            self.description(out, sub, known, sub_version);
        }
    }

    /// The fields as sent against the ones the destination reads. Names do not travel: a
    /// field renamed with the same size in the same place is no problem.
    fn fields(&self, out: &mut Vec<Problem>, sent: &Description, src: &[&Field], dst: &[&Field]) {
        let (mut i, mut j) = (0usize, 0usize);
        while let Some(s) = src.get(i).copied() {
            let Some(d) = dst.get(j).copied() else {
                out.push(
                    self.problem(
                        ProblemKind::FieldNotRead,
                        &sent.name,
                        &s.name,
                        format!(
                            "the stream carries {} ({} byte(s)), which the destination does not \
                             read: it takes these bytes for what follows",
                            s.name,
                            sent_bytes(s)
                        ),
                    )
                    .at(s.offset),
                );
                i = i.saturating_add(1);
                continue;
            };
            let next_is_same = dst
                .get(j.saturating_add(1))
                .is_some_and(|n| n.name == d.name && fits(s, n));
            if d.field_exists && next_is_same {
                // QEMU's pair of one field under a test for old versions and the same field
                // from a version on: the stream carries the second.
                j = j.saturating_add(1);
                continue;
            }
            if fits(s, d) {
                if s.type_name.as_deref() == Some(VIRTIO_TYPE) {
                    self.virtio(out, s);
                } else if let (Some(sn), Some(dn)) = (&s.description, &d.description) {
                    self.description(out, sn, dn, dn.version_id.unwrap_or(u32::MAX));
                }
                i = i.saturating_add(1);
                j = j.saturating_add(1);
                continue;
            }
            if d.field_exists && d.name != s.name {
                // A field the destination reads only when a test says so: assume it says no.
                j = j.saturating_add(1);
                continue;
            }
            let later = dst.iter().skip(j).position(|f| f.name == s.name);
            match later {
                Some(_) => {
                    out.push(
                        self.problem(
                            ProblemKind::FieldNotSent,
                            &sent.name,
                            &d.name,
                            format!(
                                "the destination reads {} ({}) here, which the stream \
                                 does not carry: it takes {}'s bytes for it",
                                d.name,
                                bytes_text(d),
                                s.name
                            ),
                        )
                        .at(s.offset),
                    );
                    j = j.saturating_add(1);
                }
                None if s.name == d.name => {
                    out.push(
                        self.problem(
                            ProblemKind::SizeMismatch,
                            &sent.name,
                            &s.name,
                            format!(
                                "{} is {} byte(s) in the stream, the destination reads {}",
                                s.name,
                                sent_bytes(s),
                                bytes_text(d)
                            ),
                        )
                        .at(s.offset),
                    );
                    i = i.saturating_add(1);
                    j = j.saturating_add(1);
                }
                None => {
                    out.push(
                        self.problem(
                            ProblemKind::FieldNotRead,
                            &sent.name,
                            &s.name,
                            format!(
                                "the stream carries {} ({} byte(s)) where the destination reads \
                                 {} ({})",
                                s.name,
                                sent_bytes(s),
                                d.name,
                                bytes_text(d)
                            ),
                        )
                        .at(s.offset),
                    );
                    i = i.saturating_add(1);
                    j = j.saturating_add(1);
                }
            }
        }
        // A conditional field, or an array of structs (with no elements it is not described),
        // may be absent.
        for d in dst
            .iter()
            .skip(j)
            .filter(|d| !d.field_exists && d.description.is_none())
        {
            out.push(
                self.problem(
                    ProblemKind::FieldNotSent,
                    &sent.name,
                    &d.name,
                    format!(
                        "the destination reads {} ({}) after the fields the stream carries",
                        d.name,
                        bytes_text(d)
                    ),
                )
                .at(sent.offset),
            );
        }
    }

    /// The virtio internals: core subsections the destination's QEMU does not read, and
    /// packed-ring requests framed as QEMU writes them but not as its loader reads them.
    fn virtio(&self, out: &mut Vec<Problem>, field: &Field) {
        let Some(layout) = &field.description else {
            return;
        };
        if let Some(release) = self.release {
            for sub in &layout.subsections {
                if knows_virtio_subsection(release, &sub.name) == Some(false) {
                    out.push(
                        self.problem(
                            ProblemKind::VirtioInternals,
                            VIRTIO_TYPE,
                            &sub.name,
                            format!(
                                "the device's state carries core subsection {}, which QEMU \
                                 {release} does not read",
                                sub.name
                            ),
                        )
                        .qemu(self.qemu.clone())
                        .at(sub.offset),
                    );
                }
            }
        }
        for own in layout
            .fields
            .iter()
            .filter_map(|f| f.description.as_deref())
        {
            for sub in &own.subsections {
                let (kind, message) = if !sub.name.starts_with(&own.name) {
                    (
                        ProblemKind::VirtioInternals,
                        format!(
                            "the device state's subsection {} does not start with {}, the name \
                             of the struct it belongs to: QEMU's loader stops reading {}'s \
                             subsections there and misreads the virtio state after it",
                            sub.name, own.name, own.name,
                        ),
                    )
                } else if let Some(release) = self
                    .release
                    .filter(|r| knows_device_subsection(*r, &sub.name) == Some(false))
                {
                    (
                        ProblemKind::SubsectionMissing,
                        format!(
                            "the device state carries subsection {}, which QEMU {release} \
                             does not know",
                            sub.name
                        ),
                    )
                } else {
                    continue;
                };
                out.push(
                    self.problem(kind, &own.name, &sub.name, message)
                        .qemu(self.qemu.clone()),
                );
            }
        }
        let ndescs_first = layout.fields.iter().any(|f| {
            f.elements().is_some_and(|n| n > 0)
                && f.description.as_ref().is_some_and(|rq| {
                    let names: Vec<&str> = rq.fields.iter().map(|f| f.name.as_str()).collect();
                    let ndescs = names.iter().position(|n| *n == "ndescs");
                    let elem = names.iter().position(|n| *n == "elem");
                    matches!((ndescs, elem), (Some(n), Some(e)) if n < e)
                })
        });
        if ndescs_first {
            out.push(
                self.problem(
                    ProblemKind::VirtioInternals,
                    VIRTIO_TYPE,
                    "ndescs",
                    "packed-ring requests in flight carry their ndescs word before the element, \
                     as QEMU writes it; QEMU's loader reads it after the element and misreads \
                     every request (write it after the element)"
                        .to_owned(),
                )
                .at(layout.offset),
            );
        }
    }
}

/// Bytes a field took in the stream.
fn sent_bytes(field: &Field) -> u64 {
    // A stream's counts are all known: what it carries was counted.
    field.bytes().unwrap_or(field.size)
}

/// Whether the destination reads a sent field as one field: the same bytes (any name), or a
/// field whose size varies (`virtio`, buffers sized by another field), or a struct of the
/// same name or of the same VMState (a dump gives a struct's size in host memory, not on
/// the wire: QEMU 7.2 renamed PS/2's `common` to `parent_obj` and loads 5.2's).
///
/// A field of a `-dump-vmstate` file without `num` may be an array whose length another field
/// holds, and in a dump that gives no counts (QEMU 7.2's) any array: there, any whole number
/// of elements fits.
fn fits(sent: &Field, dst: &Field) -> bool {
    if sent.name == dst.name && (dst.description.is_some() || dst.size == 0) {
        return true;
    }
    if let Some(described) = &dst.description {
        return sent
            .description
            .as_ref()
            .is_some_and(|d| d.name == described.name);
    }
    let sent = sent_bytes(sent);
    match dst.count.num() {
        Some(n) => {
            let bytes = dst.size.saturating_mul(n);
            bytes == 0 || bytes == sent
        }
        None => dst.size == 0 || (sent > 0 && sent.checked_rem(dst.size) == Some(0)),
    }
}
