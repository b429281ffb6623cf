//! The virtio-ccw transport's parts of the blob (s390x).
//!
//! Before the common fields, virtio-ccw saves the `s390_virtio_ccw_dev` VMState: the
//! channel subsystem's view of the device (its subchannel: path management and status
//! words, sense data, the last channel command), the guest's indicator addresses, the
//! configuration-change vector, the adapter routes, the interruption subclass and the virtio
//! revision the driver chose. After each queue it saves that queue's vector. It has no extra
//! state and a fixed ring alignment. The structs are QEMU's (`hw/s390x/css.c`,
//! `hw/s390x/virtio-ccw.c`, `hw/intc/s390_flic.c`), stated here once as known descriptions.

use serde::Serialize;

use super::Inference;
use crate::error::{Error, ErrorKind, Result};
use crate::stream::{StructValue, Value};
use crate::vmsd::{self, field, Kind, Vmsd};
use crate::wire::{Reader, Writer};

/// Command information words in a subchannel's sense-ID data (`MAX_CIWS`).
const MAX_CIWS: u32 = 62;

static PMCW: Vmsd = Vmsd {
    name: "s390_pmcw",
    fields: &[
        field("intparm", Kind::Uint(4)),
        field("flags", Kind::Uint(2)),
        field("devno", Kind::Uint(2)),
        field("lpm", Kind::Uint(1)),
        field("pnom", Kind::Uint(1)),
        field("lpum", Kind::Uint(1)),
        field("pim", Kind::Uint(1)),
        field("mbi", Kind::Uint(2)),
        field("pom", Kind::Uint(1)),
        field("pam", Kind::Uint(1)),
        field("chpid", Kind::Bytes(8)),
        field("chars", Kind::Uint(4)),
    ],
    subsections: &[],
};

static SCSW: Vmsd = Vmsd {
    name: "s390_scsw",
    fields: &[
        field("flags", Kind::Uint(2)),
        field("ctrl", Kind::Uint(2)),
        field("cpa", Kind::Uint(4)),
        field("dstat", Kind::Uint(1)),
        field("cstat", Kind::Uint(1)),
        field("count", Kind::Uint(2)),
    ],
    subsections: &[],
};

static SCHIB: Vmsd = Vmsd {
    name: "s390_schib",
    fields: &[
        field("pmcw", Kind::Struct(&PMCW)),
        field("scsw", Kind::Struct(&SCSW)),
        field("mba", Kind::Uint(8)),
        field("mda", Kind::Bytes(4)),
    ],
    subsections: &[],
};

static CCW1: Vmsd = Vmsd {
    name: "s390_ccw1",
    fields: &[
        field("cmd_code", Kind::Uint(1)),
        field("flags", Kind::Uint(1)),
        field("count", Kind::Uint(2)),
        field("cda", Kind::Uint(4)),
    ],
    subsections: &[],
};

static CIW: Vmsd = Vmsd {
    name: "s390_ciw",
    fields: &[
        field("type", Kind::Uint(1)),
        field("command", Kind::Uint(1)),
        field("count", Kind::Uint(2)),
    ],
    subsections: &[],
};

static SENSE_ID: Vmsd = Vmsd {
    name: "s390_sense_id",
    fields: &[
        field("reserved", Kind::Uint(1)),
        field("cu_type", Kind::Uint(2)),
        field("cu_model", Kind::Uint(1)),
        field("dev_type", Kind::Uint(2)),
        field("dev_model", Kind::Uint(1)),
        field("unused", Kind::Uint(1)),
        field("ciw", Kind::StructArray(MAX_CIWS, &CIW)),
    ],
    subsections: &[],
};

static ORB: Vmsd = Vmsd {
    name: "s390_orb",
    fields: &[
        field("intparm", Kind::Uint(4)),
        field("ctrl0", Kind::Uint(2)),
        field("lpm", Kind::Uint(1)),
        field("ctrl1", Kind::Uint(1)),
        field("cpa", Kind::Uint(4)),
    ],
    subsections: &[],
};

static SUBCH_DEV_ORB: Vmsd = Vmsd {
    name: "s390_subch_dev/orb",
    fields: &[field("orb", Kind::Struct(&ORB))],
    subsections: &[],
};

static SUBCH_DEV: Vmsd = Vmsd {
    name: "s390_subch_dev",
    fields: &[
        field("cssid", Kind::Uint(1)),
        field("ssid", Kind::Uint(1)),
        field("migrated_schid", Kind::Uint(2)),
        field("devno", Kind::Uint(2)),
        field("thinint_active", Kind::Bool),
        field("curr_status", Kind::Struct(&SCHIB)),
        field("sense_data", Kind::Bytes(32)),
        field("channel_prog", Kind::Uint(8)),
        field("last_cmd", Kind::Struct(&CCW1)),
        field("last_cmd_valid", Kind::Bool),
        field("id", Kind::Struct(&SENSE_ID)),
        field("ccw_fmt_1", Kind::Bool),
        field("ccw_no_data_cnt", Kind::Uint(1)),
    ],
    subsections: &[&SUBCH_DEV_ORB],
};

static CCW_DEV: Vmsd = Vmsd {
    name: "s390_ccw_dev",
    fields: &[field("sch", Kind::Struct(&SUBCH_DEV))],
    subsections: &[],
};

static IND_ADDR_TMP: Vmsd = Vmsd {
    name: "s390_ind_addr_tmp",
    fields: &[field("len", Kind::Int(4)), field("addr", Kind::Uint(8))],
    subsections: &[],
};

/// `VMSTATE_PTR_TO_IND_ADDR`: a struct around a temporary struct, both of one name.
static IND_ADDR: Vmsd = Vmsd {
    name: "s390_ind_addr_tmp",
    fields: &[field("tmp", Kind::Struct(&IND_ADDR_TMP))],
    subsections: &[],
};

static CCW_DEV_TMP: Vmsd = Vmsd {
    name: "s390_virtio_ccw_dev_tmp",
    fields: &[field("config_vector", Kind::Uint(2))],
    subsections: &[],
};

static ADAPTER_INFO_SUMMARY_OFFSET: Vmsd = Vmsd {
    name: "s390_adapter_info/summary_offset",
    fields: &[field("summary_offset", Kind::Uint(4))],
    subsections: &[],
};

static ADAPTER_INFO: Vmsd = Vmsd {
    name: "s390_adapter_info",
    fields: &[field("ind_offset", Kind::Uint(8))],
    subsections: &[&ADAPTER_INFO_SUMMARY_OFFSET],
};

static ADAPTER_ROUTES: Vmsd = Vmsd {
    name: "s390_adapter_routes",
    fields: &[field("adapter", Kind::Struct(&ADAPTER_INFO))],
    subsections: &[],
};

/// The VMState virtio-ccw saves as its `save_config`.
pub static VIRTIO_CCW_DEV: Vmsd = Vmsd {
    name: "s390_virtio_ccw_dev",
    fields: &[
        field("parent_obj", Kind::Struct(&CCW_DEV)),
        field("indicators", Kind::Struct(&IND_ADDR)),
        field("indicators2", Kind::Struct(&IND_ADDR)),
        field("summary_indicator", Kind::Struct(&IND_ADDR)),
        field("tmp", Kind::Struct(&CCW_DEV_TMP)),
        field("routes", Kind::Struct(&ADAPTER_ROUTES)),
        field("thinint_isc", Kind::Uint(1)),
        field("revision", Kind::Int(4)),
    ],
    subsections: &[],
};

/// The transport state virtio-ccw saves before the virtio core's fields: the whole
/// `s390_virtio_ccw_dev` state, with typed views of the fields that matter to a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcwTransport {
    /// The `s390_virtio_ccw_dev` state, field by field.
    pub state: StructValue,
}

/// Where the typed views read from.
const SCH: [&str; 2] = ["parent_obj", "sch"];
const REVISION: &[&str] = &["revision"];
const CONFIG_VECTOR: &[&str] = &["tmp", "config_vector"];
const INDICATORS: [&[&str]; 3] = [
    &["indicators", "tmp", "addr"],
    &["indicators2", "tmp", "addr"],
    &["summary_indicator", "tmp", "addr"],
];

impl CcwTransport {
    /// Reads the transport part, recording in `inferred` what it shows.
    pub fn decode(r: &mut Reader<'_>, inferred: &mut Vec<Inference>) -> Result<Self> {
        let start = r.offset();
        let state = VIRTIO_CCW_DEV.decode(r).map_err(|e| e.within("ccw"))?;
        let transport = CcwTransport { state };
        let revision = transport.revision().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidValue {
                    value: 0,
                    expected: "a decoded s390_virtio_ccw_dev revision",
                },
                start,
                "ccw.revision",
            )
        })?;
        inferred.push(Inference::new(
            "transport.revision",
            match revision {
                r if r < 0 => "no virtio revision negotiated yet".to_owned(),
                0 => "legacy virtio (revision 0): rings in the guest's byte order".to_owned(),
                r => format!("VIRTIO 1 (revision {r}): little-endian rings"),
            },
            "the saved revision of the virtio-ccw device",
        ));
        Ok(transport)
    }

    /// The virtio revision the driver chose (-1: none yet, 0: legacy, 1 and up: VIRTIO 1).
    pub fn revision(&self) -> Option<i64> {
        number(&self.state, REVISION)
    }

    /// The device's bus id as the guest sees it (`cssid.ssid.devno`, hexadecimal).
    pub fn bus_id(&self) -> Option<String> {
        let part = |name: &str| number(&self.state, &[SCH[0], SCH[1], name]);
        Some(format!(
            "{:x}.{:x}.{:04x}",
            part("cssid")?,
            part("ssid")?,
            part("devno")?
        ))
    }

    /// The vector for configuration changes.
    pub fn config_vector(&self) -> Option<i64> {
        number(&self.state, CONFIG_VECTOR)
    }

    /// Guest addresses of the classic, second and summary indicators (0: none).
    pub fn indicators(&self) -> [Option<i64>; 3] {
        INDICATORS.map(|path| number(&self.state, path))
    }

    /// True when the driver chose VIRTIO 1 (revision 1 or later): rings are little-endian.
    pub fn is_virtio_1(&self) -> bool {
        self.revision().is_some_and(|r| r >= 1)
    }

    /// Sets a typed field by its name in `dump --json` (`revision`, `config_vector`).
    pub fn set(&mut self, name: &str, value: u64) -> Option<()> {
        let path = match name {
            "revision" => REVISION,
            "config_vector" => CONFIG_VECTOR,
            _ => return None,
        };
        match lookup_mut(&mut self.state, path)? {
            Value::Unsigned(v) => *v = value,
            Value::Signed(v) => *v = i64::from_ne_bytes(value.to_ne_bytes()),
            _ => return None,
        }
        Some(())
    }

    /// Writes the transport part back.
    pub fn encode(&self, w: &mut Writer) -> Result<()> {
        vmsd::encode(w, &self.state)
    }
}

impl Serialize for CcwTransport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("CcwTransport", 5)?;
        st.serialize_field("bus_id", &self.bus_id())?;
        st.serialize_field("revision", &self.revision())?;
        st.serialize_field("config_vector", &self.config_vector())?;
        st.serialize_field("indicators", &self.indicators())?;
        st.serialize_field("state", &self.state)?;
        st.end()
    }
}

/// The integer at `path` (field names through nested structs).
fn number(state: &StructValue, path: &[&str]) -> Option<i64> {
    match lookup(state, path)? {
        Value::Unsigned(v) => i64::try_from(*v).ok(),
        Value::Signed(v) => Some(*v),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn lookup<'a>(state: &'a StructValue, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let value = &state.field(first)?.value;
    match (rest.is_empty(), value) {
        (true, v) => Some(v),
        (false, Value::Struct(inner)) => lookup(inner, rest),
        _ => None,
    }
}

fn lookup_mut<'a>(state: &'a mut StructValue, path: &[&str]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    let value = &mut state.fields.iter_mut().find(|f| f.name == *first)?.value;
    match (rest.is_empty(), value) {
        (true, v) => Some(v),
        (false, Value::Struct(inner)) => lookup_mut(inner, rest),
        _ => None,
    }
}
