//! virtio-balloon's device VMState (`virtio-balloon-device`, version 1): the balloon's size
//! as the host asked for it and as the guest reported it, and optional subsections.
//!
//! No element is saved: QEMU keeps the statistics buffer the guest last gave it, but does
//! not migrate it (the destination rewinds the stats queue by one and pops it again).

use serde::Serialize;

use crate::error::Result;
use crate::subsection;
use crate::wire::{Endian, Reader, Writer};

/// Name of the device VMState.
const VMSD: &str = "virtio-balloon-device";
const FREE_PAGE_REPORT: &str = "virtio-balloon-device/free-page-report";
const PAGE_POISON: &str = "virtio-balloon-device/page-poison";
/// The name QEMU 5.1 to 6.1 gave `page-poison` (a typo, corrected in 6.2). It does not
/// start with the device's name, so every QEMU loader, theirs included, stops reading the
/// device's subsections there and takes the rest of the device state for what follows it;
/// the loaders of those releases do not know the corrected name either.
const PAGE_POISON_MISSPELLED: &str = "vitio-balloon-device/page-poison";
/// The prefix the misspelled name passes QEMU's peek test under.
const MISSPELLED_PARENT: &str = "vitio-balloon-device";

/// virtio-balloon's device state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalloonState {
    /// Pages the host wants in the balloon.
    pub num_pages: u32,
    /// Pages the guest says are in it.
    pub actual: u32,
    /// Subsections, in stream order.
    pub subsections: Vec<BalloonSubsection>,
}

/// One subsection of `virtio-balloon-device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum BalloonSubsection {
    /// `virtio-balloon-device/free-page-report` (sent when free page hinting is offered).
    FreePageReport {
        /// Version written in the stream.
        version: u32,
        /// Command id of the current hinting round.
        cmd_id: u32,
        /// Hinting state.
        status: u32,
    },
    /// `virtio-balloon-device/page-poison` (sent when page poisoning is offered).
    PagePoison {
        /// Version written in the stream.
        version: u32,
        /// The value the guest fills freed pages with.
        poison_val: u32,
        /// Written as `vitio-balloon-device/page-poison`, as QEMU 5.1 to 6.1 name it: no
        /// QEMU can load the stream until the name is mended ([`BalloonState::mend_names`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        misspelled: bool,
    },
}

impl BalloonSubsection {
    /// The subsection's name as written in the stream.
    pub fn name(&self) -> &'static str {
        match self {
            BalloonSubsection::FreePageReport { .. } => FREE_PAGE_REPORT,
            BalloonSubsection::PagePoison {
                misspelled: true, ..
            } => PAGE_POISON_MISSPELLED,
            BalloonSubsection::PagePoison { .. } => PAGE_POISON,
        }
    }

    /// The version written after its name.
    pub fn version(&self) -> u32 {
        match self {
            BalloonSubsection::FreePageReport { version, .. }
            | BalloonSubsection::PagePoison { version, .. } => *version,
        }
    }
}

impl BalloonState {
    /// Name of the device's own VMState, which its subsections' names must start with.
    pub const VMSD: &'static str = VMSD;

    /// Whether a subsection carries a name no QEMU loader reads (QEMU 5.1 to 6.1's
    /// `vitio-balloon-device/page-poison`).
    pub fn has_misspelled_names(&self) -> bool {
        self.subsections
            .iter()
            .any(|s| s.name() == PAGE_POISON_MISSPELLED)
    }

    /// Gives every subsection the name QEMU's loaders read; returns each renaming as (the
    /// name written, the name it now has).
    pub fn mend_names(&mut self) -> Vec<(&'static str, &'static str)> {
        let mut renamed = Vec::new();
        for sub in &mut self.subsections {
            if let BalloonSubsection::PagePoison { misspelled, .. } = sub {
                if *misspelled {
                    *misspelled = false;
                    renamed.push((PAGE_POISON_MISSPELLED, PAGE_POISON));
                }
            }
        }
        renamed
    }
}

/// The next subsection of the device state: one of its own, or the misspelled page-poison.
fn next_subsection<'a>(
    r: &mut Reader<'a>,
) -> Result<Option<(subsection::SubsectionHeader<'a>, bool)>> {
    if let Some(header) = subsection::next_subsection(r, VMSD, &[FREE_PAGE_REPORT, PAGE_POISON])? {
        return Ok(Some((header, false)));
    }
    Ok(
        subsection::next_subsection(r, MISSPELLED_PARENT, &[PAGE_POISON_MISSPELLED])?
            .map(|header| (header, true)),
    )
}

/// Reads the device VMState and its subsections.
pub fn decode(r: &mut Reader<'_>) -> Result<BalloonState> {
    let num_pages = r.u32(Endian::Big, "balloon.num_pages")?;
    let actual = r.u32(Endian::Big, "balloon.actual")?;
    let mut subsections = Vec::new();
    let mut seen = Vec::new();
    while let Some((header, misspelled)) = next_subsection(r)? {
        // Under either name it is the one page-poison subsection.
        let canonical = if misspelled {
            subsection::SubsectionHeader {
                name: PAGE_POISON,
                ..header.clone()
            }
        } else {
            header.clone()
        };
        subsection::first_time(&mut seen, &canonical)?;
        subsection::check_version(&header, 1)?;
        let sub = match header.name {
            FREE_PAGE_REPORT => BalloonSubsection::FreePageReport {
                version: header.version,
                cmd_id: r.u32(Endian::Big, "free_page_hint_cmd_id")?,
                status: r.u32(Endian::Big, "free_page_hint_status")?,
            },
            _ => BalloonSubsection::PagePoison {
                version: header.version,
                poison_val: r.u32(Endian::Big, "poison_val")?,
                misspelled,
            },
        };
        subsection::end_of_struct(r, header.name)?;
        subsections.push(sub);
    }
    Ok(BalloonState {
        num_pages,
        actual,
        subsections,
    })
}

/// Writes the device VMState back.
pub fn encode(state: &BalloonState, w: &mut Writer) -> Result<()> {
    w.u32(Endian::Big, state.num_pages);
    w.u32(Endian::Big, state.actual);
    for sub in &state.subsections {
        subsection::write_subsection_header(w, sub.name(), sub.version())?;
        match sub {
            BalloonSubsection::FreePageReport { cmd_id, status, .. } => {
                w.u32(Endian::Big, *cmd_id);
                w.u32(Endian::Big, *status);
            }
            BalloonSubsection::PagePoison { poison_val, .. } => {
                w.u32(Endian::Big, *poison_val);
            }
        }
    }
    Ok(())
}
