//! virtio-net's device VMState (`virtio-net-device`, version 11, the same in QEMU 7.2 and
//! 10.0): the MAC address, receive filters, the MAC and VLAN tables, queue pairs and
//! offloads, then optional subsections (RSS).
//!
//! Two field groups depend on facts outside the VMState. The queue-pair fields are there
//! only when the device has more than one queue pair, a property the stream does not carry:
//! the caller settles that by trial. `curr_guest_offloads` is there when the guest
//! negotiated `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS`, which QEMU's loader tests against the low
//! feature word read earlier in the same field. The MAC table is sized by `in_use` from the
//! stream: up to 64 entries are a table; a larger count (CVE-2013-4148/4149) is bytes that
//! QEMU skips, checked against the input before anything is read.

use serde::{Serialize, Serializer};

use super::framing::Reading;
use super::{Assumptions, Inference};
use crate::error::{Error, ErrorKind, Result};
use crate::hex::HexBytes;
use crate::subsection;
use crate::wire::{Endian, Reader, Writer};

/// Name of the device VMState.
const VMSD: &str = "virtio-net-device";
const RSS: &str = "virtio-net-device/rss";
/// Entries of QEMU's MAC filter table (`MAC_TABLE_ENTRIES`).
pub const MAC_TABLE_ENTRIES: u32 = 64;
/// Bytes of the VLAN filter bitmap (4096 VLAN ids, one bit each).
pub const VLAN_BYTES: usize = 512;
/// Bytes of an RSS hash key (`VIRTIO_NET_RSS_MAX_KEY_SIZE`).
pub const RSS_KEY_BYTES: usize = 40;
/// `VIRTIO_NET_F_CTRL_GUEST_OFFLOADS`.
const CTRL_GUEST_OFFLOADS: u32 = 1 << 2;

/// A MAC address, shown as `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacAddr(pub [u8; 6]);

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let [a, b, c, d, e, f] = self.0;
        s.serialize_str(&format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}"))
    }
}

/// The MAC filter table as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MacTable {
    /// `in_use` entries, at most 64.
    Entries(Vec<MacAddr>),
    /// `in_use` was over 64: QEMU's loader skips `in_use × 6` bytes and marks both filter
    /// tables overflowed; the bytes are kept as they are so that they round-trip.
    Discarded(HexBytes),
}

/// The queue-pair fields, present when the device has more than one queue pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetQueuePairs {
    /// `max_queue_pairs` (must equal the destination's).
    pub max: u16,
    /// `curr_queue_pairs` (at most `max`).
    pub curr: u16,
    /// `tx_waiting` of queue pairs 1 to `curr - 1` (pair 0's is `NetState::tx_waiting`).
    pub tx_waiting: Vec<u32>,
}

/// virtio-net's device state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetState {
    /// The MAC address.
    pub mac: MacAddr,
    /// `tx_waiting` of queue pair 0.
    pub tx_waiting: u32,
    /// Mergeable receive buffers negotiated.
    pub mergeable_rx_bufs: u32,
    /// Link status (`VIRTIO_NET_S_*`).
    pub status: u16,
    /// Promiscuous mode.
    pub promisc: u8,
    /// All-multicast mode.
    pub allmulti: u8,
    /// `mac_table.in_use`: entries of the MAC table, as saved.
    pub mac_table_in_use: u32,
    /// The MAC table.
    pub mac_table: MacTable,
    /// The VLAN filter bitmap (512 bytes, saved as host-order 32-bit words).
    pub vlans: HexBytes,
    /// The peer has a vnet header.
    pub has_vnet_hdr: u32,
    /// Multicast filter overflowed.
    pub multi_overflow: u8,
    /// Unicast filter overflowed.
    pub uni_overflow: u8,
    /// All-unicast mode.
    pub alluni: u8,
    /// No-multicast mode.
    pub nomulti: u8,
    /// No-unicast mode.
    pub nouni: u8,
    /// No-broadcast mode.
    pub nobcast: u8,
    /// The peer supports UFO.
    pub has_ufo: u8,
    /// Queue pairs, when the device has more than one.
    pub queue_pairs: Option<NetQueuePairs>,
    /// Guest offloads in effect, when the guest negotiated control of them.
    pub curr_guest_offloads: Option<u64>,
    /// Subsections, in stream order.
    pub subsections: Vec<NetSubsection>,
}

/// A subsection of `virtio-net-device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name")]
pub enum NetSubsection {
    /// `virtio-net-device/rss`: receive-side scaling, sent when the guest enabled it.
    #[serde(rename = "virtio-net-device/rss")]
    Rss(RssState),
}

/// The RSS subsection (version 1; version 2 adds the supported hash types).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RssState {
    /// Version written in the stream.
    pub version: u32,
    /// RSS enabled (a byte; non-zero is true).
    pub enabled: u8,
    /// Redirect (a byte).
    pub redirect: u8,
    /// Populate hash (a byte).
    pub populate_hash: u8,
    /// Hash types in use.
    pub hash_types: u32,
    /// Hash types supported (version 2 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_hash_types: Option<u32>,
    /// Default queue.
    pub default_queue: u16,
    /// The hash key.
    pub key: HexBytes,
    /// The indirection table (its length is saved as a 16-bit count before it).
    pub indirections_table: Vec<u16>,
}

/// One reading of the device VMState: whether the queue-pair fields are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetReading {
    /// The device has more than one queue pair.
    pub queue_pairs: bool,
}

impl Reading for NetReading {
    fn framing(&self) -> Option<super::Framing> {
        None
    }
    fn with_framing(self, _: super::Framing) -> Self {
        self
    }
    fn describe(&self) -> String {
        if self.queue_pairs {
            "queue-pair fields present (max_queue_pairs > 1)".to_owned()
        } else {
            "no queue-pair fields (one queue pair)".to_owned()
        }
    }
}

/// `max_virtqueue_pairs` from the device's config space, when the config is long enough to
/// hold it (the device offers multiqueue). Guest-endian: little endian on the hosts QEMU's
/// modern and x86 legacy devices use.
pub fn config_max_queue_pairs(config: &[u8]) -> Option<u16> {
    match config.get(8..10) {
        Some(&[lo, hi]) => Some(u16::from_le_bytes([lo, hi])),
        _ => None,
    }
}

/// Reads the device VMState with `reading`; `guest_features_low` is the low feature word
/// read earlier in the field.
pub fn decode(
    r: &mut Reader<'_>,
    reading: NetReading,
    guest_features_low: u32,
) -> Result<NetState> {
    let mac = MacAddr(r.array("net.mac")?);
    let tx_waiting = r.u32(Endian::Big, "net.vqs[0].tx_waiting")?;
    subsection::end_of_struct(r, "virtio-net-queue-tx_waiting")?;
    let mergeable_rx_bufs = r.u32(Endian::Big, "net.mergeable_rx_bufs")?;
    let status = r.u16(Endian::Big, "net.status")?;
    let promisc = r.u8("net.promisc")?;
    let allmulti = r.u8("net.allmulti")?;
    let mac_table_in_use = r.u32(Endian::Big, "net.mac_table.in_use")?;
    let in_use = r.check_count(u64::from(mac_table_in_use), 6, "net.mac_table.macs")?;
    let mac_table = if mac_table_in_use <= MAC_TABLE_ENTRIES {
        let mut entries = Vec::with_capacity(in_use);
        for _ in 0..in_use {
            entries.push(MacAddr(r.array("net.mac_table.macs")?));
        }
        MacTable::Entries(entries)
    } else {
        let bytes = in_use.saturating_mul(6);
        MacTable::Discarded(HexBytes(r.bytes(bytes, "net.mac_table.unused")?.to_vec()))
    };
    let vlans = HexBytes(r.bytes(VLAN_BYTES, "net.vlans")?.to_vec());
    let has_vnet_hdr = r.u32(Endian::Big, "net.has_vnet_hdr")?;
    subsection::end_of_struct(r, "virtio-net-vnet")?;
    let multi_overflow = r.u8("net.mac_table.multi_overflow")?;
    let uni_overflow = r.u8("net.mac_table.uni_overflow")?;
    let alluni = r.u8("net.alluni")?;
    let nomulti = r.u8("net.nomulti")?;
    let nouni = r.u8("net.nouni")?;
    let nobcast = r.u8("net.nobcast")?;
    let has_ufo = r.u8("net.has_ufo")?;
    subsection::end_of_struct(r, "virtio-net-ufo")?;
    let queue_pairs = match reading.queue_pairs {
        false => None,
        true => Some(decode_queue_pairs(r)?),
    };
    subsection::end_of_struct(r, "virtio-net-tx_waiting")?;
    let curr_guest_offloads = match guest_features_low & CTRL_GUEST_OFFLOADS {
        0 => None,
        _ => Some(r.u64(Endian::Big, "net.curr_guest_offloads")?),
    };
    let mut subsections = Vec::new();
    let mut seen = Vec::new();
    while let Some(header) = subsection::next_subsection(r, VMSD, &[RSS])? {
        subsection::first_time(&mut seen, &header)?;
        let rss = decode_rss(r, &header).map_err(|e| e.within(header.name))?;
        subsection::end_of_struct(r, header.name)?;
        subsections.push(NetSubsection::Rss(rss));
    }
    Ok(NetState {
        mac,
        tx_waiting,
        mergeable_rx_bufs,
        status,
        promisc,
        allmulti,
        mac_table_in_use,
        mac_table,
        vlans,
        has_vnet_hdr,
        multi_overflow,
        uni_overflow,
        alluni,
        nomulti,
        nouni,
        nobcast,
        has_ufo,
        queue_pairs,
        curr_guest_offloads,
        subsections,
    })
}

fn decode_queue_pairs(r: &mut Reader<'_>) -> Result<NetQueuePairs> {
    let max_offset = r.offset();
    let max = r.u16(Endian::Big, "net.max_queue_pairs")?;
    if max <= 1 {
        // Written only when the device has more than one pair.
        return Err(Error::new(
            ErrorKind::InvalidValue {
                value: u64::from(max),
                expected: "more than 1 queue pair (the field is sent only then)",
            },
            max_offset,
            "net.max_queue_pairs",
        ));
    }
    let curr_offset = r.offset();
    let curr = r.u16(Endian::Big, "net.curr_queue_pairs")?;
    if curr > max {
        // QEMU's loader refuses it (CVE-2013-4150).
        return Err(Error::new(
            ErrorKind::CountTooLarge {
                value: u64::from(curr),
                max: u64::from(max),
            },
            curr_offset,
            "net.curr_queue_pairs",
        ));
    }
    let more = r.check_count(u64::from(curr.saturating_sub(1)), 4, "net.tx_waiting[1..]")?;
    let mut tx_waiting = Vec::with_capacity(more);
    for k in 0..more {
        let path = format!("net.vqs[{}].tx_waiting", k.saturating_add(1));
        tx_waiting.push(r.u32(Endian::Big, &path)?);
        subsection::end_of_struct(r, "virtio-net-queue-tx_waiting")?;
    }
    Ok(NetQueuePairs {
        max,
        curr,
        tx_waiting,
    })
}

fn decode_rss(r: &mut Reader<'_>, header: &subsection::SubsectionHeader<'_>) -> Result<RssState> {
    if header.version != 1 && header.version != 2 {
        subsection::check_version(header, 1)?;
    }
    let enabled = r.u8("enabled")?;
    let redirect = r.u8("redirect")?;
    let populate_hash = r.u8("populate_hash")?;
    let hash_types = r.u32(Endian::Big, "hash_types")?;
    let supported_hash_types = match header.version {
        1 => None,
        _ => Some(r.u32(Endian::Big, "supported_hash_types")?),
    };
    let len = r.u16(Endian::Big, "indirections_len")?;
    let default_queue = r.u16(Endian::Big, "default_queue")?;
    let key = HexBytes(r.bytes(RSS_KEY_BYTES, "key")?.to_vec());
    let len = r.check_count(u64::from(len), 2, "indirections_table")?;
    let mut indirections_table = Vec::with_capacity(len);
    for _ in 0..len {
        indirections_table.push(r.u16(Endian::Big, "indirections_table")?);
    }
    Ok(RssState {
        version: header.version,
        enabled,
        redirect,
        populate_hash,
        hash_types,
        supported_hash_types,
        default_queue,
        key,
        indirections_table,
    })
}

/// Writes the device VMState back.
pub fn encode(net: &NetState, w: &mut Writer) -> Result<()> {
    let bad = |w: &Writer, field: &str, expected: &'static str, value: u64| {
        Error::new(
            ErrorKind::InvalidValue { value, expected },
            w.offset(),
            field,
        )
    };
    w.bytes(&net.mac.0);
    w.u32(Endian::Big, net.tx_waiting);
    w.u32(Endian::Big, net.mergeable_rx_bufs);
    w.u16(Endian::Big, net.status);
    w.u8(net.promisc);
    w.u8(net.allmulti);
    w.u32(Endian::Big, net.mac_table_in_use);
    match &net.mac_table {
        MacTable::Entries(entries) => {
            if entries.len() as u64 != u64::from(net.mac_table_in_use) {
                return Err(bad(
                    w,
                    "net.mac_table",
                    "as many entries as mac_table_in_use says",
                    entries.len() as u64,
                ));
            }
            for mac in entries {
                w.bytes(&mac.0);
            }
        }
        MacTable::Discarded(bytes) => {
            if bytes.0.len() as u64 != u64::from(net.mac_table_in_use).saturating_mul(6) {
                return Err(bad(
                    w,
                    "net.mac_table",
                    "mac_table_in_use × 6 discarded bytes",
                    bytes.0.len() as u64,
                ));
            }
            w.bytes(&bytes.0);
        }
    }
    if net.vlans.0.len() != VLAN_BYTES {
        return Err(bad(
            w,
            "net.vlans",
            "512 bytes of VLAN bitmap",
            net.vlans.0.len() as u64,
        ));
    }
    w.bytes(&net.vlans.0);
    w.u32(Endian::Big, net.has_vnet_hdr);
    for byte in [
        net.multi_overflow,
        net.uni_overflow,
        net.alluni,
        net.nomulti,
        net.nouni,
        net.nobcast,
        net.has_ufo,
    ] {
        w.u8(byte);
    }
    if let Some(pairs) = &net.queue_pairs {
        w.u16(Endian::Big, pairs.max);
        w.u16(Endian::Big, pairs.curr);
        if pairs.tx_waiting.len() != usize::from(pairs.curr.saturating_sub(1)) {
            return Err(bad(
                w,
                "net.queue_pairs.tx_waiting",
                "curr - 1 tx_waiting words",
                pairs.tx_waiting.len() as u64,
            ));
        }
        for t in &pairs.tx_waiting {
            w.u32(Endian::Big, *t);
        }
    }
    if let Some(offloads) = net.curr_guest_offloads {
        w.u64(Endian::Big, offloads);
    }
    for sub in &net.subsections {
        let NetSubsection::Rss(rss) = sub;
        subsection::write_subsection_header(w, RSS, rss.version)?;
        w.u8(rss.enabled);
        w.u8(rss.redirect);
        w.u8(rss.populate_hash);
        w.u32(Endian::Big, rss.hash_types);
        if let Some(supported) = rss.supported_hash_types {
            w.u32(Endian::Big, supported);
        }
        let len = u16::try_from(rss.indirections_table.len()).map_err(|_| {
            Error::new(
                ErrorKind::ValueTooWide {
                    value: rss.indirections_table.len() as u64,
                    bits: 16,
                },
                w.offset(),
                "rss.indirections_len",
            )
        })?;
        w.u16(Endian::Big, len);
        w.u16(Endian::Big, rss.default_queue);
        if rss.key.0.len() != RSS_KEY_BYTES {
            return Err(bad(w, "rss.key", "a 40-byte key", rss.key.0.len() as u64));
        }
        w.bytes(&rss.key.0);
        for entry in &rss.indirections_table {
            w.u16(Endian::Big, *entry);
        }
    }
    Ok(())
}

/// Says how each fact the VMState does not state was settled.
pub fn inferences(
    net: &NetState,
    guest_features_low: u32,
    config_pairs: Option<u16>,
    assume: &Assumptions,
    other_readings: usize,
) -> Vec<Inference> {
    let pairs_how = match (assume.num_queues, config_pairs) {
        (Some(n), _) => format!("assumed: {n} queue pair(s)"),
        (None, Some(p)) => format!(
            "the config space says max_virtqueue_pairs = {p}; the field parses to its end under \
             this reading ({other_readings} other reading(s) parsed)"
        ),
        (None, None) => format!(
            "the only reading under which the field parses to its end ({other_readings} other \
             reading(s) parsed; the config space is too short to hold max_virtqueue_pairs)"
        ),
    };
    let mut out = vec![
        Inference::new(
            "virtio.net.queue_pairs",
            match &net.queue_pairs {
                Some(p) => format!(
                    "queue-pair fields present: {} of {} pair(s) in use",
                    p.curr, p.max
                ),
                None => "no queue-pair fields (max_queue_pairs = 1)".to_owned(),
            },
            pairs_how,
        ),
        Inference::new(
            "virtio.net.curr_guest_offloads",
            if net.curr_guest_offloads.is_some() {
                "present (VIRTIO_NET_F_CTRL_GUEST_OFFLOADS negotiated)"
            } else {
                "absent (VIRTIO_NET_F_CTRL_GUEST_OFFLOADS not negotiated)"
            },
            format!(
                "bit 2 of the guest feature word {guest_features_low:#x} read earlier in the \
                 field, which QEMU's loader tests at this point"
            ),
        ),
    ];
    if let MacTable::Discarded(_) = net.mac_table {
        out.push(Inference::new(
            "virtio.net.mac_table",
            format!(
                "in_use = {} is over {MAC_TABLE_ENTRIES}: the table is not loaded",
                net.mac_table_in_use
            ),
            "QEMU skips in_use × 6 bytes and sets both overflow flags; kept as raw bytes",
        ));
    }
    out
}
