//! Decoding a snapshot from arbitrary bytes must fail cleanly.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = cairn::snapshot::Snapshot::decode(data) {
        let _ = snapshot.time.to_rfc3339();
        let _ = snapshot.paths_lossy();
    }
});
