//! Decoding a key file from arbitrary bytes must fail cleanly, never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cairn::repository::KeyFile::decode(data);
});
