//! Decoding a lock file's plaintext from arbitrary bytes must fail cleanly.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(lock) = cairn::repository::lock::decode_lock(data) {
        let _ = lock.describe();
        let _ = lock.is_stale(cairn::tree::Timestamp::now());
    }
});
