use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::{Cli, EXIT_OK, open};
use crate::display::escape_path;
use crate::id::TreeId;
use crate::repository::Repository;
use crate::tree::{Node, NodeKind};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot: full id, unique id prefix, or `latest`.
    snapshot: String,
    /// Absolute path inside the snapshot to list; the whole snapshot by default.
    path: Option<PathBuf>,
    /// Show type, mode, owner, size and mtime.
    #[arg(short, long)]
    long: bool,
}

pub fn run(cli: &Cli, args: &LsArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let (_, snapshot) = repo.find_snapshot(&args.snapshot)?;
    let mut tree = snapshot.tree;
    let mut prefix = Vec::new();
    if let Some(path) = &args.path {
        for part in path.components() {
            let std::path::Component::Normal(name) = part else {
                continue;
            };
            let loaded = repo.load_tree(&tree)?;
            let Some(node) = loaded.find(name.as_bytes()) else {
                bail!(
                    "{} is not in the snapshot",
                    escape_path(path.as_os_str().as_bytes())
                );
            };
            prefix.push(b'/');
            prefix.extend_from_slice(&node.name);
            match (node.kind, node.subtree) {
                (NodeKind::Dir, Some(sub)) => tree = sub,
                _ => {
                    print_node(&prefix, node, args.long);
                    return Ok(EXIT_OK);
                }
            }
        }
    }
    list(&repo, &tree, &prefix, args.long)?;
    Ok(EXIT_OK)
}

fn list(repo: &Repository, id: &TreeId, dir: &[u8], long: bool) -> anyhow::Result<()> {
    let tree = repo.load_tree(id)?;
    for node in &tree.nodes {
        let mut path = dir.to_vec();
        path.push(b'/');
        path.extend_from_slice(&node.name);
        print_node(&path, node, long);
        if let (NodeKind::Dir, Some(sub)) = (node.kind, &node.subtree) {
            list(repo, sub, &path, long)?;
        }
    }
    Ok(())
}

fn print_node(path: &[u8], node: &Node, long: bool) {
    if !long {
        println!("{}", escape_path(path));
        return;
    }
    let kind = match node.kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
    };
    let owner = node.user.clone().unwrap_or_else(|| node.uid.to_string());
    let group = node.group.clone().unwrap_or_else(|| node.gid.to_string());
    let mut line = format!(
        "{kind}{:04o} {owner:>8} {group:>8} {:>12} {} {}",
        node.mode,
        node.size,
        node.mtime.to_rfc3339(),
        escape_path(path)
    );
    if node.kind == NodeKind::Symlink {
        line.push_str(" -> ");
        line.push_str(&escape_path(&node.target));
    }
    println!("{line}");
}
