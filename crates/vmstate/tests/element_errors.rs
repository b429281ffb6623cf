//! Invalid and truncated element blobs: each defect is its own typed error, naming the field
//! and the byte offset; nothing panics.

mod support;

use vmstate::element::{self, Element, Layout, LayoutChoice, Segment};
use vmstate::wire::{Reader, Writer};
use vmstate::ErrorKind;

fn valid(layout: Layout) -> Vec<u8> {
    let element = Element {
        index: 3,
        device_readable: vec![Segment {
            addr: 0x1000,
            len: 16,
        }],
        device_writable: vec![Segment {
            addr: 0x2000,
            len: 1,
        }],
    };
    let mut w = Writer::new();
    element::encode(&element, layout, &mut w).unwrap();
    w.into_bytes()
}

fn put_u32(blob: &mut [u8], layout: Layout, offset: usize, value: u32) {
    let bytes = match layout.geometry().endian {
        vmstate::wire::Endian::Little => value.to_le_bytes(),
        vmstate::wire::Endian::Big => value.to_be_bytes(),
    };
    blob[offset..offset + 4].copy_from_slice(&bytes);
}

fn put_word(blob: &mut [u8], layout: Layout, offset: usize, value: u64) {
    let g = layout.geometry();
    let bytes: Vec<u8> = match (g.endian, g.word_size) {
        (vmstate::wire::Endian::Little, 8) => value.to_le_bytes().to_vec(),
        (vmstate::wire::Endian::Big, 8) => value.to_be_bytes().to_vec(),
        (vmstate::wire::Endian::Little, _) => (value as u32).to_le_bytes().to_vec(),
        (vmstate::wire::Endian::Big, _) => (value as u32).to_be_bytes().to_vec(),
    };
    blob[offset..offset + bytes.len()].copy_from_slice(&bytes);
}

fn decode_err(blob: &[u8], layout: Layout) -> vmstate::Error {
    element::decode(&mut Reader::new(blob), layout).unwrap_err()
}

#[test]
fn every_truncation_is_an_error() {
    for layout in Layout::ALL {
        let blob = valid(layout);
        // Every prefix in the extended tier; every 7th (and the edges) by default.
        let step = if support::extended_tier() { 1 } else { 7 };
        let cuts = (0..blob.len()).step_by(step).chain([blob.len() - 1]);
        for cut in cuts {
            let err = decode_err(&blob[..cut], layout);
            assert!(
                matches!(err.kind(), ErrorKind::UnexpectedEof { .. }),
                "{layout} cut at {cut}: {err}"
            );
            assert!(err.offset() <= cut as u64, "{layout} cut at {cut}: {err}");
            assert!(!err.path().is_empty());
        }
    }
}

#[test]
fn truncation_inside_a_field_names_that_field() {
    let blob = valid(Layout::Stable);
    let err = decode_err(&blob[..10], Layout::Stable);
    assert_eq!((err.path(), err.offset()), ("in_num", 8));
    let err = decode_err(&blob[..20_000], Layout::Stable);
    assert_eq!((err.path(), err.offset()), ("in_sg", 16_400));
}

#[test]
fn in_num_over_1024_is_its_own_error() {
    for layout in Layout::ALL {
        let mut blob = valid(layout);
        put_u32(&mut blob, layout, 8, 1025);
        let err = decode_err(&blob, layout);
        assert_eq!(
            err.kind(),
            &ErrorKind::CountTooLarge {
                value: 1025,
                max: 1024
            }
        );
        assert_eq!((err.path(), err.offset()), ("in_num", 8), "{layout}");
    }
}

#[test]
fn out_num_over_1024_is_its_own_error() {
    for layout in Layout::ALL {
        let mut blob = valid(layout);
        put_u32(&mut blob, layout, 4, u32::MAX);
        let err = decode_err(&blob, layout);
        assert_eq!(
            err.kind(),
            &ErrorKind::CountTooLarge {
                value: u64::from(u32::MAX),
                max: 1024
            }
        );
        assert_eq!((err.path(), err.offset()), ("out_num", 4), "{layout}");
    }
}

#[test]
fn counts_whose_sum_exceeds_1024_are_their_own_error() {
    for layout in Layout::ALL {
        let mut blob = valid(layout);
        put_u32(&mut blob, layout, 4, 1000);
        put_u32(&mut blob, layout, 8, 25);
        let err = decode_err(&blob, layout);
        assert_eq!(
            err.kind(),
            &ErrorKind::CountSumTooLarge {
                first: 1000,
                second: 25,
                max: 1024
            }
        );
        assert_eq!(
            (err.path(), err.offset()),
            ("out_num+in_num", 4),
            "{layout}"
        );
    }
}

#[test]
fn counts_of_exactly_1024_are_accepted() {
    let mut blob = valid(Layout::Stable);
    put_u32(&mut blob, Layout::Stable, 4, 1000);
    put_u32(&mut blob, Layout::Stable, 8, 24);
    let decoded = element::decode(&mut Reader::new(&blob), Layout::Stable).unwrap();
    assert_eq!(decoded.element.device_readable.len(), 1000);
    assert_eq!(decoded.element.device_writable.len(), 24);
}

#[test]
fn an_address_range_past_2_pow_64_is_its_own_error() {
    for layout in Layout::ALL {
        let g = layout.geometry();
        let mut blob = valid(layout);
        // in_addr[0] near the top of the address space; in_sg[0].iov_len is 1... make it 2.
        let top = u64::MAX - 1;
        let addr_bytes = match g.endian {
            vmstate::wire::Endian::Little => top.to_le_bytes(),
            vmstate::wire::Endian::Big => top.to_be_bytes(),
        };
        blob[g.in_addr..g.in_addr + 8].copy_from_slice(&addr_bytes);
        let len_offset = g.in_sg + g.word_size;
        put_word(&mut blob, layout, len_offset, 2);
        let err = decode_err(&blob, layout);
        assert_eq!(
            err.kind(),
            &ErrorKind::AddressOverflow { addr: top, len: 2 }
        );
        assert_eq!(
            (err.path(), err.offset()),
            ("in_sg[0].iov_len", len_offset as u64)
        );
    }
}

#[test]
fn the_encoder_refuses_what_the_decoder_refuses() {
    let too_many = Element {
        index: 0,
        device_readable: vec![Segment { addr: 0, len: 1 }; 1025],
        device_writable: vec![],
    };
    let err = element::encode(&too_many, Layout::Stable, &mut Writer::new()).unwrap_err();
    assert_eq!((err.path(), err.offset()), ("out_num", 4));

    let sum = Element {
        index: 0,
        device_readable: vec![Segment { addr: 0, len: 1 }; 600],
        device_writable: vec![Segment { addr: 0, len: 1 }; 600],
    };
    let err = element::encode(&sum, Layout::Stable, &mut Writer::new()).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::CountSumTooLarge { .. }));

    let overflow = Element {
        index: 0,
        device_readable: vec![Segment {
            addr: u64::MAX,
            len: 1,
        }],
        device_writable: vec![],
    };
    let err = element::encode(&overflow, Layout::Stable, &mut Writer::new()).unwrap_err();
    assert_eq!(
        (err.path(), err.offset()),
        ("out_sg[0].iov_len", 32_784 + 8)
    );
}

#[test]
fn detection_without_a_fitting_size_or_with_nonsense_counters_fails() {
    let err = element::choose_layout(&[0u8; 49_167], LayoutChoice::Auto).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::NoLayoutFits { size: 49_167 });
    let mut blob = valid(Layout::Stable);
    blob[4..8].copy_from_slice(&[0x10, 0, 0, 0x10]);
    let err = element::choose_layout(&blob, LayoutChoice::Auto).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ImplausibleLayout { .. }),
        "{err}"
    );
}
