//! Printing names that may hold any byte.

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
    use super::escape_path;

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
