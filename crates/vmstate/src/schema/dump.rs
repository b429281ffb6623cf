//! QEMU's `-dump-vmstate` JSON: read into a [`Schema`] and written back in the same shape.
//!
//! The file is one object: a key per QOM device class that has a VMState (`Name`,
//! `version_id`, `minimum_version_id`, `Description`), and `vmschkmachine` with the machine
//! type. A `Description` has `name`, `version_id`, `minimum_version_id`, `Fields` and
//! optionally `Subsections`; a field has `field`, `version_id`, `field_exists`, `size`,
//! optionally `num` and a nested `Description`.
//!
//! `num` is the length of a fixed array. QEMU 7.2 writes it for no field: in a file without
//! any `num`, every field's count is [`Count::Unknown`]; in one with some, a field without
//! it is one element.

use serde_json::{json, Map, Value as Json};

use super::virtio::VIRTIO_TYPE;
use super::{Count, Description, Field, Origin, Schema, SectionSchema};
use crate::error::{Error, ErrorKind, Result};

/// The key QEMU writes the machine type under.
const MACHINE_KEY: &str = "vmschkmachine";

type Parsed<T> = std::result::Result<T, String>;

impl Schema {
    /// Reads a `-dump-vmstate` file. Errors name the class and field that is malformed.
    pub fn from_dump(json: &[u8]) -> Result<Schema> {
        let bad = |reason: String| Error::new(ErrorKind::BadSchema { reason }, 0, "vmstate dump");
        let root: Json = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let object = root
            .as_object()
            .ok_or_else(|| bad("not a JSON object of device classes".to_owned()))?;
        let without_num = if gives_counts(&root) {
            Count::One
        } else {
            Count::Unknown
        };
        let mut machine = None;
        let mut sections = Vec::with_capacity(object.len());
        for (class, value) in object {
            if class == MACHINE_KEY {
                machine = Some(
                    value
                        .get("Name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| bad(format!("{MACHINE_KEY} has no \"Name\"")))?
                        .to_owned(),
                );
                continue;
            }
            sections.push(
                class_schema(class, value, without_num)
                    .map_err(|e| bad(format!("{class}: {e}")))?,
            );
        }
        if sections.is_empty() {
            return Err(bad("no device class is described".to_owned()));
        }
        Ok(Schema {
            origin: Origin::Dump,
            machine,
            sections,
        })
    }

    /// The schema as `-dump-vmstate` writes it. A stream's sections are keyed by their idstr
    /// (with ` instance N` when N is not 0); versions a stream does not state are left out.
    pub fn to_dump_json(&self) -> Json {
        let mut root = Map::new();
        for section in &self.sections {
            let key = match section.instance_id {
                Some(id) if id != 0 => format!("{} instance {id}", section.name),
                _ => section.name.clone(),
            };
            let mut class = Map::new();
            class.insert("Name".to_owned(), json!(section.name));
            class.insert("version_id".to_owned(), json!(section.version_id));
            if let Some(min) = section.minimum_version_id {
                class.insert("minimum_version_id".to_owned(), json!(min));
            }
            if let Some(desc) = &section.description {
                class.insert("Description".to_owned(), description_json(desc));
            }
            root.insert(key, Json::Object(class));
        }
        if let Some(machine) = &self.machine {
            root.insert(MACHINE_KEY.to_owned(), json!({ "Name": machine }));
        }
        Json::Object(root)
    }
}

/// Whether any field QEMU describes has a `num`: then the file gives element counts. The
/// layout inside a `virtio` field is this crate's (written back by [`Schema::to_dump_json`]),
/// not QEMU's.
fn gives_counts(value: &Json) -> bool {
    match value {
        Json::Object(map) => {
            let virtio = map.get("field").and_then(Json::as_str) == Some(VIRTIO_TYPE);
            map.contains_key("num")
                || map
                    .iter()
                    .any(|(key, v)| !(virtio && key == "Description") && gives_counts(v))
        }
        Json::Array(items) => items.iter().any(gives_counts),
        _ => false,
    }
}

fn class_schema(class: &str, value: &Json, without_num: Count) -> Parsed<SectionSchema> {
    Ok(SectionSchema {
        name: class.to_owned(),
        instance_id: None,
        version_id: number(value, "version_id")?,
        minimum_version_id: Some(number(value, "minimum_version_id")?),
        offset: None,
        description: value
            .get("Description")
            .map(|d| {
                description(d, without_num).map(|mut d| {
                    super::virtio::expand_generic(&mut d);
                    d
                })
            })
            .transpose()?,
    })
}

fn number(value: &Json, key: &str) -> Parsed<u32> {
    value
        .get(key)
        .and_then(Json::as_i64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("no 32-bit \"{key}\""))
}

/// A `Description`; `without_num` is the count of a field that has no `num`.
fn description(value: &Json, without_num: Count) -> Parsed<Description> {
    let name = value
        .get("name")
        .and_then(Json::as_str)
        .ok_or("a Description has no \"name\"")?
        .to_owned();
    let within = |e: String| format!("{name}: {e}");
    let list = |key: &str| value.get(key).and_then(Json::as_array).map(Vec::as_slice);
    let fields = list("Fields")
        .unwrap_or_default()
        .iter()
        .map(|f| field(f, without_num))
        .collect::<Parsed<Vec<_>>>()
        .map_err(within)?;
    let subsections = list("Subsections")
        .unwrap_or_default()
        .iter()
        .map(|d| description(d, without_num))
        .collect::<Parsed<Vec<_>>>()
        .map_err(within)?;
    // Versions are absent where this crate wrote a layout QEMU does not describe.
    let optional = |key: &str| match value.get(key) {
        None => Ok(None),
        Some(_) => number(value, key).map(Some).map_err(within),
    };
    Ok(Description {
        version_id: optional("version_id")?,
        minimum_version_id: optional("minimum_version_id")?,
        name,
        fields,
        subsections,
        offset: None,
    })
}

fn field(value: &Json, without_num: Count) -> Parsed<Field> {
    let name = value
        .get("field")
        .and_then(Json::as_str)
        .ok_or("a field has no \"field\" name")?
        .to_owned();
    let within = |e: String| format!("field {name}: {e}");
    let size = value
        .get("size")
        .and_then(Json::as_u64)
        .ok_or_else(|| within("no \"size\"".to_owned()))?;
    let count = match value.get("num") {
        None => without_num,
        Some(n) => Count::Array(
            n.as_u64()
                .ok_or_else(|| within("\"num\" is not a count".to_owned()))?,
        ),
    };
    let nested = value
        .get("Description")
        .map(|d| description(d, without_num))
        .transpose()
        .map_err(within)?;
    Ok(Field {
        version_id: number(value, "version_id").map_err(within)?,
        field_exists: value
            .get("field_exists")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        size,
        count,
        type_name: None,
        description: nested.map(Box::new),
        offset: None,
        name,
    })
}

fn description_json(desc: &Description) -> Json {
    let mut out = Map::new();
    out.insert("name".to_owned(), json!(desc.name));
    if let Some(v) = desc.version_id {
        out.insert("version_id".to_owned(), json!(v));
    }
    if let Some(v) = desc.minimum_version_id {
        out.insert("minimum_version_id".to_owned(), json!(v));
    }
    out.insert(
        "Fields".to_owned(),
        Json::Array(desc.fields.iter().map(field_json).collect()),
    );
    if !desc.subsections.is_empty() {
        out.insert(
            "Subsections".to_owned(),
            Json::Array(desc.subsections.iter().map(description_json).collect()),
        );
    }
    Json::Object(out)
}

fn field_json(field: &Field) -> Json {
    let mut out = Map::new();
    out.insert("field".to_owned(), json!(field.name));
    out.insert("version_id".to_owned(), json!(field.version_id));
    out.insert("field_exists".to_owned(), json!(field.field_exists));
    out.insert("size".to_owned(), json!(field.size));
    if let Some(num) = field.count.num() {
        out.insert("num".to_owned(), json!(num));
    }
    if let Some(nested) = &field.description {
        out.insert("Description".to_owned(), description_json(nested));
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::render_tree;

    const DUMP: &str = r#"{
      "virtio-blk-device": {"Name": "virtio-blk-device", "version_id": 2, "minimum_version_id": 2,
        "Description": {"name": "virtio-blk", "version_id": 2, "minimum_version_id": 2,
          "Fields": [{"field": "virtio", "version_id": 0, "field_exists": false, "size": 0}]}},
      "e1000": {"Name": "e1000", "version_id": 2, "minimum_version_id": 1,
        "Description": {"name": "e1000", "version_id": 2, "minimum_version_id": 1,
          "Fields": [{"field": "mac_reg", "version_id": 0, "field_exists": false, "size": 4, "num": 8},
                     {"field": "parent_obj", "version_id": 0, "field_exists": false, "size": 2560,
                      "Description": {"name": "PCIDevice", "version_id": 2, "minimum_version_id": 1,
                        "Fields": []}}],
          "Subsections": [{"name": "e1000/mit_state", "version_id": 1, "minimum_version_id": 1,
                           "Fields": [{"field": "mit_ide", "version_id": 0, "field_exists": true, "size": 1}]}]}},
      "vmschkmachine": {"Name": "pc-q35-7.2"}
    }"#;

    #[test]
    fn a_dump_reads_into_the_model_and_writes_back_the_same_json() {
        let schema = Schema::from_dump(DUMP.as_bytes()).unwrap();
        assert_eq!(schema.machine.as_deref(), Some("pc-q35-7.2"));
        let e1000 = schema.section("e1000").unwrap();
        assert_eq!((e1000.version_id, e1000.minimum_version_id), (2, Some(1)));
        let desc = e1000.description.as_ref().unwrap();
        assert_eq!(desc.fields[0].count, Count::Array(8));
        assert_eq!(desc.fields[1].count, Count::One);
        assert!(desc.subsections[0].fields[0].field_exists);
        // The opaque virtio field holds the layout the decoders read; all else is as read.
        let blk = schema.section("virtio-blk-device").unwrap();
        let virtio = &blk.description.as_ref().unwrap().fields[0];
        assert_eq!(virtio.description.as_ref().unwrap().name, "virtio");
        let mut back = schema.to_dump_json();
        let layout = back["virtio-blk-device"]["Description"]["Fields"][0]
            .as_object_mut()
            .unwrap()
            .remove("Description");
        assert!(layout.is_some());
        let original: Json = serde_json::from_str(DUMP).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn malformed_dumps_are_errors_naming_the_class() {
        let e = Schema::from_dump(br#"{"x": {"Name": "x"}}"#).unwrap_err();
        assert!(e.to_string().contains("x: no 32-bit \"version_id\""), "{e}");
        assert!(Schema::from_dump(b"[1]").is_err());
        assert!(Schema::from_dump(b"{}").is_err());
    }

    #[test]
    fn a_dump_without_any_num_gives_no_counts_and_keeps_giving_none_when_written_back() {
        // QEMU 7.2 writes no `num`: the 8 registers of mac_reg read as an unknown count.
        let old = DUMP.replace(", \"num\": 8", "");
        let schema = Schema::from_dump(old.as_bytes()).unwrap();
        let e1000 = schema.section("e1000").and_then(|s| s.description.as_ref());
        let mac_reg = &e1000.unwrap().fields[0];
        assert_eq!((mac_reg.count, mac_reg.bytes()), (Count::Unknown, None));
        assert!(!schema.counts_known());
        assert!(render_tree(&schema).contains("mac_reg[?]"));
        // The virtio layout written back has counts of its own; they are not QEMU's.
        let text = schema.to_dump_json().to_string();
        assert!(text.contains("\"num\""));
        let again = Schema::from_dump(text.as_bytes()).unwrap();
        assert!(!again.counts_known());
        assert!(Schema::from_dump(DUMP.as_bytes()).unwrap().counts_known());
    }

    #[test]
    fn what_to_dump_json_writes_reads_again() {
        let schema = Schema::from_dump(DUMP.as_bytes()).unwrap();
        let text = schema.to_dump_json().to_string();
        let again = Schema::from_dump(text.as_bytes()).unwrap();
        assert_eq!(again.to_dump_json(), schema.to_dump_json());
    }
}
