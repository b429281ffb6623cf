//! Golden tests: fixtures written from the offset table (tests/fixtures/elements/
//! make-fixtures.py, independent of the encoder) decode to the expected element in every
//! layout, and the encoder reproduces them byte for byte.

mod support;

use vmstate::element::{self, Element, Layout, LayoutChoice};
use vmstate::wire::{Reader, Writer};

fn expected() -> Element {
    let text = std::fs::read_to_string(support::fixture("elements/element.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(support::fixture(&format!("elements/{name}"))).unwrap()
}

fn encode(element: &Element, layout: Layout) -> Vec<u8> {
    let mut w = Writer::new();
    element::encode(element, layout, &mut w).unwrap();
    w.into_bytes()
}

#[test]
fn every_layout_fixture_decodes_to_the_expected_element() {
    for layout in Layout::ALL {
        let blob = fixture(&format!("element-{}.bin", layout.name()));
        assert_eq!(blob.len(), layout.size(), "{layout}");
        let mut reader = Reader::new(&blob);
        let decoded = element::decode(&mut reader, layout).unwrap();
        assert!(reader.is_empty());
        assert_eq!(decoded.element, expected(), "{layout}");
        assert!(decoded.notes.is_empty(), "{layout}: {:?}", decoded.notes);
    }
}

#[test]
fn every_layout_fixture_is_detected() {
    for layout in Layout::ALL {
        let blob = fixture(&format!("element-{}.bin", layout.name()));
        assert_eq!(
            element::choose_layout(&blob, LayoutChoice::Auto).unwrap(),
            layout
        );
    }
}

#[test]
fn the_encoder_reproduces_every_fixture_byte_for_byte() {
    for layout in Layout::ALL {
        let blob = fixture(&format!("element-{}.bin", layout.name()));
        assert!(encode(&expected(), layout) == blob, "{layout}");
    }
}

#[test]
fn legacy_leftovers_are_notes_and_the_stable_encoder_clears_them() {
    for (name, layout, notes) in [
        // padding, in_addr and out_addr stale slots, in_sg/out_sg pointers and stale slots
        ("element-stable-dirty.bin", Layout::Stable, 7),
        // i386 has no padding
        ("element-i386-dirty.bin", Layout::I386, 6),
    ] {
        let blob = fixture(name);
        let decoded = element::decode(&mut Reader::new(&blob), layout).unwrap();
        assert_eq!(decoded.element, expected(), "{name}");
        assert_eq!(decoded.notes.len(), notes, "{name}: {:#?}", decoded.notes);
        assert!(decoded.notes.iter().any(|n| n.path == "in_sg.iov_base"));
        assert!(encode(&decoded.element, Layout::Stable) == fixture("element-stable.bin"));
    }
}

/// A real element, cut out of a stream that QEMU 7.2 wrote on x86-64 (the first in-flight
/// virtio-blk request of the corpus stream `qemu7.2-blk-inflight-split`), against the ground
/// truth QEMU reported for it (`x-query-virtio-queue-element`, queue 0, head 7).
#[test]
fn a_real_qemu_element_decodes_to_its_ground_truth() {
    let blob =
        std::fs::read(support::repo_root().join("examples/inflight-element-qemu7.2-x86_64.bin"))
            .unwrap();
    assert_eq!(
        element::choose_layout(&blob, LayoutChoice::Auto).unwrap(),
        Layout::Stable
    );
    let decoded = element::decode(&mut Reader::new(&blob), Layout::Stable).unwrap();
    let seg = |addr, len| element::Segment { addr, len };
    assert_eq!(
        decoded.element,
        Element {
            index: 7,
            device_readable: vec![
                seg(0x232cd00, 16),
                seg(0x1c42000, 122_880),
                seg(0x7ee0000, 131_072),
                seg(0x1620000, 8192)
            ],
            device_writable: vec![seg(0x232cd10, 1)],
        }
    );
    assert!(decoded.notes.is_empty());
    // QEMU on x86-64 already writes the stable format: re-encoding changes nothing.
    assert!(encode(&decoded.element, Layout::Stable) == blob);
}
