//! Feeds arbitrary bytes to the SIF parser. Whatever parses must honour the
//! parser's guarantees, and the accessors must not panic.
//!
//! Run (nightly): `cd native/fuzz && cargo +nightly fuzz run sif_parse corpus/sif_parse
//! /work/shared/fixtures/sif -- -max_len=65536` (the fixtures seed the corpus; a
//! valid SIF is at least 32176 bytes, so the default max_len of 4096 is too small).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use sycri_native::sif::SifImage;

fuzz_target!(|data: &[u8]| {
    let mut cur = Cursor::new(data);
    let Ok(img) = SifImage::parse(&mut cur) else {
        return;
    };
    let len = data.len() as u64;
    let h = &img.header;
    let mut spans = Vec::new();
    for d in &img.descriptors {
        let end = d.offset.checked_add(d.size).expect("object end overflows");
        assert!(end <= len, "object {} past EOF", d.id);
        if d.size > 0 {
            assert!(d.offset >= 128, "object {} over the header", d.id);
            assert!(
                end <= h.descriptor_offset || d.offset >= h.descriptor_offset + h.descriptor_size,
                "object {} over the descriptor table",
                d.id
            );
            spans.push((d.offset, end));
        }
    }
    spans.sort_unstable();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "objects overlap"
    );

    let _ = img.primary_partition();
    let _ = img.check_primary_squashfs(&mut cur);
    let _ = img.find_generic_json("oci-config.json");
    for d in img.descriptors.clone() {
        if let Ok(v) = img.read_object(&mut cur, &d, 4096) {
            assert_eq!(v.len() as u64, d.size);
        }
    }
});
