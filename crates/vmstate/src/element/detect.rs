//! Telling which host layout wrote an element.
//!
//! The bytes carry no tag, but two facts narrow the choice: the size (49,168 bytes for LP64,
//! 32,780 for i386, 32,784 for other 32-bit hosts) and the counters, which are small numbers
//! in the right byte order and huge ones in the wrong order. When the facts leave more than
//! one layout standing, detection says so and names them; it never guesses.

use super::layout::{Layout, LayoutChoice, VIRTQUEUE_MAX_SIZE};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::Reader;

/// A layout whose size fits a blob, and whether its counters make sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The layout.
    pub layout: Layout,
    /// Why the blob cannot be an element of this layout, or `None` when it can.
    pub problem: Option<String>,
}

impl Candidate {
    /// True when nothing rules the layout out.
    pub fn is_plausible(&self) -> bool {
        self.problem.is_none()
    }
}

/// Every layout whose element size equals `blob.len()`, each with its plausibility.
pub fn detect(blob: &[u8]) -> Vec<Candidate> {
    Layout::ALL
        .into_iter()
        .filter(|layout| layout.size() == blob.len())
        .map(|layout| Candidate {
            layout,
            problem: implausibility(blob, layout),
        })
        .collect()
}

/// Why `blob` cannot be an element of `layout`, judged from its first three words.
///
/// A popped request has at least one segment and at most 1024 in all, and its head index (a
/// ring position or a packed-ring buffer id) fits in 16 bits.
fn implausibility(blob: &[u8], layout: Layout) -> Option<String> {
    let endian = layout.geometry().endian;
    let mut reader = Reader::new(blob);
    let (Ok(index), Ok(out_num), Ok(in_num)) = (
        reader.u32(endian, "index"),
        reader.u32(endian, "out_num"),
        reader.u32(endian, "in_num"),
    ) else {
        return Some("too short for the counters".to_owned());
    };
    let max = VIRTQUEUE_MAX_SIZE as u64;
    let total = u64::from(out_num).saturating_add(u64::from(in_num));
    if total > max {
        Some(format!("out_num {out_num} + in_num {in_num} exceed {max}"))
    } else if total == 0 {
        Some("no segments (out_num = in_num = 0)".to_owned())
    } else if index > u32::from(u16::MAX) {
        Some(format!("index {index} does not fit in 16 bits"))
    } else {
        None
    }
}

/// Settles the layout of a blob that holds exactly one element.
///
/// A fixed choice is taken as it is (decoding will report any bad field). With
/// [`LayoutChoice::Auto`]: no layout of this size is an error; a single one is used, and the
/// decoder reports precisely what is wrong with its fields; among several, the one plausible
/// layout is used, and anything else (none or more than one) is an error that lists them.
pub fn choose_layout(blob: &[u8], choice: LayoutChoice) -> Result<Layout> {
    if let LayoutChoice::Fixed(layout) = choice {
        return Ok(layout);
    }
    let candidates = detect(blob);
    match candidates.as_slice() {
        [] => Err(Error::new(
            ErrorKind::NoLayoutFits {
                size: blob.len() as u64,
            },
            0,
            "",
        )),
        [only] => Ok(only.layout),
        several => {
            let plausible: Vec<&Candidate> = several.iter().filter(|c| c.is_plausible()).collect();
            match plausible.as_slice() {
                [one] => Ok(one.layout),
                [] => Err(Error::new(
                    ErrorKind::ImplausibleLayout {
                        reason: several
                            .iter()
                            .map(|c| {
                                format!(
                                    "as {}: {}",
                                    c.layout,
                                    c.problem.as_deref().unwrap_or_default()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                    },
                    0,
                    "",
                )),
                many => Err(Error::new(
                    ErrorKind::AmbiguousLayout {
                        candidates: many.iter().map(|c| c.layout.name()).collect(),
                    },
                    0,
                    "",
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(layout: Layout, index: u32, out_num: u32, in_num: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; layout.size()];
        let words = match layout.geometry().endian {
            crate::wire::Endian::Little => [index, out_num, in_num].map(u32::to_le_bytes),
            crate::wire::Endian::Big => [index, out_num, in_num].map(u32::to_be_bytes),
        };
        bytes[..12].copy_from_slice(&words.concat());
        bytes
    }

    #[test]
    fn byte_order_is_told_by_the_counters() {
        for layout in Layout::ALL {
            let b = blob(layout, 3, 2, 1);
            assert_eq!(choose_layout(&b, LayoutChoice::Auto), Ok(layout));
        }
    }

    #[test]
    fn all_zero_counters_are_ambiguous() {
        let b = vec![0u8; 49_168];
        let err = choose_layout(&b, LayoutChoice::Auto).unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::ImplausibleLayout {
                reason: "as stable: no segments (out_num = in_num = 0); \
                         as lp64-be: no segments (out_num = in_num = 0)"
                    .to_owned()
            }
        );
    }

    #[test]
    fn a_valid_element_is_never_ambiguous_between_byte_orders() {
        // A non-zero count of at most 1024 has a non-zero byte in its two low positions,
        // which the other byte order moves to the two high ones: at least 2^16.
        for count in 1..=1024u32 {
            assert!(count.swap_bytes() > 1024, "{count}");
        }
        for layout in [Layout::Stable, Layout::Ilp32Le] {
            for (out_num, in_num) in [(1, 0), (0, 1), (1023, 1), (512, 512)] {
                let b = blob(layout, 0, out_num, in_num);
                let plausible: Vec<_> = detect(&b)
                    .into_iter()
                    .filter(|c| c.is_plausible())
                    .collect();
                assert_eq!(plausible.len(), 1);
            }
        }
    }

    #[test]
    fn unknown_sizes_fit_no_layout() {
        let err = choose_layout(&[0u8; 100], LayoutChoice::Auto).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::NoLayoutFits { size: 100 });
    }

    #[test]
    fn a_fixed_choice_is_kept() {
        let b = blob(Layout::Stable, 0, 1, 0);
        assert_eq!(
            choose_layout(&b, LayoutChoice::Fixed(Layout::Lp64Be)),
            Ok(Layout::Lp64Be)
        );
    }
}
