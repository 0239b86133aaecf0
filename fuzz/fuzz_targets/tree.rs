//! Decoding a directory tree from arbitrary bytes must fail cleanly, and an
//! accepted tree must hold valid, sorted names and encode back to the same tree.
#![no_main]
use cairn::tree::Tree;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data) {
        for node in &tree.nodes {
            assert!(!node.name.is_empty());
            assert!(!node.name.contains(&b'/'));
        }
        assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
    }
});
