//! Property tests: any valid element survives every layout, and a trip through the stable
//! format and back loses nothing a legacy host needs.

mod support;

use proptest::prelude::*;
use vmstate::element::{self, Element, Layout, Segment, VIRTQUEUE_MAX_SIZE};
use vmstate::wire::{Reader, Writer};

/// Segments whose lengths fit a 32-bit `size_t` and whose ranges do not wrap.
fn segment() -> impl Strategy<Value = Segment> {
    (any::<u64>(), any::<u32>()).prop_map(|(addr, len)| Segment {
        addr: addr.min(u64::MAX - u64::from(len)),
        len: u64::from(len),
    })
}

fn element_strategy() -> impl Strategy<Value = Element> {
    (0usize..=VIRTQUEUE_MAX_SIZE)
        .prop_flat_map(|total| {
            (
                any::<u32>(),
                prop::collection::vec(segment(), total),
                0..=total,
            )
        })
        .prop_map(|(index, mut segments, split)| {
            let device_writable = segments.split_off(split);
            Element {
                index,
                device_readable: segments,
                device_writable,
            }
        })
}

fn encode(element: &Element, layout: Layout) -> Vec<u8> {
    let mut w = Writer::new();
    element::encode(element, layout, &mut w).unwrap();
    w.into_bytes()
}

fn decode(blob: &[u8], layout: Layout) -> Element {
    let mut r = Reader::new(blob);
    let decoded = element::decode(&mut r, layout).unwrap();
    assert!(r.is_empty());
    assert!(decoded.notes.is_empty());
    decoded.element
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(support::cases(64, 1024)))]

    #[test]
    fn any_valid_element_round_trips_through_every_layout(element in element_strategy()) {
        for layout in Layout::ALL {
            let blob = encode(&element, layout);
            prop_assert_eq!(blob.len(), layout.size());
            prop_assert_eq!(&decode(&blob, layout), &element);
        }
    }

    #[test]
    fn legacy_to_stable_to_legacy_is_the_identity(element in element_strategy()) {
        for layout in Layout::ALL {
            let legacy = encode(&element, layout);
            let stable = encode(&decode(&legacy, layout), Layout::Stable);
            let back = encode(&decode(&stable, Layout::Stable), layout);
            prop_assert!(back == legacy, "{}", layout);
        }
    }
}
