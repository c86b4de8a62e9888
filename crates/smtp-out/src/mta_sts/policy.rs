//! MTA-STS grammar (RFC 8461): the `_mta-sts` TXT record (§3.1), the
//! policy file (§3.2) and MX host matching (§4.1). No I/O.

/// Longest `max_age` honoured (RFC 8461 §3.2: 31557600 seconds, a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The policy mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS; otherwise defer.
    Enforce,
    /// Deliver as usual; report what would have failed.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mx` patterns, lower case, without a trailing dot.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached, capped at [`MAX_AGE_LIMIT`].
    pub max_age: u64,
}

impl Policy {
    /// Does the MX host `host` match one of the `mx` patterns (RFC 8461
    /// §4.1: exact, or `*.` standing for exactly one leftmost label)?
    #[must_use]
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// Parses a policy file (RFC 8461 §3.2): `key: value` lines ending in
/// CRLF or LF; `version: STSv1`, `mode`, `max_age` required; `mx`
/// required (repeatable) unless the mode is `none`; unknown keys ignored.
///
/// # Errors
/// What is missing or malformed.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("policy line without a colon: {line:?}"));
        };
        let value = value.trim();
        match key.trim() {
            "version" if version.is_none() => version = Some(value.to_string()),
            "mode" if mode.is_none() => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(format!("unknown mode {value:?}")),
                });
            }
            "max_age" if max_age.is_none() => {
                // RFC 8461 §3.2: max_age is 1*10DIGIT.
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(format!("bad max_age {value:?}"));
                }
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("bad max_age {value:?}"))?;
                max_age = Some(n.min(MAX_AGE_LIMIT));
            }
            "mx" => {
                let p = value.trim_end_matches('.').to_ascii_lowercase();
                if p.is_empty() || p.contains(char::is_whitespace) {
                    return Err(format!("bad mx pattern {value:?}"));
                }
                mx.push(p);
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx pattern".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// The policy `id` of the `_mta-sts` TXT records (RFC 8461 §3.1): exactly
/// one record starting `v=STSv1;` must exist, with an `id` of 1–32
/// alphanumerics. `None`: no usable record (the domain has no policy, or
/// the records are ambiguous).
#[must_use]
pub fn txt_id(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.split(';')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("v=STSv1"))
        })
        .collect();
    let [record] = sts.as_slice() else {
        return None;
    };
    record.split(';').skip(1).find_map(|field| {
        let (k, v) = field.trim().split_once('=')?;
        (k.trim() == "id"
            && (1..=32).contains(&v.trim().len())
            && v.trim().bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 86400\r\nextension: x\r\n",
        )
        .expect("parse");
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 86_400);
        assert_eq!(p.mx, vec!["mail.example.com", "*.example.net"]);
        assert!(p.matches("MAIL.example.com."));
        assert!(p.matches("mx1.example.net"));
        // RFC 8461 §4.1: a wildcard stands for one label only.
        assert!(!p.matches("a.b.example.net"));
        assert!(!p.matches("example.net"));
        assert!(!p.matches("evil-mail.example.com"));
        let lf = parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 99999999999\n");
        assert_eq!(
            lf.map(|p| (p.mode, p.max_age)),
            Err("bad max_age \"99999999999\"".into())
        );
        let capped =
            parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 9999999999\n")
                .expect("parse");
        assert_eq!(capped.max_age, MAX_AGE_LIMIT);
        assert!(parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
        for bad in [
            "",
            "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
            "<html>not a policy</html>",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn txt_records() {
        let id = |r: &[&str]| txt_id(&r.iter().map(|s| (*s).to_string()).collect::<Vec<_>>());
        assert_eq!(
            id(&["v=STSv1; id=20240101T010101;"]),
            Some("20240101T010101".into())
        );
        assert_eq!(id(&["v=spf1 -all", "v=STSv1;id=abc"]), Some("abc".into()));
        assert_eq!(id(&["v=STSv1; id=a", "v=STSv1; id=b"]), None);
        assert_eq!(id(&["v=STSv1; id=not-alnum"]), None);
        assert_eq!(id(&["v=STSv1; id=123456789012345678901234567890123"]), None);
        assert_eq!(id(&["v=STSv1;"]), None);
        assert_eq!(id(&[]), None);
    }
}
