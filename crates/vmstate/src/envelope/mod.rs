//! What a migration stream comes wrapped in, recognised by content: nothing (a bare stream),
//! a compression (`migrate "exec:gzip -c > FILE"`), or a libvirt save image (`virsh save`),
//! whose header and domain XML come before the stream and say how it is compressed.
//!
//! An [`Envelope`] says where the stream starts and how to get at it; the stream itself is
//! read by [`crate::stream`] once it is unwrapped.

mod compression;
mod libvirt;
mod lzop;
mod qcow2;

use serde::Serialize;

pub use compression::{Compression, Compressor, Decompressed};
pub use libvirt::{LibvirtImage, SaveFormat, HEADER_LEN as LIBVIRT_HEADER_LEN};
pub use qcow2::{Qcow2Image, Snapshot, MAGIC as QCOW2_MAGIC};

use crate::error::{Error, ErrorKind, Result};

/// What wraps a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Envelope {
    /// A bare QEMU stream.
    Bare,
    /// A compressed QEMU stream.
    Compressed {
        /// How.
        compression: Compression,
    },
    /// A libvirt save image.
    Libvirt(LibvirtImage),
    /// A qcow2 image, whose internal snapshots keep VM state.
    Qcow2 {
        /// Its header and snapshot table.
        image: Qcow2Image,
        /// The snapshot whose state is the stream, once one is chosen
        /// ([`Qcow2Image::select`]).
        chosen: Option<usize>,
    },
}

impl Envelope {
    /// What wraps the stream in `data`, from its first bytes (for a libvirt image, its
    /// header and data length of bytes). Anything unrecognised is taken for a bare stream,
    /// which the stream reader then judges.
    pub fn identify(data: &[u8]) -> Result<Envelope> {
        if data.starts_with(libvirt::MAGIC) || data.starts_with(libvirt::PARTIAL_MAGIC) {
            return LibvirtImage::parse(data).map(Envelope::Libvirt);
        }
        if data.starts_with(qcow2::MAGIC) {
            return Qcow2Image::parse(data).map(|image| Envelope::Qcow2 {
                image,
                chosen: None,
            });
        }
        Ok(match Compression::detect(data) {
            Some(compression) => Envelope::Compressed { compression },
            None => Envelope::Bare,
        })
    }

    /// True when `prefix` starts like a libvirt save image, whose header must be read
    /// before anything else.
    pub fn is_libvirt(prefix: &[u8]) -> bool {
        prefix.starts_with(libvirt::MAGIC) || prefix.starts_with(libvirt::PARTIAL_MAGIC)
    }

    /// Where the stream starts in the input, and its compression, if any. A qcow2
    /// snapshot's state is not in one piece: it is read by [`Qcow2Image::read_vm_state`].
    pub fn payload(&self) -> Result<(u64, Option<Compression>)> {
        match self {
            Envelope::Qcow2 { .. } => Err(Error::new(
                ErrorKind::Unsupported {
                    what: "a qcow2 snapshot's VM state as one range of the image (its \
                           clusters are scattered: Qcow2Image::read_vm_state reads them)"
                        .to_owned(),
                },
                0,
                "qcow2",
            )),
            Envelope::Bare => Ok((0, None)),
            Envelope::Compressed { compression } => Ok((0, Some(*compression))),
            Envelope::Libvirt(image) => match image.format {
                // "sparse" is QEMU's mapped-ram stream, uncompressed after the header.
                SaveFormat::Raw | SaveFormat::Sparse => Ok((image.stream_offset(), None)),
                SaveFormat::Compressed(c) => Ok((image.stream_offset(), Some(c))),
            },
        }
    }

    /// Whether the stream is compressed in the file.
    pub fn is_compressed(&self) -> bool {
        matches!(self.payload(), Ok((_, Some(_))))
    }

    /// The libvirt save image the stream is in, if it is in one.
    pub fn libvirt_image(&self) -> Option<&LibvirtImage> {
        match self {
            Envelope::Libvirt(image) => Some(image),
            _ => None,
        }
    }

    /// Where the stream's first byte is in the file, when the file holds it as it is (a
    /// libvirt image's stream follows its header and XML); 0 for a compressed stream or a
    /// qcow2 snapshot's. A mapped-ram stream's block headers count from the file's start
    /// ([`crate::stream::read_in_file`]).
    pub fn stream_file_offset(&self) -> u64 {
        match self.payload() {
            Ok((offset, None)) => offset,
            _ => 0,
        }
    }

    /// One line about the envelope, for people.
    pub fn describe(&self) -> String {
        match self {
            Envelope::Bare => "bare QEMU stream".to_owned(),
            Envelope::Compressed { compression } => {
                format!("{}-compressed QEMU stream", compression.name())
            }
            Envelope::Libvirt(image) => format!(
                "libvirt save image v{} ({}-endian header): domain {}{}, {}, stream {} at \
                 offset {} after {} bytes of XML and padding",
                image.version,
                match image.byte_order {
                    crate::wire::Endian::Little => "little",
                    crate::wire::Endian::Big => "big",
                },
                image.domain_name.as_deref().unwrap_or("(unnamed)"),
                image
                    .domain_uuid
                    .as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default(),
                if image.was_running != 0 {
                    "was running (resumed on restore)"
                } else {
                    "was paused"
                },
                image.format.name(),
                image.stream_offset(),
                image.data_len
            ),
            Envelope::Qcow2 { image, chosen } => {
                let mut text = format!(
                    "qcow2 v{} image ({} KiB clusters, {} bytes of disk), {} internal \
                     snapshot(s)",
                    image.version,
                    image.cluster_size / 1024,
                    image.size,
                    image.snapshots.len()
                );
                if let Some(s) = chosen.and_then(|i| image.snapshots.get(i)) {
                    text.push_str(&format!(
                        ": snapshot {} \"{}\" of {}, VM clock {}, {} bytes of VM state",
                        s.id,
                        s.name,
                        utc(u64::from(s.date_sec)),
                        clock(s.vm_clock_nsec),
                        s.vm_state_size
                    ));
                }
                text
            }
        }
    }
}

impl Qcow2Image {
    /// Every internal snapshot, one line each with a header line, as `qemu-img snapshot -l`
    /// lists them (id, name, VM state size, date, VM clock); `chosen` (a table position) is
    /// marked with `*`. Empty when the image has no snapshots.
    pub fn snapshot_table(&self, chosen: Option<usize>) -> String {
        if self.snapshots.is_empty() {
            return String::new();
        }
        let id_width = self
            .snapshots
            .iter()
            .map(|s| s.id.len())
            .fold(2, usize::max);
        let name_width = self
            .snapshots
            .iter()
            .map(|s| s.name.len())
            .fold(4, usize::max);
        let mut out = format!(
            "  {:<id_width$}  {:<name_width$}  {:>14}  {:<23}  VM clock\n",
            "id", "name", "VM state", "date"
        );
        for s in &self.snapshots {
            let state = if s.vm_state_size == 0 {
                "none".to_owned()
            } else {
                format!("{} bytes", s.vm_state_size)
            };
            out.push_str(&format!(
                "{} {:<id_width$}  {:<name_width$}  {:>14}  {:<23}  {}\n",
                if chosen == Some(s.index) { '*' } else { ' ' },
                s.id,
                s.name,
                state,
                utc(u64::from(s.date_sec)),
                clock(s.vm_clock_nsec)
            ));
        }
        out
    }
}

/// Seconds since the epoch as a UTC date and time.
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z % 146_097;
    // The inputs come from a 32-bit count of seconds: no step can wrap.
    let yoe = doe
        .wrapping_sub(doe / 1460)
        .wrapping_add(doe / 36_524)
        .wrapping_sub(doe / 146_096)
        / 365;
    let doy = doe.wrapping_sub(
        yoe.wrapping_mul(365)
            .wrapping_add(yoe / 4)
            .wrapping_sub(yoe / 100),
    );
    let mp = doy.wrapping_mul(5).wrapping_add(2) / 153;
    let day = doy
        .wrapping_sub(mp.wrapping_mul(153).wrapping_add(2) / 5)
        .wrapping_add(1);
    let month = if mp < 10 {
        mp.wrapping_add(3)
    } else {
        mp.wrapping_sub(9)
    };
    let year = yoe
        .wrapping_add(era.wrapping_mul(400))
        .wrapping_add(u64::from(month <= 2));
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A guest clock in nanoseconds as hours, minutes and seconds.
fn clock(nsec: u64) -> String {
    let ms = nsec / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}
