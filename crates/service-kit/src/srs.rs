//! The Sender Rewriting Scheme flags shared by delivery (which rewrites the
//! envelope sender of forwarded mail) and smtp-in (which accepts bounces
//! to the rewritten addresses): the same secret and domain on both.

/// `--srs-secret`, `--srs-domain`, `--srs-max-age-days`.
#[derive(clap::Args, Debug, Clone)]
pub struct SrsArgs {
    /// HMAC secret of SRS addresses (forwarding via aliases to remote
    /// addresses); without it forwarded mail keeps its original sender.
    #[arg(
        long = "srs-secret",
        env = "EPISTOLE_SRS_SECRET",
        hide_env_values = true
    )]
    pub srs_secret: Option<String>,
    /// A file holding the SRS secret (a mounted secret), read when
    /// `--srs-secret` is not given; surrounding white space is ignored.
    #[arg(long = "srs-secret-file", env = "EPISTOLE_SRS_SECRET_FILE")]
    pub srs_secret_file: Option<std::path::PathBuf>,
    /// Our domain in rewritten senders (`SRS0=…@DOMAIN`); its MX must be
    /// our smtp-in. Default: the host name.
    #[arg(long = "srs-domain", env = "EPISTOLE_SRS_DOMAIN")]
    pub srs_domain: Option<String>,
    /// Days a rewritten address accepts bounces.
    #[arg(
        long = "srs-max-age-days",
        env = "EPISTOLE_SRS_MAX_AGE_DAYS",
        default_value_t = 21
    )]
    pub srs_max_age_days: u32,
}

impl Default for SrsArgs {
    fn default() -> Self {
        Self {
            srs_secret: None,
            srs_secret_file: None,
            srs_domain: None,
            srs_max_age_days: 21,
        }
    }
}

impl SrsArgs {
    /// The rewriting, when a secret is set (`hostname` is the default
    /// domain). An unreadable secret file is logged and leaves SRS off.
    #[must_use]
    pub fn srs(&self, hostname: &str) -> Option<mail_wire::srs::Srs> {
        let from_file = match (&self.srs_secret, &self.srs_secret_file) {
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) => Some(s.trim().to_string()),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "SRS secret file unreadable");
                    None
                }
            },
            _ => None,
        };
        let secret = self
            .srs_secret
            .as_deref()
            .or(from_file.as_deref())
            .filter(|s| !s.is_empty())?;
        let domain = self.srs_domain.as_deref().unwrap_or(hostname);
        Some(mail_wire::srs::Srs::new(
            secret.as_bytes(),
            domain,
            self.srs_max_age_days,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret from a mounted file (compose, Kubernetes) makes the same
    /// rewriting as the flag; a missing file leaves SRS off.
    #[test]
    fn secret_from_a_file() {
        let path = std::env::temp_dir().join(format!("srs-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        let by_file = SrsArgs {
            srs_secret_file: Some(path.clone()),
            ..SrsArgs::default()
        };
        let by_flag = SrsArgs {
            srs_secret: Some("s3cret".into()),
            ..SrsArgs::default()
        };
        let a = by_file
            .srs("a.test")
            .map(|s| s.forward("x@b.test", 1_700_000_000));
        let b = by_flag
            .srs("a.test")
            .map(|s| s.forward("x@b.test", 1_700_000_000));
        assert!(a.is_some());
        assert_eq!(a, b);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(by_file.srs("a.test").is_none());
    }
}
