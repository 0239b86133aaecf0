//! Comparing two snapshots' trees; subtrees with equal ids are skipped unread.

use crate::id::TreeId;
use crate::repository::{RepoError, Repository};
use crate::tree::{Node, NodeKind};

/// Kind of difference of a path between two trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only in the second tree.
    Added,
    /// Only in the first tree.
    Removed,
    /// In both, with other content, type or metadata.
    Modified,
}

impl Change {
    /// Returns the one-character marker printed before the path.
    pub fn marker(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
        }
    }
}

/// Calls `report` for each changed path (absolute, raw bytes), in path order.
/// A directory whose own metadata changed is reported as modified; its entries
/// are compared below it. When a path changes type, everything below the old or
/// new directory is reported as removed or added.
pub fn diff_trees(
    repo: &Repository,
    a: Option<&TreeId>,
    b: Option<&TreeId>,
    report: &mut dyn FnMut(Change, &[u8]),
) -> Result<(), RepoError> {
    walk(repo, a, b, b"", report)
}

fn walk(
    repo: &Repository,
    a: Option<&TreeId>,
    b: Option<&TreeId>,
    dir: &[u8],
    report: &mut dyn FnMut(Change, &[u8]),
) -> Result<(), RepoError> {
    if a == b {
        return Ok(());
    }
    let empty = crate::tree::Tree::default();
    let tree_a = match a {
        Some(id) => Some(repo.load_tree(id)?),
        None => None,
    };
    let tree_b = match b {
        Some(id) => Some(repo.load_tree(id)?),
        None => None,
    };
    let nodes_a = tree_a.as_deref().unwrap_or(&empty).nodes.as_slice();
    let nodes_b = tree_b.as_deref().unwrap_or(&empty).nodes.as_slice();

    let (mut i, mut j) = (0, 0);
    while i < nodes_a.len() || j < nodes_b.len() {
        let order = match (nodes_a.get(i), nodes_b.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let node = &nodes_a[i];
                let path = join(dir, &node.name);
                report(Change::Removed, &path);
                walk(repo, subtree(node), None, &path, report)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let node = &nodes_b[j];
                let path = join(dir, &node.name);
                report(Change::Added, &path);
                walk(repo, None, subtree(node), &path, report)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&nodes_a[i], &nodes_b[j]);
                let path = join(dir, &x.name);
                if differs(x, y) {
                    report(Change::Modified, &path);
                }
                walk(repo, subtree(x), subtree(y), &path, report)?;
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn subtree(node: &Node) -> Option<&TreeId> {
    if node.kind == NodeKind::Dir {
        node.subtree.as_ref()
    } else {
        None
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

/// True when two entries of the same name differ in type, content or the
/// metadata a restore brings back. Inode numbers and ctime are ignored, and so is
/// a directory's mtime, which changes whenever an entry is added or removed and
/// would otherwise list every parent of a change.
fn differs(x: &Node, y: &Node) -> bool {
    let dirs = x.kind == NodeKind::Dir && y.kind == NodeKind::Dir;
    x.kind != y.kind
        || x.mode != y.mode
        || x.uid != y.uid
        || x.gid != y.gid
        || x.size != y.size
        || (!dirs && x.mtime != y.mtime)
        || x.rdev != y.rdev
        || x.target != y.target
        || x.content != y.content
        || x.xattrs != y.xattrs
        || (!dirs && x.nlink != y.nlink)
}
