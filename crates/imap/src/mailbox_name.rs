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
/// too long or too deep: threat model T34).
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

/// Most wildcards (`*`, `%`) in one LIST pattern (threat model T50: LIST
/// over a huge hierarchy stays bounded).
pub const MAX_WILDCARDS: usize = 10;

/// Does `name` match the LIST pattern?
#[must_use]
pub fn matches(pattern: &str, name: &str) -> bool {
    Pattern::new(pattern).matches(name).0
}

/// A LIST pattern (RFC 9051 §6.3.9), decoded once for many names.
#[derive(Debug, Clone)]
pub struct Pattern {
    chars: Vec<char>,
    /// Characters that must match one for one; a pattern with more than
    /// [`MAX_NAME`] of them matches nothing.
    literal: usize,
}

impl Pattern {
    #[must_use]
    pub fn new(pattern: &str) -> Self {
        // INBOX is case-insensitive in patterns too.
        let chars: Vec<char> = canonical_inbox_prefix(pattern).chars().collect();
        let literal = chars.iter().filter(|c| !matches!(c, '*' | '%')).count();
        Self { chars, literal }
    }

    /// Number of `*` and `%` in the pattern.
    #[must_use]
    pub fn wildcards(&self) -> usize {
        self.chars.len() - self.literal
    }

    /// Whether `name` matches, and the work spent (pattern × name
    /// characters at most), so a caller can bound a whole LIST.
    #[must_use]
    pub fn matches(&self, name: &str) -> (bool, usize) {
        if self.literal > MAX_NAME || self.literal > name.len() {
            return (false, 1);
        }
        let n: Vec<char> = name.chars().collect();
        wildcard(&self.chars, &n)
    }
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

/// Dynamic programming over (pattern, name) positions: O(|p|·|n|) time at
/// worst, O(|n|) memory, no backtracking (so no exponential blow-up on
/// `*%*%*%…`); stops as soon as no prefix of the name can match.
fn wildcard(p: &[char], n: &[char]) -> (bool, usize) {
    let mut prev = vec![false; n.len() + 1];
    let mut cur = vec![false; n.len() + 1];
    prev[0] = true;
    let mut work = 0;
    for &pc in p {
        work += n.len() + 1;
        match pc {
            '*' => {
                let mut any = false;
                for j in 0..=n.len() {
                    any |= prev[j];
                    cur[j] = any;
                }
            }
            '%' => {
                cur[0] = prev[0];
                for j in 1..=n.len() {
                    cur[j] = prev[j] || (cur[j - 1] && n[j - 1] != '/');
                }
            }
            c => {
                cur[0] = false;
                for j in 1..=n.len() {
                    cur[j] = prev[j - 1] && n[j - 1] == c;
                }
            }
        }
        std::mem::swap(&mut prev, &mut cur);
        if !prev.contains(&true) {
            return (false, work);
        }
    }
    (prev[n.len()], work)
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
        // `%` after `*` needs the later occurrence (no greedy shortcut).
        assert!(matches("*b%c", "b/bc"));
        assert!(!matches("%b%c", "b/bc"));
    }

    /// The adversarial shapes cost at most |pattern|·|name| steps.
    #[test]
    fn nested_wildcards_are_bounded() {
        let name = format!("{}b", "a/".repeat(255));
        let p = Pattern::new(&"*%".repeat(MAX_WILDCARDS / 2));
        assert_eq!(p.wildcards(), MAX_WILDCARDS);
        let (m, work) = p.matches(&name);
        assert!(m);
        assert!(work <= MAX_WILDCARDS * (name.len() + 1), "{work}");
        let p = Pattern::new(&format!("{}c", "*a".repeat(200)));
        let (m, work) = p.matches(&"a".repeat(MAX_NAME));
        assert!(!m);
        assert!(work <= 401 * (MAX_NAME + 1), "{work}");
        // More literal characters than any name can hold: no work at all.
        assert_eq!(
            Pattern::new(&"x".repeat(MAX_NAME + 1)).matches("x"),
            (false, 1)
        );
    }
}
