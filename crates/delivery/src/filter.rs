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

pub use mail_dsn::Headers;

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
