//! VMState machinery shared by every decoder: subsections and the end of a struct.
//!
//! QEMU's payloads carry no lengths and no tags. Optional state travels in subsections that a
//! loader finds by peeking: a subsection of a struct named `parent` is present when the next
//! byte is 0x05, the byte after it (the name's length) is at least `parent.len() + 1`, and the
//! name starts with `parent`. Anything else belongs to whatever follows the struct, and
//! nothing is consumed. A name that passes the test but that the parent does not know fails
//! the whole load: a receiver rejects state it does not understand.

use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Endian, Reader, Writer};

/// The byte that opens a subsection.
pub const SUBSECTION_MARKER: u8 = 0x05;

/// The header of a subsection found by QEMU's peek rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsectionHeader<'a> {
    /// Offset of the 0x05 byte.
    pub offset: u64,
    /// The full name, such as `virtio/extra_state`.
    pub name: &'a str,
    /// The version written after the name (QEMU keeps only its low 8 bits on load).
    pub version: u32,
}

/// Consumes the next subsection header when the bytes ahead open a subsection of `parent`,
/// and returns `None` without consuming anything when they do not.
///
/// `known` lists the subsections `parent` has; a subsection that passes the peek test under
/// another name is an [`ErrorKind::UnknownSubsection`], as in QEMU's loader.
pub fn next_subsection<'a>(
    reader: &mut Reader<'a>,
    parent: &str,
    known: &[&str],
) -> Result<Option<SubsectionHeader<'a>>> {
    next_subsection_if(reader, parent, |name| known.contains(&name))
}

/// Like [`next_subsection`], with the parent's subsections given by a predicate on the name
/// (for parents whose subsections come from the stream's own description).
pub fn next_subsection_if<'a>(
    reader: &mut Reader<'a>,
    parent: &str,
    is_known: impl Fn(&str) -> bool,
) -> Result<Option<SubsectionHeader<'a>>> {
    let head = reader.lookahead(2, "subsection")?;
    let (Some(&SUBSECTION_MARKER), Some(&len)) = (head.first(), head.get(1)) else {
        return Ok(None);
    };
    let len = usize::from(len);
    if len < parent.len().saturating_add(1) {
        return Ok(None);
    }
    let Some(name) = reader
        .lookahead(len.saturating_add(2), "subsection")?
        .get(2..)
    else {
        return Ok(None);
    };
    if name.len() != len || !name.starts_with(parent.as_bytes()) {
        return Ok(None);
    }
    let offset = reader.offset();
    let unknown = |name: String| {
        Error::new(
            ErrorKind::UnknownSubsection {
                name,
                parent: parent.to_owned(),
            },
            offset,
            "subsection",
        )
    };
    let name = match std::str::from_utf8(name) {
        Ok(name) if is_known(name) => name,
        _ => return Err(unknown(String::from_utf8_lossy(name).into_owned())),
    };
    reader.skip(len.saturating_add(2), "subsection.name")?;
    let version = reader.u32(Endian::Big, "subsection.version")?;
    Ok(Some(SubsectionHeader {
        offset,
        name,
        version,
    }))
}

/// Fails when `header` names a subsection already read in this struct (`seen`, which it
/// then joins): QEMU never writes a subsection twice, and its loader would keep the last
/// copy where a reader of the first would see other state.
pub fn first_time<'a>(seen: &mut Vec<&'a str>, header: &SubsectionHeader<'a>) -> Result<()> {
    if seen.contains(&header.name) {
        return Err(Error::new(
            ErrorKind::RepeatedSubsection {
                name: header.name.to_owned(),
            },
            header.offset,
            header.name,
        ));
    }
    seen.push(header.name);
    Ok(())
}

/// Ends a struct that has no subsections: QEMU still peeks after it, so bytes that would
/// open a subsection of `vmsd` are an error there too.
pub fn end_of_struct(reader: &mut Reader<'_>, vmsd: &str) -> Result<()> {
    next_subsection(reader, vmsd, &[]).map(|_| ())
}

/// Fails unless a subsection's version is one this crate decodes.
pub fn check_version(header: &SubsectionHeader<'_>, supported: u32) -> Result<()> {
    if header.version == supported {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidValue {
                value: u64::from(header.version),
                expected: "a subsection version this reader knows",
            },
            header.offset,
            header.name,
        ))
    }
}

/// Writes a subsection header: the marker, the counted name and the version.
pub fn write_subsection_header(writer: &mut Writer, name: &str, version: u32) -> Result<()> {
    writer.u8(SUBSECTION_MARKER);
    writer.counted_bytes(name.as_bytes(), "subsection.name")?;
    writer.u32(Endian::Big, version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, version: u32) -> Vec<u8> {
        let mut w = Writer::new();
        write_subsection_header(&mut w, name, version).unwrap();
        w.into_bytes()
    }

    #[test]
    fn a_subsection_read_twice_in_one_struct_is_refused() {
        let mut bytes = header("virtio/started", 1);
        bytes.push(1);
        bytes.extend(header("virtio/started", 1));
        let mut r = Reader::new(&bytes);
        let mut seen = Vec::new();
        let first = next_subsection(&mut r, "virtio", &["virtio/started"])
            .unwrap()
            .unwrap();
        first_time(&mut seen, &first).unwrap();
        r.skip(1, "started").unwrap();
        let again = next_subsection(&mut r, "virtio", &["virtio/started"])
            .unwrap()
            .unwrap();
        let err = first_time(&mut seen, &again).unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::RepeatedSubsection {
                name: "virtio/started".to_owned()
            }
        );
        assert_eq!(err.offset(), again.offset);
    }

    #[test]
    fn finds_a_known_subsection() {
        let bytes = header("virtio/started", 1);
        let mut r = Reader::new(&bytes);
        let h = next_subsection(&mut r, "virtio", &["virtio/started"])
            .unwrap()
            .unwrap();
        assert_eq!((h.name, h.version, h.offset), ("virtio/started", 1, 0));
        assert!(r.is_empty());
    }

    #[test]
    fn leaves_bytes_that_are_not_a_subsection_of_the_parent() {
        for bytes in [
            vec![0x04, 0x01],
            header("virtio/started", 1),
            header("virtio", 1),
            vec![0x05],
            vec![0x05, 30, b'v'],
        ] {
            let mut r = Reader::new(&bytes);
            assert_eq!(
                next_subsection(&mut r, "virtio/extra_state", &["x"]).unwrap(),
                None
            );
            assert_eq!(r.offset(), 0);
        }
    }

    #[test]
    fn refuses_an_unknown_name_with_the_parent_prefix() {
        let bytes = header("virtio/frobnicate", 1);
        let err = next_subsection(&mut Reader::at(&bytes, 40), "virtio", &["virtio/started"])
            .unwrap_err();
        assert_eq!(err.offset(), 40);
        assert!(
            matches!(err.kind(), ErrorKind::UnknownSubsection { name, .. } if name == "virtio/frobnicate")
        );
        assert!(end_of_struct(&mut Reader::new(&bytes), "virtio").is_err());
    }
}
