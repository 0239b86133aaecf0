//! Locating and decoding a pack header from arbitrary bytes must fail cleanly,
//! and every accepted entry must lie inside the blob area.
#![no_main]
use cairn::repository::pack::{decode_header_plain, header_location};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let trailer: [u8; 4] = data[data.len() - 4..].try_into().unwrap();
        if let Ok((offset, len)) = header_location(data.len() as u64, trailer) {
            assert!(offset + len as u64 + 4 == data.len() as u64);
        }
    }
    let header_offset = data.len() as u64;
    if let Ok(entries) = decode_header_plain(data, header_offset) {
        for entry in entries {
            assert!(u64::from(entry.offset) + u64::from(entry.len) <= header_offset);
        }
    }
});
