//! Opening arbitrary bytes as a sealed object, and decompressing arbitrary bytes
//! with a bound, must fail cleanly and never allocate past the bound.
#![no_main]
use std::sync::OnceLock;

use cairn::crypto::{EpochSecret, KeyMaterial, Keys, ObjectKind, decompress_bounded};

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        Keys::derive(
            [7; 16],
            &KeyMaterial {
                identity: [8; 32],
                epochs: vec![EpochSecret {
                    epoch: 0,
                    secret: [9; 32],
                }],
            },
        )
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for kind in [ObjectKind::Chunk, ObjectKind::Tree, ObjectKind::Snapshot] {
        let _ = keys().open(kind, &[0; 32], data, 1 << 20);
    }
    if let Ok(out) = decompress_bounded(data, 1 << 20) {
        assert!(out.len() <= 1 << 20);
    }
});
