//! Decoding an index file's plaintext from arbitrary bytes must fail cleanly.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(records) = cairn::repository::index::decode_index(data) {
        let mut index = cairn::repository::index::Index::default();
        for record in &records {
            index.add_record(record);
        }
    }
});
