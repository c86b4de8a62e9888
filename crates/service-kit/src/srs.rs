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
            srs_domain: None,
            srs_max_age_days: 21,
        }
    }
}

impl SrsArgs {
    /// The rewriting, when a secret is set (`hostname` is the default domain).
    #[must_use]
    pub fn srs(&self, hostname: &str) -> Option<mail_wire::srs::Srs> {
        let secret = self.srs_secret.as_deref().filter(|s| !s.is_empty())?;
        let domain = self.srs_domain.as_deref().unwrap_or(hostname);
        Some(mail_wire::srs::Srs::new(
            secret.as_bytes(),
            domain,
            self.srs_max_age_days,
        ))
    }
}
