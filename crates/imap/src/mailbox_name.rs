//! Mailbox names: normalisation of client input (RFC 9051 §5.1: INBOX is
//! case-insensitive, "/" is the hierarchy delimiter) and LIST wildcard
//! matching (RFC 9051 §6.3.9: `*` matches anything, `%` anything but the
//! delimiter).

/// Longest mailbox name accepted (the store's limit).
pub const MAX_NAME: usize = 512;
/// Deepest hierarchy accepted (the store's limit).
pub const MAX_DEPTH: usize = 16;

/// Canonical store name for a decoded client name, or `None` when the name
/// is not acceptable (empty components, "." / "..", control characters,
/// too long or too deep: ATTACKS.md #34).
#[must_use]
pub fn normalise(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return None;
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > MAX_DEPTH
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    if parts[0].eq_ignore_ascii_case("INBOX") {
        let mut s = String::from("INBOX");
        for p in &parts[1..] {
            s.push('/');
            s.push_str(p);
        }
        return Some(s);
    }
    Some(name.to_string())
}

/// Does `name` match the LIST pattern? Iterative two-pointer matching with
/// backtracking to the last `*` / `%` (linear-ish, no recursion).
#[must_use]
pub fn matches(pattern: &str, name: &str) -> bool {
    // INBOX is case-insensitive in patterns too.
    let pattern = canonical_inbox_prefix(pattern);
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    wildcard(&p, &n)
}

fn canonical_inbox_prefix(pattern: &str) -> String {
    if pattern.len() >= 5
        && pattern.is_char_boundary(5)
        && pattern[..5].eq_ignore_ascii_case("INBOX")
    {
        let rest = &pattern[5..];
        if rest.is_empty() || rest.starts_with('/') {
            return format!("INBOX{rest}");
        }
    }
    pattern.to_string()
}

fn wildcard(p: &[char], n: &[char]) -> bool {
    // Dynamic programming over (pattern, name) positions: O(|p|·|n|) time,
    // O(|n|) memory. Names are ≤ 512 bytes, patterns bounded by the line.
    let mut prev = vec![false; n.len() + 1];
    prev[0] = true;
    for &pc in p {
        let mut cur = vec![false; n.len() + 1];
        match pc {
            '*' => {
                let mut any = false;
                for j in 0..=n.len() {
                    any |= prev[j];
                    cur[j] = any;
                }
            }
            '%' => {
                for j in 0..=n.len() {
                    cur[j] = prev[j] || (j > 0 && cur[j - 1] && n[j - 1] != '/');
                }
            }
            c => {
                for j in 1..=n.len() {
                    cur[j] = prev[j - 1] && n[j - 1] == c;
                }
            }
        }
        prev = cur;
    }
    prev[n.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(normalise("inbox").as_deref(), Some("INBOX"));
        assert_eq!(normalise("Inbox/Sub").as_deref(), Some("INBOX/Sub"));
        assert_eq!(normalise("Inboxes").as_deref(), Some("Inboxes"));
        assert_eq!(normalise("a/b").as_deref(), Some("a/b"));
        for bad in [
            "", "/a", "a/", "a//b", "../../x", "a/./b", "a\u{0}b", "a\nb",
        ] {
            assert_eq!(normalise(bad), None, "{bad:?}");
        }
        let deep = vec!["x"; 1000].join("/");
        assert_eq!(normalise(&deep), None);
    }

    #[test]
    fn wildcards() {
        assert!(matches("*", "a/b/c"));
        assert!(matches("%", "a"));
        assert!(!matches("%", "a/b"));
        assert!(matches("a/%", "a/b"));
        assert!(!matches("a/%", "a/b/c"));
        assert!(matches("a/*", "a/b/c"));
        assert!(matches("inbox", "INBOX"));
        assert!(matches("InBox/*", "INBOX/x"));
        assert!(!matches("b*", "a"));
        assert!(matches("*b%", "ab"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
    }
}
