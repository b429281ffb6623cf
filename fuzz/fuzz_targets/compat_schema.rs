//! `-dump-vmstate` files: any bytes read as a schema, and a schema that reads compared with a
//! real one both ways and with a release alone, rendered as a tree and written back as JSON.
//!
//! Invariant: nothing panics, hangs or allocates without bound; a schema that reads writes
//! JSON that reads again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstate::compat;
use vmstate::schema::{render_tree, Schema};

const REAL: &str = r#"{"virtio-blk-device": {"Name": "virtio-blk-device", "version_id": 2,
  "minimum_version_id": 2, "Description": {"name": "virtio-blk", "version_id": 2,
  "minimum_version_id": 2, "Fields": [{"field": "virtio", "version_id": 0,
  "field_exists": false, "size": 0}]}}, "vmschkmachine": {"Name": "pc-q35-7.2"}}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(schema) = Schema::from_dump(data) else {
        return;
    };
    let _ = render_tree(&schema);
    let text = schema.to_dump_json().to_string();
    if Schema::from_dump(text.as_bytes()).is_err() {
        panic!("a schema that read wrote JSON that does not read");
    }
    if let Ok(real) = Schema::from_dump(REAL.as_bytes()) {
        let release = compat::guess_release(&schema).release;
        let _ = compat::compare_schemas(&schema, &real, (release, None));
        let _ = compat::compare_schemas(&real, &schema, (None, release));
        let _ = compat::compare_with_release(&schema, (release, compat::Release::new(7, 2)));
    }
});
