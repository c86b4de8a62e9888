//! Choosing the folder a message is filed into. Today: the user's simple
//! rules (header contains → folder), then the `+tag` of a plus-address, then
//! INBOX. The [`Rules`] trait is the seam where a Sieve (RFC 5228)
//! interpreter takes over later: it sees the same parsed headers and returns
//! the same [`Action`].

use mailstore_api::pb;

/// What to do with a message for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// File into this mailbox (falls back to INBOX when it does not exist).
    FileInto(String),
    /// Deliver to INBOX.
    Keep,
}

/// The header fields of a message as (lower-cased name, unfolded value).
#[derive(Debug, Default, Clone)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Parses the header block at the start of a raw message.
    #[must_use]
    pub fn parse(raw: &[u8]) -> Self {
        let Some(msg) = mail_parser::MessageParser::default().parse_headers(raw) else {
            return Self::default();
        };
        let Some(root) = msg.parts.first() else {
            return Self::default();
        };
        let mut out = Vec::new();
        for h in &root.headers {
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .replace(['\r', '\n'], "")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            out.push((h.name.as_str().to_ascii_lowercase(), value));
        }
        Self(out)
    }

    /// Values of a field (case-insensitive name).
    pub fn get<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A per-user rule program.
pub trait Rules {
    fn evaluate(&self, headers: &Headers) -> Action;
}

/// The simple rules kept by the store, in position order; the first match wins.
impl Rules for Vec<pb::Filter> {
    fn evaluate(&self, headers: &Headers) -> Action {
        for f in self {
            let needle = f.contains.to_lowercase();
            if headers
                .get(&f.header)
                .any(|v| v.to_lowercase().contains(&needle))
            {
                return Action::FileInto(f.folder.clone());
            }
        }
        Action::Keep
    }
}

/// The mailbox to deliver to: a matching rule, else the plus-address tag,
/// else INBOX.
#[must_use]
pub fn choose(rules: &dyn Rules, headers: &Headers, detail: &str) -> String {
    match rules.evaluate(headers) {
        Action::FileInto(folder) => folder,
        Action::Keep if !detail.is_empty() => detail.to_string(),
        Action::Keep => "INBOX".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(header: &str, contains: &str, folder: &str) -> pb::Filter {
        pb::Filter {
            header: header.into(),
            contains: contains.into(),
            folder: folder.into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_matching_rule_wins_then_plus_tag_then_inbox() {
        let h = Headers::parse(
            b"From: News <news@lists.example>\r\nList-Id: <weekly.lists.example>\r\nSubject: Hello\r\n folded\r\n\r\nbody",
        );
        assert_eq!(h.get("subject").next(), Some("Hello folded"));
        let rules = vec![
            rule("List-Id", "WEEKLY", "Lists/Weekly"),
            rule("From", "news", "News"),
        ];
        assert_eq!(choose(&rules, &h, "tag"), "Lists/Weekly");
        let none: Vec<pb::Filter> = vec![rule("X-Spam", "yes", "Junk")];
        assert_eq!(choose(&none, &h, "news"), "news");
        assert_eq!(choose(&none, &h, ""), "INBOX");
    }
}
