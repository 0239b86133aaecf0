//! The mount's cache of decoded directory trees, bounded by an estimate of the
//! memory they take.
//!
//! Inodes refer to trees by id (see [`super::inode`]), so the cache is the only
//! place where the mount keeps directory metadata, and its size bounds the
//! memory that listing takes, however many files the snapshots hold. A tree
//! larger than the whole budget is still kept while it is the most recently
//! used one, so that listing a huge directory does not load it again for every
//! batch of entries.

use std::mem::size_of;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::id::TreeId;
use crate::repository::{RepoError, Repository};
use crate::tree::{Extent, Node, Tree, Xattr};

struct Cached {
    trees: LruCache<TreeId, Arc<Tree>>,
    bytes: usize,
}

/// Decoded trees, least recently used evicted first.
pub(super) struct TreeCache {
    repo: Arc<Repository>,
    max_bytes: usize,
    cached: Mutex<Cached>,
}

impl TreeCache {
    /// Creates an empty cache that keeps about `max_bytes` of trees.
    pub fn new(repo: Arc<Repository>, max_bytes: usize) -> Self {
        Self {
            repo,
            max_bytes,
            cached: Mutex::new(Cached {
                trees: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// Returns a tree, loading it from the repository if it is not cached. The
    /// lock is not held while loading; two threads may load the same tree, and
    /// the second result replaces the first.
    pub fn get(&self, id: &TreeId) -> Result<Arc<Tree>, RepoError> {
        if let Some(tree) = self.cached.lock().expect("tree cache lock").trees.get(id) {
            return Ok(tree.clone());
        }
        let tree = Arc::new(self.repo.load_tree_uncached(id)?);
        let size = tree_memory(&tree);
        let mut cached = self.cached.lock().expect("tree cache lock");
        if let Some(old) = cached.trees.put(*id, tree.clone()) {
            cached.bytes -= tree_memory(&old);
        }
        cached.bytes += size;
        while cached.bytes > self.max_bytes && cached.trees.len() > 1 {
            let Some((_, old)) = cached.trees.pop_lru() else {
                break;
            };
            cached.bytes -= tree_memory(&old);
        }
        Ok(tree)
    }

    /// Returns a tree only if it is cached, without changing the eviction order.
    pub fn peek(&self, id: &TreeId) -> Option<Arc<Tree>> {
        self.cached
            .lock()
            .expect("tree cache lock")
            .trees
            .peek(id)
            .cloned()
    }
}

/// Estimates the heap memory a decoded tree takes: its node array plus what each
/// node owns. Allocator overhead is left out.
pub(super) fn tree_memory(tree: &Tree) -> usize {
    let nodes: usize = tree
        .nodes
        .iter()
        .map(|node| {
            node.name.len()
                + node.target.len()
                + node.content.len() * size_of::<Extent>()
                + node
                    .xattrs
                    .iter()
                    .map(|x| size_of::<Xattr>() + x.name.len() + x.value.len())
                    .sum::<usize>()
        })
        .sum();
    size_of::<Tree>() + tree.nodes.len() * size_of::<Node>() + nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::NodeKind;

    #[test]
    fn memory_estimate_counts_what_nodes_own() {
        let empty = Tree::default();
        let mut node = Node::new(b"name".to_vec(), NodeKind::File);
        node.content = vec![Extent::Hole { len: 1 }; 3];
        let one = Tree { nodes: vec![node] };
        assert_eq!(
            tree_memory(&one) - tree_memory(&empty),
            size_of::<Node>() + 4 + 3 * size_of::<Extent>()
        );
    }
}
