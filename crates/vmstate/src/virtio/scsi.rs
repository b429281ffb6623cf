//! virtio-scsi's requests in flight, which QEMU saves in each SCSI disk's own section
//! (`.../scsi-disk`, field `requests` of its `SCSIDevice` struct), not in the virtio-scsi
//! section.
//!
//! Each request is a byte 1 (to be retried) or 2, the 16-byte CDB, the tag and the LUN, then
//! virtio-scsi's part (the request queue number, counted after the control and event
//! queues, the packed-ring `ndescs` word when packed rings are offered, and the element),
//! then scsi-disk's part (sector, sector count, buffer length and, depending on the
//! transfer direction, the data). A byte 0 ends the list. The direction is not written: it
//! follows from the CDB's operation code, as QEMU's loader derives it. Requests that
//! scsi-disk emulates (not reads or writes) carry scsi-disk's part only in newer QEMU with
//! `migrate-emulated-scsi-request` on: settled by trial, like the element framing.

use serde::Serialize;

use super::framing::{self, Framing, InFlight, Reading};
use super::{Assumptions, Inference};
use crate::error::{Error, ErrorKind, Result};
use crate::hex::HexBytes;
use crate::note::Note;
use crate::wire::{Endian, Reader, Writer};

/// Bytes of a saved CDB (`SCSI_CMD_BUF_SIZE`).
pub const CDB_BYTES: usize = 16;
/// Bytes of a sector as scsi-disk counts them (`BDRV_SECTOR_SIZE`).
const SECTOR_BYTES: u64 = 512;
/// virtio-scsi's fixed queues before the request queues (control, event).
const FIXED_QUEUES: u32 = 2;

/// The requests of one SCSI disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScsiRequests {
    /// The requests, in list order.
    pub requests: Vec<ScsiRequest>,
    /// How the elements are framed.
    pub framing: Framing,
    /// Emulated requests carry scsi-disk's part (QEMU 9.1 and later with
    /// `migrate-emulated-scsi-request` on).
    pub emulated_saved: bool,
    /// Facts the bytes do not state, and how they were settled.
    pub inferred: Vec<Inference>,
    /// Facts about the bytes that are not defects.
    pub notes: Vec<Note>,
}

/// One SCSI request in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScsiRequest {
    /// Marked for retry (saved as 1; 2 otherwise).
    pub retry: bool,
    /// The command descriptor block, all 16 bytes.
    pub cdb: HexBytes,
    /// The request's tag.
    pub tag: u32,
    /// Its LUN.
    pub lun: u32,
    /// virtio-scsi's request queue number: the virtqueue index minus 2.
    pub queue_number: u32,
    /// The element (`queue` is `queue_number + 2`).
    #[serde(flatten)]
    pub element: InFlight,
    /// scsi-disk's part, when saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskPart>,
}

/// scsi-disk's part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskPart {
    /// Next sector to transfer.
    pub sector: u64,
    /// Sectors left.
    pub sector_count: u32,
    /// Size of the bounce buffer.
    pub buflen: u32,
    /// The buffer's data, as saved.
    pub data: DiskData,
}

/// The data scsi-disk saves with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "bytes", rename_all = "kebab-case")]
pub enum DiskData {
    /// Nothing (no buffer, or a read to be retried).
    None,
    /// A write's data: `min(sector_count × 512, buflen)` bytes.
    ToDevice(HexBytes),
    /// A read's data not yet returned: a 32-bit length, then that many bytes.
    FromDevice(HexBytes),
}

/// Which way a command moves data, from its operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToDevice,
    Other,
}

/// Operation codes QEMU's SCSI layer treats as moving data to the device.
const TO_DEVICE: &[u8] = &[
    0x04, 0x07, 0x0a, 0x15, 0x18, 0x1d, 0x2a, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x38, 0x39, 0x3a, 0x3b,
    0x3d, 0x3f, 0x40, 0x41, 0x42, 0x4c, 0x55, 0x5d, 0x5f, 0x8a, 0x8e, 0x8f, 0x93, 0xa4, 0xaa, 0xae,
    0xaf, 0xb0, 0xb1, 0xb2, 0xb6, 0xbf,
];

/// Operation codes scsi-disk runs through its DMA path (reads, writes, verifies), whose
/// requests always carry scsi-disk's part.
const DMA: &[u8] = &[
    0x08, 0x28, 0xa8, 0x88, 0x0a, 0x2a, 0xaa, 0x8a, 0x2f, 0xaf, 0x8f, 0x2e, 0xae, 0x8e,
];

/// A read or write command block: where it starts and how many logical blocks it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCommand {
    /// First logical block.
    pub lba: u64,
    /// Logical blocks moved (a 6-byte command's 0 stands for 256).
    pub blocks: u64,
    /// Data moves to the device (a write) rather than from it (a read).
    pub to_device: bool,
}

impl BlockCommand {
    /// The READ or WRITE (or WRITE AND VERIFY) command of `cdb`, in any of its 6, 10, 12 and
    /// 16-byte forms; `None` for every other command.
    pub fn parse(cdb: &[u8]) -> Option<BlockCommand> {
        let be = |range: std::ops::Range<usize>| {
            cdb.get(range)
                .map(|b| b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
        };
        let opcode = *cdb.first()?;
        let (lba, blocks) = match opcode {
            0x08 | 0x0a => {
                let lba = be(1..4)? & 0x1f_ffff;
                let blocks = match be(4..5)? {
                    0 => 256,
                    n => n,
                };
                (lba, blocks)
            }
            0x28 | 0x2a | 0x2e => (be(2..6)?, be(7..9)?),
            0xa8 | 0xaa | 0xae => (be(2..6)?, be(6..10)?),
            0x88 | 0x8a | 0x8e => (be(2..10)?, be(10..14)?),
            _ => return None,
        };
        Some(BlockCommand {
            lba,
            blocks,
            to_device: direction(opcode) == Direction::ToDevice,
        })
    }
}

fn direction(opcode: u8) -> Direction {
    if TO_DEVICE.contains(&opcode) {
        Direction::ToDevice
    } else {
        Direction::Other
    }
}

/// One reading of a request list: the element framing and whether emulated requests carry
/// scsi-disk's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiReading {
    /// Element framing.
    pub framing: Framing,
    /// Emulated requests carry scsi-disk's part.
    pub emulated_saved: bool,
}

impl Reading for ScsiReading {
    fn framing(&self) -> Option<Framing> {
        Some(self.framing)
    }
    fn with_framing(self, framing: Framing) -> Self {
        ScsiReading { framing, ..self }
    }
    fn describe(&self) -> String {
        format!(
            "{}, emulated requests {}",
            framing::describe_framing(&self.framing),
            if self.emulated_saved {
                "with scsi-disk's part"
            } else {
                "without scsi-disk's part"
            }
        )
    }
}

impl ScsiRequests {
    /// Decodes a whole `requests` field in `r`. `packed` says whether the virtio-scsi device
    /// the disk hangs off offers packed rings, when it is known; the assumptions are that
    /// device's.
    pub fn decode(r: &mut Reader<'_>, packed: Option<bool>, assume: &Assumptions) -> Result<Self> {
        let mut keys = Vec::new();
        for framing in framing::element_framings(assume, &[false]) {
            for emulated_saved in [false, true] {
                keys.push(ScsiReading {
                    framing,
                    emulated_saved,
                });
            }
        }
        let without_emulated = |k: &ScsiReading| !k.emulated_saved;
        let settled = framing::settle(
            r,
            "requests",
            &keys,
            |r, key| {
                let mut notes = Vec::new();
                let requests = decode_list(r, key, &mut notes)?;
                r.expect_end("requests")?;
                Ok(framing::Parsed {
                    elements: requests.len(),
                    state: requests,
                    subsections: Vec::new(),
                    notes,
                    packed,
                })
            },
            &[&without_emulated],
            "SECTION:packed=on|off on the virtio-scsi section or the element layout",
        )?;
        let requests = settled.parsed.state;
        let mut inferred = framing::element_inferences(
            "requests",
            &settled.key.framing,
            assume,
            "the virtio-scsi device's virtio/packed_virtqueues subsection",
            settled.no_elements,
            settled.others,
        );
        if !requests.is_empty() {
            inferred.push(Inference::new(
                "requests.queue",
                "each element's queue is queue_number + 2",
                "virtio-scsi saves the request queue number, counted after its control and \
                 event queues",
            ));
        }
        for (k, req) in requests.iter().enumerate() {
            let opcode = req.cdb.0.first().copied().unwrap_or(0);
            if let Some(disk) = &req.disk {
                if disk.buflen != 0 {
                    inferred.push(Inference::new(
                        &format!("requests[{k}].disk.data"),
                        match direction(opcode) {
                            Direction::ToDevice => {
                                "data to the device: min(sector_count × 512, \
                                                    buflen) bytes"
                            }
                            Direction::Other if req.retry => {
                                "data from the device, to be retried: nothing saved"
                            }
                            Direction::Other => "data from the device: a length, then the bytes",
                        },
                        format!(
                            "the CDB's operation code {opcode:#04x}, from which QEMU's loader \
                             derives the transfer direction"
                        ),
                    ));
                }
            }
        }
        if requests.iter().any(|q| !is_dma(&q.cdb.0)) {
            inferred.push(Inference::new(
                "requests.disk",
                if settled.key.emulated_saved {
                    "emulated requests carry scsi-disk's part (migrate-emulated-scsi-request on)"
                } else {
                    "emulated requests carry no scsi-disk part"
                },
                format!(
                    "the list parses to the end of the field under this reading ({} other \
                     reading(s) parsed; without the part preferred when both do)",
                    settled.others
                ),
            ));
        }
        r.skip(r.remaining(), "requests")?;
        Ok(ScsiRequests {
            requests,
            framing: settled.key.framing,
            emulated_saved: settled.key.emulated_saved,
            inferred,
            notes: settled.parsed.notes,
        })
    }

    /// Writes the list back, with `framing` (which may differ from the one it was read with)
    /// or its own.
    pub fn encode_with(&self, w: &mut Writer, framing: Option<Framing>) -> Result<()> {
        let framing = framing.unwrap_or(self.framing);
        for (k, req) in self.requests.iter().enumerate() {
            let path = format!("requests[{k}]");
            w.u8(if req.retry { 1 } else { 2 });
            if req.cdb.0.len() != CDB_BYTES {
                return Err(Error::new(
                    ErrorKind::InvalidValue {
                        value: req.cdb.0.len() as u64,
                        expected: "a 16-byte CDB",
                    },
                    w.offset(),
                    format!("{path}.cdb"),
                ));
            }
            w.bytes(&req.cdb.0);
            w.u32(Endian::Big, req.tag);
            w.u32(Endian::Big, req.lun);
            w.u32(Endian::Big, req.queue_number);
            framing::write_element(w, framing, &req.element, &path)?;
            if let Some(disk) = &req.disk {
                w.u64(Endian::Big, disk.sector);
                w.u32(Endian::Big, disk.sector_count);
                w.u32(Endian::Big, disk.buflen);
                match &disk.data {
                    DiskData::None => {}
                    DiskData::ToDevice(bytes) => w.bytes(&bytes.0),
                    DiskData::FromDevice(bytes) => {
                        let len = u32::try_from(bytes.0.len()).map_err(|_| {
                            Error::new(
                                ErrorKind::ValueTooWide {
                                    value: bytes.0.len() as u64,
                                    bits: 32,
                                },
                                w.offset(),
                                format!("{path}.disk.data"),
                            )
                        })?;
                        w.u32(Endian::Big, len);
                        w.bytes(&bytes.0);
                    }
                }
            }
        }
        w.u8(0);
        Ok(())
    }
}

fn is_dma(cdb: &[u8]) -> bool {
    cdb.first().is_some_and(|op| DMA.contains(op))
}

fn decode_list(
    r: &mut Reader<'_>,
    reading: ScsiReading,
    notes: &mut Vec<Note>,
) -> Result<Vec<ScsiRequest>> {
    let mut requests = Vec::new();
    loop {
        let path = format!("requests[{}]", requests.len());
        let marker_offset = r.offset();
        let retry = match r.u8("marker").map_err(|e| e.within(&path))? {
            0 => break,
            1 => true,
            2 => false,
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidValue {
                        value: u64::from(other),
                        expected: "1 (a request to retry), 2 (a request) or 0 (end of the list)",
                    },
                    marker_offset,
                    format!("{path}.marker"),
                ))
            }
        };
        let request =
            decode_request(r, reading, retry, notes, &path).map_err(|e| e.within(&path))?;
        requests.push(request);
    }
    Ok(requests)
}

fn decode_request(
    r: &mut Reader<'_>,
    reading: ScsiReading,
    retry: bool,
    notes: &mut Vec<Note>,
    path: &str,
) -> Result<ScsiRequest> {
    let cdb = HexBytes(r.bytes(CDB_BYTES, "cdb")?.to_vec());
    let tag = r.u32(Endian::Big, "tag")?;
    let lun = r.u32(Endian::Big, "lun")?;
    let queue_number = r.u32(Endian::Big, "queue_number")?;
    let mut element = framing::read_element(r, reading.framing, notes, path)?;
    element.queue = queue_number.checked_add(FIXED_QUEUES);
    let disk = match is_dma(&cdb.0) || reading.emulated_saved {
        false => None,
        true => Some(decode_disk(r, &cdb.0, retry)?),
    };
    Ok(ScsiRequest {
        retry,
        cdb,
        tag,
        lun,
        queue_number,
        element,
        disk,
    })
}

fn decode_disk(r: &mut Reader<'_>, cdb: &[u8], retry: bool) -> Result<DiskPart> {
    let sector = r.u64(Endian::Big, "disk.sector")?;
    let sector_count = r.u32(Endian::Big, "disk.sector_count")?;
    let buflen = r.u32(Endian::Big, "disk.buflen")?;
    let opcode = cdb.first().copied().unwrap_or(0);
    let data = match (buflen, direction(opcode), retry) {
        (0, _, _) => DiskData::None,
        (_, Direction::ToDevice, _) => {
            let len = u64::from(sector_count)
                .saturating_mul(SECTOR_BYTES)
                .min(u64::from(buflen));
            let len = r.check_count(len, 1, "disk.data")?;
            DiskData::ToDevice(HexBytes(r.bytes(len, "disk.data")?.to_vec()))
        }
        (_, Direction::Other, true) => DiskData::None,
        (_, Direction::Other, false) => {
            let len_offset = r.offset();
            let len = r.u32(Endian::Big, "disk.data.len")?;
            if len > buflen {
                // QEMU's loader asserts this.
                return Err(Error::new(
                    ErrorKind::CountTooLarge {
                        value: u64::from(len),
                        max: u64::from(buflen),
                    },
                    len_offset,
                    "disk.data.len",
                ));
            }
            let len = r.check_count(u64::from(len), 1, "disk.data")?;
            DiskData::FromDevice(HexBytes(r.bytes(len, "disk.data")?.to_vec()))
        }
    };
    Ok(DiskPart {
        sector,
        sector_count,
        buflen,
        data,
    })
}
