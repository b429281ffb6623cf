//! Settling what a device's bytes do not say, for every device that saves in-flight elements.
//!
//! An element travels as a raw host struct, optionally next to a packed-ring `ndescs` word,
//! and devices add facts of their own that the stream does not state (virtio-blk's queue
//! index, virtio-serial's port map length, virtio-net's queue pairs, scsi-disk's transfer
//! data). Each device lists the readings its assumptions allow; [`settle`] tries them all on
//! copies of the reader and keeps the one under which the field parses to its end and agrees
//! with itself. The same rules apply to every device, so they live here once.

use serde::{Deserialize, Serialize};

use super::core::CoreSubsection;
use super::Assumptions;
use crate::element::{self, Element, Layout, LayoutChoice, Segment};
use crate::error::{Error, ErrorKind, Result};
use crate::note::Note;
use crate::wire::{Endian, Reader, Writer};

/// Where a packed-ring element's `ndescs` word stands, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NdescsOrder {
    /// No `ndescs` word: the device has no packed rings.
    Absent,
    /// Before the element: what QEMU writes.
    BeforeElement,
    /// After the element: what QEMU's loader reads.
    AfterElement,
}

/// How each saved element is framed: facts that the stream does not state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Framing {
    /// Each request carries its virtqueue index (virtio-blk with `num-queues` > 1; always
    /// false for the other devices, whose records say their queue in their own way).
    pub queue_index: bool,
    /// Where the packed-ring `ndescs` word stands.
    pub ndescs: NdescsOrder,
    /// Host layout of the elements.
    pub layout: Layout,
}

/// One saved element with what travels next to it: the shape every device's in-flight
/// element has in `dump --json` (`queue`, `ndescs`, `index`, `out`, `in`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "InFlightJson")]
pub struct InFlight {
    /// The virtqueue it was popped from, when the stream says (or the device's numbering
    /// does; see the device's `inferred`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// Number of descriptors it used in a packed ring, when the stream says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ndescs: Option<u32>,
    /// The element.
    #[serde(flatten)]
    pub element: Element,
}

/// The JSON an in-flight element is read from: its own fields and its element's, in one
/// object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InFlightJson {
    #[serde(default)]
    queue: Option<u32>,
    #[serde(default)]
    ndescs: Option<u32>,
    index: u32,
    out: Vec<Segment>,
    #[serde(rename = "in")]
    device_writable: Vec<Segment>,
}

impl From<InFlightJson> for InFlight {
    fn from(json: InFlightJson) -> Self {
        InFlight {
            queue: json.queue,
            ndescs: json.ndescs,
            element: Element {
                index: json.index,
                device_readable: json.out,
                device_writable: json.device_writable,
            },
        }
    }
}

/// Reads one element and its `ndescs` word as `framing` places it; the queue is the caller's.
pub(crate) fn read_element(
    r: &mut Reader<'_>,
    framing: Framing,
    notes: &mut Vec<Note>,
    path: &str,
) -> Result<InFlight> {
    let mut ndescs = match framing.ndescs {
        NdescsOrder::BeforeElement => Some(r.u32(Endian::Big, "ndescs")?),
        _ => None,
    };
    let decoded = element::decode(r, framing.layout).map_err(|e| e.within("element"))?;
    if framing.ndescs == NdescsOrder::AfterElement {
        ndescs = Some(r.u32(Endian::Big, "ndescs")?);
    }
    notes.extend(
        decoded
            .notes
            .into_iter()
            .map(|n| n.within("element").within(path)),
    );
    Ok(InFlight {
        queue: None,
        ndescs,
        element: decoded.element,
    })
}

/// Writes one element and its `ndescs` word as `framing` places them.
pub(crate) fn write_element(
    w: &mut Writer,
    framing: Framing,
    item: &InFlight,
    path: &str,
) -> Result<()> {
    let ndescs = match framing.ndescs {
        NdescsOrder::Absent => None,
        _ => Some(
            item.ndescs
                .ok_or_else(|| missing(w.offset(), path, "ndescs"))?,
        ),
    };
    if let (NdescsOrder::BeforeElement, Some(n)) = (framing.ndescs, ndescs) {
        w.u32(Endian::Big, n);
    }
    element::encode(&item.element, framing.layout, w)
        .map_err(|e| e.within("element").within(path))?;
    if let (NdescsOrder::AfterElement, Some(n)) = (framing.ndescs, ndescs) {
        w.u32(Endian::Big, n);
    }
    Ok(())
}

/// The error for a field the framing needs and the state lacks (after an edit).
pub(crate) fn missing(offset: u64, path: &str, field: &str) -> Error {
    Error::new(
        ErrorKind::InvalidValue {
            value: 0,
            expected: "a value: the framing needs this field",
        },
        offset,
        format!("{path}.{field}"),
    )
}

/// Every element framing the assumptions allow, for each queue-index option given.
pub(crate) fn element_framings(assume: &Assumptions, queue_index: &[bool]) -> Vec<Framing> {
    let ndescs: Vec<NdescsOrder> = match (assume.packed, assume.ndescs_order) {
        (Some(false), _) => vec![NdescsOrder::Absent],
        (_, Some(order)) => vec![order],
        (Some(true), None) => vec![NdescsOrder::BeforeElement, NdescsOrder::AfterElement],
        (None, None) => vec![
            NdescsOrder::Absent,
            NdescsOrder::BeforeElement,
            NdescsOrder::AfterElement,
        ],
    };
    let layouts: Vec<Layout> = match assume.layout {
        LayoutChoice::Fixed(layout) => vec![layout],
        LayoutChoice::Auto => Layout::ALL.to_vec(),
    };
    let mut out = Vec::new();
    for &queue_index in queue_index {
        for &ndescs in &ndescs {
            for &layout in &layouts {
                out.push(Framing {
                    queue_index,
                    ndescs,
                    layout,
                });
            }
        }
    }
    out
}

/// One way of reading a device's undelimited part: the device's own facts and, when it
/// saves elements, their framing.
pub(crate) trait Reading: Copy + PartialEq {
    /// The element framing of this reading, if the device saves elements.
    fn framing(&self) -> Option<Framing>;
    /// The same reading with another element framing.
    fn with_framing(self, framing: Framing) -> Self;
    /// The reading in words, for errors.
    fn describe(&self) -> String;
}

impl Reading for Framing {
    fn framing(&self) -> Option<Framing> {
        Some(*self)
    }
    fn with_framing(self, framing: Framing) -> Self {
        framing
    }
    fn describe(&self) -> String {
        describe_framing(self)
    }
}

/// What one reading made of the bytes.
pub(crate) struct Parsed<S> {
    /// The device's own state.
    pub state: S,
    /// The core subsections (empty for state outside a `virtio` field).
    pub subsections: Vec<CoreSubsection>,
    /// What the element decoder noticed.
    pub notes: Vec<Note>,
    /// How many elements the reading found.
    pub elements: usize,
    /// Whether the device offers packed rings, when this reading or the caller knows.
    pub packed: Option<bool>,
}

/// The reading kept, what it made of the bytes, and how it was settled.
pub(crate) struct Settled<K, S> {
    /// The reading.
    pub key: K,
    /// Its result.
    pub parsed: Parsed<S>,
    /// How many other readings parsed to the end.
    pub others: usize,
    /// True when no element was found, so that the element framing was set from the
    /// device's facts rather than read.
    pub no_elements: bool,
}

/// A rule that narrows the readings that parsed, when some reading follows it.
pub(crate) type Preference<'a, K> = &'a dyn Fn(&K) -> bool;

/// Tries every reading in `keys` on a copy of `r`, and keeps the one that parses (`parse`
/// must read to the end of the field), agrees with the device's packed-ring offer
/// (`ndescs` present exactly when packed rings are), follows the `prefer` rules in order
/// (each applied only when some reading follows it), and has clean elements. When no
/// reading found an element, the element framing is set from the facts: `ndescs` before the
/// element (as QEMU writes) when packed rings are offered, the first layout allowed.
///
/// `field` names the part in errors; `settle_with` names the options that settle an
/// ambiguity.
pub(crate) fn settle<K: Reading, S>(
    r: &Reader<'_>,
    field: &str,
    keys: &[K],
    parse: impl Fn(&mut Reader<'_>, K) -> Result<Parsed<S>>,
    prefer: &[Preference<'_, K>],
    settle_with: &str,
) -> Result<Settled<K, S>> {
    let mut trials: Vec<(K, Result<Parsed<S>>)> = Vec::new();
    // A reading that found no element does not depend on the element framing: the other
    // framings of the same reading would parse alike, so they are not tried again.
    let mut element_free: Vec<K> = Vec::new();
    for &key in keys {
        let canonical = canonical(key);
        if element_free.contains(&canonical) {
            continue;
        }
        let mut attempt = r.clone();
        let outcome = parse(&mut attempt, key);
        if matches!(&outcome, Ok(p) if p.elements == 0) {
            element_free.push(canonical);
        }
        trials.push((key, outcome));
    }

    let mut parsed: Vec<(K, Parsed<S>)> = Vec::new();
    let mut best_error: Option<Error> = None;
    for (key, outcome) in trials {
        match outcome {
            Ok(p) => parsed.push((key, p)),
            Err(e) => {
                if best_error
                    .as_ref()
                    .map_or(true, |b| e.offset() > b.offset())
                {
                    best_error = Some(e);
                }
            }
        }
    }
    if parsed.is_empty() {
        // The reading that got furthest has the most telling error.
        return Err(best_error.unwrap_or_else(|| {
            r.error(
                ErrorKind::Undelimited {
                    reason: "no reading was tried".to_owned(),
                },
                field,
            )
        }));
    }
    let total = parsed.len();

    let consistent: Vec<(K, Parsed<S>)> = parsed
        .into_iter()
        // Without elements the framing is not in the bytes at all: any reading of an empty
        // list agrees with the device (the framing is then set from the subsections below).
        .filter(|(key, p)| match (key.framing(), p.packed) {
            (Some(framing), Some(packed)) if p.elements > 0 => {
                (framing.ndescs != NdescsOrder::Absent) == packed
            }
            _ => true,
        })
        .collect();
    if consistent.is_empty() {
        return Err(r.error(
            ErrorKind::InconsistentFraming {
                readings: keys.iter().map(Reading::describe).collect(),
                reason: "elements carry an ndescs word exactly when the device offers packed \
                         rings, and it offers them exactly when the virtio/packed_virtqueues \
                         subsection is present"
                    .to_owned(),
            },
            field,
        ));
    }
    let mut pool = consistent;
    for rule in prefer {
        if pool.iter().any(|(key, _)| rule(key)) {
            pool.retain(|(key, _)| rule(key));
        }
    }
    // Legacy writers may leave stale bytes, but a wrong reading shifts real data into the
    // unused slots; prefer readings whose elements are clean.
    if pool.iter().any(|(_, p)| p.notes.is_empty()) {
        pool.retain(|(_, p)| p.notes.is_empty());
    }

    let no_elements = pool.iter().all(|(_, p)| p.elements == 0);
    if no_elements && pool.len() > 1 {
        // Readings that differ only in element framing say the same; keep the first of
        // each, then see whether the device's own facts still differ.
        let mut seen: Vec<K> = Vec::new();
        pool.retain(|(key, _)| {
            let c = canonical(*key);
            let fresh = !seen.contains(&c);
            seen.push(c);
            fresh
        });
    }
    if pool.len() != 1 {
        return Err(r.error(
            ErrorKind::AmbiguousFraming {
                readings: pool.iter().map(|(key, _)| key.describe()).collect(),
                settle: settle_with.to_owned(),
            },
            field,
        ));
    }
    let Some((mut key, parsed)) = pool.pop() else {
        return Err(r.error(
            ErrorKind::Undelimited {
                reason: "no reading was kept".to_owned(),
            },
            field,
        ));
    };
    if no_elements {
        if let Some(framing) = key.framing() {
            key = key.with_framing(Framing {
                ndescs: if parsed.packed == Some(true) {
                    NdescsOrder::BeforeElement
                } else {
                    NdescsOrder::Absent
                },
                ..framing
            });
        }
    }
    Ok(Settled {
        key,
        parsed,
        others: total.saturating_sub(1),
        no_elements,
    })
}

/// The reading with its element framing replaced by a fixed one, so that readings that
/// differ only in element framing compare equal.
fn canonical<K: Reading>(key: K) -> K {
    match key.framing() {
        Some(f) => key.with_framing(Framing {
            queue_index: f.queue_index,
            ndescs: NdescsOrder::Absent,
            layout: Layout::Stable,
        }),
        None => key,
    }
}

/// The element framing in words.
pub(crate) fn describe_framing(framing: &Framing) -> String {
    format!(
        "queue index {}, ndescs {}, layout {}",
        if framing.queue_index {
            "present"
        } else {
            "absent"
        },
        match framing.ndescs {
            NdescsOrder::Absent => "absent",
            NdescsOrder::BeforeElement => "before the element",
            NdescsOrder::AfterElement => "after the element",
        },
        framing.layout
    )
}

/// Says how the `ndescs` placement and the layout of the chosen framing were settled.
pub(crate) fn element_inferences(
    subject: &str,
    framing: &Framing,
    assume: &Assumptions,
    settled_by: &str,
    no_elements: bool,
    other_readings: usize,
) -> Vec<super::Inference> {
    use super::Inference;
    let mut out = Vec::new();
    if no_elements {
        out.push(Inference::new(
            subject,
            "no element in flight",
            "the bytes hold none; the framing below applies to elements added later",
        ));
    }
    let ndescs_how = match (assume.packed, assume.ndescs_order) {
        (Some(p), _) => format!("assumed: packed={}", if p { "on" } else { "off" }),
        (None, Some(_)) => "assumed".to_owned(),
        (None, None) => format!(
            "{settled_by}, sent exactly when the device offers packed rings, is present iff \
             elements carry ndescs; the field parses to its end under this reading"
        ),
    };
    let layout_how = match (assume.layout, no_elements) {
        (LayoutChoice::Fixed(_), _) => "assumed: the element layout given".to_owned(),
        (LayoutChoice::Auto, true) => "no element to tell: the first layout tried".to_owned(),
        (LayoutChoice::Auto, false) => format!(
            "the only layout under which every element parses and the field ends where its \
             description says ({other_readings} other reading(s) parsed but disagreed with the \
             rest of the field)"
        ),
    };
    out.push(Inference::new(
        &format!("{subject}.ndescs"),
        match framing.ndescs {
            NdescsOrder::Absent => "no ndescs word (packed rings off)",
            NdescsOrder::BeforeElement => {
                "ndescs word before each element (packed rings on; the order QEMU writes)"
            }
            NdescsOrder::AfterElement => {
                "ndescs word after each element (packed rings on; the order QEMU's loader reads)"
            }
        },
        ndescs_how,
    ));
    out.push(Inference::new(
        &format!("{subject}.element"),
        format!("elements in the {} layout", framing.layout),
        layout_how,
    ));
    out
}
