//! Feeds every saved fuzzing input under `fuzz/regressions/TARGET/` to the decoder
//! that the fuzz target of the same name exercises, plus a fixed set of malformed
//! inputs, and checks that each decoder returns an error instead of panicking.

use std::path::Path;

use cairn::crypto::{EpochSecret, KeyMaterial, Keys, ObjectKind, decompress_bounded};
use cairn::repository::pack::{decode_header_plain, header_location};

fn decode_all(target: &str, data: &[u8]) {
    match target {
        "key_file" => drop(cairn::repository::KeyFile::decode(data)),
        "config" => drop(cairn::repository::decode_config(data, "test")),
        "sealed_object" => {
            let keys = Keys::derive(
                [7; 16],
                &KeyMaterial {
                    identity: [8; 32],
                    epochs: vec![EpochSecret {
                        epoch: 0,
                        secret: [9; 32],
                    }],
                },
            );
            for kind in [ObjectKind::Chunk, ObjectKind::Tree, ObjectKind::Snapshot] {
                assert!(keys.open(kind, &[0; 32], data, 1 << 20).is_err());
            }
            if let Ok(out) = decompress_bounded(data, 1 << 20) {
                assert!(out.len() <= 1 << 20);
            }
        }
        "pack" => {
            if data.len() >= 4 {
                let trailer: [u8; 4] = data[data.len() - 4..].try_into().unwrap();
                let _ = header_location(data.len() as u64, trailer);
            }
            let _ = decode_header_plain(data, data.len() as u64);
        }
        "index" => drop(cairn::repository::index::decode_index(data)),
        "tree" => drop(cairn::tree::Tree::decode(data)),
        "snapshot" => drop(cairn::snapshot::Snapshot::decode(data)),
        "lock" => drop(cairn::repository::lock::decode_lock(data)),
        other => panic!("no decoder for fuzz target {other}"),
    }
}

const TARGETS: [&str; 8] = [
    "key_file",
    "config",
    "sealed_object",
    "pack",
    "index",
    "tree",
    "snapshot",
    "lock",
];

#[test]
fn saved_inputs_fail_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for target in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            decode_all(target, &data);
        }
    }
}

#[test]
fn malformed_inputs_fail_cleanly() {
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff; 64],
        b"CAIRNKEY".to_vec(),
        b"CAIRNCFG".to_vec(),
        b"CAIRNPK1\xff\xff\xff\xff".to_vec(),
    ];
    // A length prefix that claims far more elements than there are bytes.
    inputs.push(vec![0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]);
    let mut key_file = b"CAIRNKEY".to_vec();
    key_file.extend_from_slice(&[0xff; 40]);
    inputs.push(key_file);
    for target in TARGETS {
        for data in &inputs {
            decode_all(target, data);
        }
    }
}
