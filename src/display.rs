//! Printing names that may hold any byte.

/// Formats a count with its noun, in the plural unless the count is 1:
/// `count(1, "entry")` is "1 entry", `count(2, "entry")` is "2 entries".
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        return format!("1 {noun}");
    }
    match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// Escapes a path for display: printable UTF-8 stays as it is, while backslashes,
/// control characters and invalid bytes become escapes (`\\`, `\n`, `\x1b`, `\xff`),
/// so every name prints on one line and two different names never print alike.
pub fn escape_path(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{count, escape_path};

    #[test]
    fn count_uses_plural_unless_one() {
        assert_eq!(count(0u64, "snapshot"), "0 snapshots");
        assert_eq!(count(1u64, "snapshot"), "1 snapshot");
        assert_eq!(count(2u64, "entry"), "2 entries");
        assert_eq!(count(1u64, "directory"), "1 directory");
        assert_eq!(count(3u64, "key"), "3 keys");
        assert_eq!(count(5u64, "other entry"), "5 other entries");
    }

    #[test]
    fn escape_keeps_plain_names() {
        assert_eq!(
            escape_path("/srv/git/ünïcode -x".as_bytes()),
            "/srv/git/ünïcode -x"
        );
    }

    #[test]
    fn escape_marks_newline_backslash_and_invalid_bytes() {
        assert_eq!(escape_path(b"a\nb"), "a\\nb");
        assert_eq!(escape_path(b"a\\nb"), "a\\\\nb");
        assert_eq!(escape_path(b"a\xffb"), "a\\xffb");
    }
}
