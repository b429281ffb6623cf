//! VMState descriptions as data: what a QEMU build can load, or what a stream carries.
//!
//! A [`Schema`] is read from QEMU's `-dump-vmstate` JSON ([`Schema::from_dump`]: every device
//! class the build has, with the versions it loads and every field it may read) or from a
//! stream ([`Schema::from_stream`]: exactly the sections, versions, fields and subsections the
//! stream carries). Both use one model, [`Description`], and both can be written in
//! `-dump-vmstate`'s shape ([`Schema::to_dump_json`]).
//!
//! QEMU shows a virtio device's whole state as one field of type `virtio`; here that field
//! holds the layout this crate's decoders read (core registers, the transport, each queue,
//! the device's own state, its in-flight requests in the stable element format, the core
//! subsections): exactly what a stream's device carries, and for a `-dump-vmstate` file
//! the layout any virtio device may have ([`virtio`]).

mod dump;
mod from_stream;
mod tree;
pub mod virtio;

pub use tree::render_tree;

/// Where a schema was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A `-dump-vmstate` file: what a QEMU build can load.
    Dump,
    /// A stream: what it carries.
    Stream,
}

/// A set of section descriptions and the machine they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Where it was read from.
    pub origin: Origin,
    /// The machine type (`vmschkmachine`, or the stream's configuration section).
    pub machine: Option<String>,
    /// The sections: device classes of a dump, sections of a stream in stream order.
    pub sections: Vec<SectionSchema>,
}

/// One section: a device class of a dump, or one section a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionSchema {
    /// A dump's QOM class name, or a stream section's idstr.
    pub name: String,
    /// A stream section's instance id.
    pub instance_id: Option<u32>,
    /// The version: the highest a dump's class loads, or the one a stream section was
    /// written with.
    pub version_id: u32,
    /// The lowest version a dump's class loads (a stream does not say).
    pub minimum_version_id: Option<u32>,
    /// Offset of a stream section's first byte.
    pub offset: Option<u64>,
    /// The fields, when the section is a VMState struct that is described.
    pub description: Option<Description>,
}

/// One VMState struct: a section's state, a nested struct or a subsection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description {
    /// The VMState name (`virtio-blk`, `virtio/extra_state`, ...).
    pub name: String,
    /// Its version: a dump's `version_id`, or the version a stream's subsection carries.
    pub version_id: Option<u32>,
    /// A dump's `minimum_version_id`.
    pub minimum_version_id: Option<u32>,
    /// The fields in order.
    pub fields: Vec<Field>,
    /// Subsections: every one a dump's struct may have, or the ones a stream sent.
    pub subsections: Vec<Description>,
    /// Offset of the struct (or of a subsection's 0x05 marker) in a stream.
    pub offset: Option<u64>,
}

/// One field of a [`Description`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// The version of its struct that introduced it (a dump's `version_id`; 0 in streams).
    pub version_id: u32,
    /// Whether a test decides if the field is sent (a dump's `field_exists`).
    pub field_exists: bool,
    /// Bytes of one element; 0 where the size varies (a dump's `virtio` and buffers sized
    /// by another field).
    pub size: u64,
    /// How many elements it has.
    pub count: Count,
    /// The VMStateInfo name (`uint32`, `struct`, `virtio`, ...), where known.
    pub type_name: Option<String>,
    /// A nested struct, or the layout a `virtio` field holds.
    pub description: Option<Box<Description>>,
    /// Offset of its first byte in a stream.
    pub offset: Option<u64>,
}

/// How many elements a [`Field`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Count {
    /// One: not an array. In a dump, also an array whose length another field holds, which
    /// `-dump-vmstate` shows as one element (as QEMU's static checker takes it).
    #[default]
    One,
    /// An array of this many elements (a dump's `num`).
    Array(u64),
    /// Not known: the dump gives no element counts at all (QEMU 7.2's `-dump-vmstate` writes
    /// no `num`), so the field may be an array of any length.
    Unknown,
}

impl Count {
    /// The count of a field that is an array of `num` elements, or not an array.
    pub fn of(num: Option<u64>) -> Count {
        num.map_or(Count::One, Count::Array)
    }

    /// The number of elements, when known.
    pub fn elements(self) -> Option<u64> {
        match self {
            Count::One => Some(1),
            Count::Array(n) => Some(n),
            Count::Unknown => None,
        }
    }

    /// The array length `-dump-vmstate` writes as `num`.
    pub fn num(self) -> Option<u64> {
        match self {
            Count::Array(n) => Some(n),
            Count::One | Count::Unknown => None,
        }
    }
}

impl Schema {
    /// The sections whose description is the VMState `vmsd_name`.
    pub fn sections_of<'a>(
        &'a self,
        vmsd_name: &'a str,
    ) -> impl Iterator<Item = &'a SectionSchema> + 'a {
        self.sections
            .iter()
            .filter(move |s| s.description.as_ref().is_some_and(|d| d.name == vmsd_name))
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&SectionSchema> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Whether every field's element count is known (not so in a dump of QEMU 7.2).
    pub fn counts_known(&self) -> bool {
        self.sections
            .iter()
            .filter_map(|s| s.description.as_ref())
            .all(Description::counts_known)
    }
}

impl SectionSchema {
    /// The VMState name the section's description has.
    pub fn vmsd_name(&self) -> Option<&str> {
        self.description.as_ref().map(|d| d.name.as_str())
    }
}

impl Description {
    /// The subsection called `name`.
    pub fn subsection(&self, name: &str) -> Option<&Description> {
        self.subsections.iter().find(|s| s.name == name)
    }

    fn counts_known(&self) -> bool {
        self.fields.iter().all(|f| {
            f.count != Count::Unknown && f.description.as_deref().map_or(true, Self::counts_known)
        }) && self.subsections.iter().all(Self::counts_known)
    }
}

impl Field {
    /// A scalar field of `size` bytes.
    pub fn scalar(name: &str, type_name: &str, size: u64) -> Field {
        Field {
            name: name.to_owned(),
            type_name: Some(type_name.to_owned()),
            size,
            ..Field::default()
        }
    }

    /// A field holding a nested struct (`num` of them, for an array).
    pub fn nested(name: &str, num: Option<u64>, description: Description) -> Field {
        Field {
            name: name.to_owned(),
            type_name: Some("struct".to_owned()),
            count: Count::of(num),
            description: Some(Box::new(description)),
            ..Field::default()
        }
    }

    /// Elements of the field, when known.
    pub fn elements(&self) -> Option<u64> {
        self.count.elements()
    }

    /// Bytes of the whole field (every element), when its count is known.
    pub fn bytes(&self) -> Option<u64> {
        self.elements().map(|n| self.size.saturating_mul(n))
    }
}
