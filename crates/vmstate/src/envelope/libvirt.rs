//! libvirt's save image (`virsh save`, managed save): a header, the domain XML (and a cookie)
//! padded to the header's data length, then the QEMU migration stream, compressed as the
//! header's format says.
//!
//! The header is the C struct libvirt writes with `write()`: a 16-byte magic, then six 32-bit
//! words and 14 unused ones in the byte order of the host that wrote it. An image whose
//! version word reads above libvirt's own version is read in the other byte order, as
//! libvirt does.

use serde::Serialize;

use super::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Endian, Reader, Writer};

/// The magic of a finished image.
pub const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
/// The magic while libvirt is still writing the image (it writes the real one last).
pub const PARTIAL_MAGIC: &[u8; 16] = b"LibvirtQemudPart";
/// Bytes of the header: the magic and 20 words.
pub const HEADER_LEN: u64 = 92;
/// The newest header version libvirt writes.
const NEWEST_VERSION: u32 = 2;

/// How the QEMU stream after the XML is stored (libvirt's `virQEMUSaveFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveFormat {
    /// As QEMU wrote it.
    Raw,
    /// Compressed by one of the tools libvirt runs.
    Compressed(Compression),
    /// QEMU's mapped-ram layout (`save_image_format = "sparse"`).
    Sparse,
}

impl SaveFormat {
    fn from_word(word: u32) -> Option<SaveFormat> {
        Some(match word {
            0 => SaveFormat::Raw,
            1 => SaveFormat::Compressed(Compression::Gzip),
            2 => SaveFormat::Compressed(Compression::Bzip2),
            3 => SaveFormat::Compressed(Compression::Xz),
            4 => SaveFormat::Compressed(Compression::Lzop),
            5 => SaveFormat::Compressed(Compression::Zstd),
            6 => SaveFormat::Sparse,
            _ => return None,
        })
    }

    /// The word libvirt stores for this format.
    pub fn word(self) -> u32 {
        match self {
            SaveFormat::Raw => 0,
            SaveFormat::Compressed(Compression::Gzip) => 1,
            SaveFormat::Compressed(Compression::Bzip2) => 2,
            SaveFormat::Compressed(Compression::Xz) => 3,
            SaveFormat::Compressed(Compression::Lzop) => 4,
            SaveFormat::Compressed(Compression::Zstd) => 5,
            SaveFormat::Sparse => 6,
        }
    }

    /// The format's name in libvirt's `qemu.conf` (`save_image_format`).
    pub fn name(self) -> &'static str {
        match self {
            SaveFormat::Raw => "raw",
            SaveFormat::Compressed(c) => c.name(),
            SaveFormat::Sparse => "sparse",
        }
    }
}

/// A libvirt save image's header and metadata; the stream is the rest of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibvirtImage {
    /// The header's version (1 or 2; version 1 images are never compressed).
    pub version: u32,
    /// Byte order of the header's words (the writing host's).
    #[serde(serialize_with = "serialize_endian")]
    pub byte_order: Endian,
    /// Bytes of XML, cookie and padding after the header.
    pub data_len: u32,
    /// Non-zero when the domain was running when it was saved (libvirt resumes it on
    /// restore); kept as the word it is.
    pub was_running: u32,
    /// How the stream is stored.
    pub format: SaveFormat,
    /// Where the cookie starts within the data (0: none).
    pub cookie_offset: u32,
    /// The 14 unused words, kept so that the header is written back as it was.
    #[serde(skip)]
    pub unused: [u32; 14],
    /// The domain XML, without its terminating NUL.
    pub xml: String,
    /// The save cookie (XML), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The domain's `<name>`, from the XML.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    /// The domain's `<uuid>`, from the XML.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_uuid: Option<String>,
}

fn serialize_endian<S: serde::Serializer>(
    e: &Endian,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(match e {
        Endian::Little => "little",
        Endian::Big => "big",
    })
}

impl LibvirtImage {
    /// Reads the header and data of the image at the start of `data` (at least the header
    /// and its data length of bytes; the stream after them is not looked at).
    pub fn parse(data: &[u8]) -> Result<LibvirtImage> {
        let mut r = Reader::new(data);
        let magic = r.bytes(16, "libvirt.magic")?;
        if magic == PARTIAL_MAGIC {
            return Err(Error::new(
                ErrorKind::Unsupported {
                    what: "an incomplete libvirt save image (magic LibvirtQemudPart: libvirt \
                           had not finished writing it; `virsh restore` refuses it too)"
                        .to_owned(),
                },
                0,
                "libvirt.magic",
            ));
        }
        if magic != MAGIC {
            return Err(Error::new(
                ErrorKind::InvalidValue {
                    value: 0,
                    expected: "the magic LibvirtQemudSave",
                },
                0,
                "libvirt.magic",
            ));
        }
        let version_le = data
            .get(16..20)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes);
        let byte_order = match version_le {
            Some(v) if v <= NEWEST_VERSION => Endian::Little,
            _ => Endian::Big,
        };
        let mut word = |field: &str| r.u32(byte_order, field);
        let version = word("libvirt.version")?;
        if version == 0 || version > NEWEST_VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion { version },
                16,
                "libvirt.version",
            ));
        }
        let data_len = word("libvirt.data_len")?;
        let was_running = word("libvirt.was_running")?;
        let format_word = word("libvirt.format")?;
        let cookie_offset = word("libvirt.cookie_offset")?;
        let mut unused = [0u32; 14];
        for slot in &mut unused {
            *slot = word("libvirt.unused")?;
        }
        // Version 1 images predate compression: libvirt ignores the word.
        let format = if version < 2 {
            SaveFormat::Raw
        } else {
            SaveFormat::from_word(format_word).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidValue {
                        value: u64::from(format_word),
                        expected: "a save format libvirt writes (0 raw, 1 gzip, 2 bzip2, 3 xz, \
                                   4 lzop, 5 zstd, 6 sparse)",
                    },
                    28,
                    "libvirt.format",
                )
            })?
        };
        if data_len == 0 {
            return Err(Error::new(
                ErrorKind::InvalidValue {
                    value: 0,
                    expected: "a data length that holds at least the XML's NUL",
                },
                20,
                "libvirt.data_len",
            ));
        }
        let available = (data.len() as u64).saturating_sub(HEADER_LEN);
        if u64::from(data_len) > available {
            return Err(Error::new(
                ErrorKind::UnexpectedEof {
                    needed: u64::from(data_len),
                    available,
                },
                HEADER_LEN,
                "libvirt.data_len",
            ));
        }
        if cookie_offset > data_len {
            return Err(Error::new(
                ErrorKind::CountTooLarge {
                    value: u64::from(cookie_offset),
                    max: u64::from(data_len),
                },
                32,
                "libvirt.cookie_offset",
            ));
        }
        let body = r.bytes(data_len as usize, "libvirt.xml")?;
        let xml_len = if cookie_offset > 0 {
            cookie_offset
        } else {
            data_len
        } as usize;
        let (xml, cookie) = body.split_at(xml_len.min(body.len()));
        let xml = text(xml).ok_or_else(|| unterminated("libvirt.xml", HEADER_LEN))?;
        let cookie = match cookie_offset {
            0 => None,
            at => Some(text(cookie).ok_or_else(|| {
                unterminated("libvirt.cookie", HEADER_LEN.saturating_add(u64::from(at)))
            })?),
        };
        Ok(LibvirtImage {
            version,
            byte_order,
            data_len,
            was_running,
            format,
            cookie_offset,
            unused,
            domain_name: element(&xml, "name"),
            domain_uuid: element(&xml, "uuid"),
            xml,
            cookie,
        })
    }

    /// Offset of the stream (compressed as [`LibvirtImage::format`] says) in the image.
    pub fn stream_offset(&self) -> u64 {
        HEADER_LEN.saturating_add(u64::from(self.data_len))
    }

    /// The header and data as they are written before the stream: the header in its byte
    /// order, the XML, the cookie and zero padding to the data length (which never changes,
    /// so the result has the length of the original).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut header = Writer::with_capacity(HEADER_LEN as usize);
        header.bytes(MAGIC);
        let words = [
            self.version,
            self.data_len,
            self.was_running,
            self.format.word(),
            self.cookie_offset,
        ];
        for w in words.iter().chain(&self.unused) {
            header.u32(self.byte_order, *w);
        }
        let mut out = header.into_bytes();
        out.extend_from_slice(self.xml.as_bytes());
        out.push(0);
        if let Some(cookie) = &self.cookie {
            let at = HEADER_LEN.saturating_add(u64::from(self.cookie_offset)) as usize;
            out.resize(at.max(out.len()), 0);
            out.extend_from_slice(cookie.as_bytes());
            out.push(0);
        }
        let end = self.stream_offset() as usize;
        if out.len() > end {
            return Err(Error::new(
                ErrorKind::CountTooLarge {
                    value: (out.len() as u64).saturating_sub(HEADER_LEN),
                    max: u64::from(self.data_len),
                },
                20,
                "libvirt.data_len",
            ));
        }
        out.resize(end, 0);
        Ok(out)
    }
}

/// The text of a NUL-terminated (and NUL-padded) area; `None` without the NUL, which libvirt
/// needs to read the area as a string, or when it is not UTF-8 (XML, as libvirt writes it).
fn text(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0)?;
    String::from_utf8(bytes.get(..end)?.to_vec()).ok()
}

fn unterminated(field: &str, offset: u64) -> Error {
    Error::new(
        ErrorKind::InvalidValue {
            value: 0,
            expected: "UTF-8 text ending in a NUL within the header's data length",
        },
        offset,
        field,
    )
}

/// The text of the first `<tag>` element of the domain: libvirt writes `<name>` and
/// `<uuid>` as the first children of `<domain>`, before any device could have a `<name>`.
fn element(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)?.checked_add(open.len())?;
    let len = xml.get(start..)?.find(&format!("</{tag}>"))?;
    Some(xml.get(start..start.checked_add(len)?)?.trim().to_owned())
}
