//! Flags every protocol service shares, generated per service so each keeps
//! its own environment variable names (`EPISTOLE_IMAP_TLS_CERT`, …).

/// Declares a service's listener flags: TLS material, plaintext-auth
/// permission, and connection limits, with `env` names under `$prefix`
/// and the given default limits. The struct has `tls()` (the rustls
/// configuration, if any) and `limits()` (the shared [`crate::ConnLimits`]).
#[macro_export]
macro_rules! listener_args {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, max_connections = $total:expr, per_ip = $per_ip:expr) => {
        $(#[$meta])*
        #[derive(clap::Args, Debug, Clone)]
        pub struct $name {
            /// PEM file with the TLS certificate chain.
            #[arg(long = "tls-cert", env = concat!($prefix, "_TLS_CERT"))]
            pub tls_cert: Option<std::path::PathBuf>,
            /// PEM file with the TLS private key.
            #[arg(long = "tls-key", env = concat!($prefix, "_TLS_KEY"))]
            pub tls_key: Option<std::path::PathBuf>,
            /// Development only: generate a self-signed certificate at start.
            #[arg(long = "tls-self-signed", env = concat!($prefix, "_TLS_SELF_SIGNED"), conflicts_with = "tls_cert")]
            pub tls_self_signed: bool,
            /// Testing only: allow authentication without TLS.
            #[arg(long = "allow-plaintext-auth", env = concat!($prefix, "_ALLOW_PLAINTEXT_AUTH"))]
            pub allow_plaintext_auth: bool,
            /// Connections in total.
            #[arg(long = "max-connections", env = concat!($prefix, "_MAX_CONNECTIONS"), default_value_t = $total)]
            pub max_connections: usize,
            /// Connections from one client IP address.
            #[arg(long = "max-connections-per-ip", env = concat!($prefix, "_MAX_CONNECTIONS_PER_IP"), default_value_t = $per_ip)]
            pub max_connections_per_ip: u32,
            /// Networks of load balancers whose PROXY protocol headers (v1/v2)
            /// are believed, comma-separated (`10.0.0.0/8,fd00::/8`); they must
            /// send one. Empty: none.
            #[arg(long = "proxy-trusted", env = concat!($prefix, "_PROXY_TRUSTED"), default_value = "")]
            pub proxy_trusted: String,
            /// Refuse clients that do not come through a trusted proxy.
            #[arg(long = "proxy-required", env = concat!($prefix, "_PROXY_REQUIRED"))]
            pub proxy_required: bool,
        }

        impl $name {
            /// Test defaults: no TLS files, self-signed allowed by the caller.
            #[must_use]
            pub fn defaults() -> Self {
                Self {
                    tls_cert: None,
                    tls_key: None,
                    tls_self_signed: false,
                    allow_plaintext_auth: false,
                    max_connections: $total,
                    max_connections_per_ip: $per_ip,
                    proxy_trusted: String::new(),
                    proxy_required: false,
                }
            }

            /// The TLS server configuration these flags describe: PEM files
            /// when both are given, a self-signed certificate for `hostname`
            /// when explicitly asked, else none.
            ///
            /// # Errors
            /// Half a configuration, unreadable files, generation failure.
            pub fn tls(
                &self,
                hostname: &str,
            ) -> Result<Option<std::sync::Arc<$crate::rustls::ServerConfig>>, $crate::tls_kit::TlsError> {
                $crate::tls_kit::configure(
                    self.tls_cert.as_deref(),
                    self.tls_key.as_deref(),
                    self.tls_self_signed,
                    hostname,
                )
            }

            /// The PROXY protocol policy these flags describe.
            ///
            /// # Errors
            /// A malformed network, or `--proxy-required` without networks.
            pub fn proxy(&self) -> Result<$crate::ProxyPolicy, String> {
                $crate::ProxyPolicy::new(&self.proxy_trusted, self.proxy_required)
            }

            /// Binds `endpoints` and the health endpoint (`http_listen`), then
            /// serves `protocol` with these limits and this PROXY policy until
            /// `shutdown`, then gives sessions 10 s to say goodbye.
            ///
            /// # Errors
            /// A bad PROXY network list, a bind failure, an implicit-TLS
            /// endpoint without TLS.
            pub async fn serve<P: $crate::Protocol>(
                &self,
                protocol: P,
                endpoints: &[(&'static str, $crate::Security, &str)],
                tls_available: bool,
                http_listen: &str,
                readiness: $crate::Readiness,
                shutdown: $crate::Shutdown,
            ) -> anyhow::Result<()> {
                let proxy = self.proxy().map_err(anyhow::Error::msg)?;
                $crate::Service::bind(endpoints, tls_available, http_listen, readiness)
                    .await?
                    .serve(
                        std::sync::Arc::new(protocol),
                        self.limits(),
                        proxy,
                        shutdown,
                        std::time::Duration::from_secs(10),
                    )
                    .await
            }

            /// The connection limits these flags describe.
            #[must_use]
            pub fn limits(&self) -> std::sync::Arc<$crate::ConnLimits> {
                $crate::ConnLimits::new(self.max_connections, self.max_connections_per_ip)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[allow(dead_code)]
    mod declared {
        crate::listener_args!(
            /// Flags as a protocol service declares them.
            TestArgs,
            "EPISTOLE_TEST",
            max_connections = 10,
            per_ip = 2
        );
    }
    use declared::TestArgs;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        listener: TestArgs,
    }

    /// A self-signed certificate together with real certificate files is a
    /// mistake, refused at parse time; half a PEM pair is refused at load.
    #[test]
    fn tls_flags_do_not_contradict() {
        assert!(
            Cli::try_parse_from([
                "x",
                "--tls-self-signed",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem"
            ])
            .is_err()
        );
        let half = Cli::try_parse_from(["x", "--tls-cert", "c.pem"]).expect("parses");
        assert!(half.listener.tls("localhost").is_err());
        let none = Cli::try_parse_from(["x"]).expect("parses");
        assert!(none.listener.tls("localhost").expect("no TLS").is_none());
        assert_eq!(none.listener.max_connections_per_ip, 2);
        assert!(
            Cli::try_parse_from(["x", "--proxy-required"])
                .expect("parses")
                .listener
                .proxy()
                .is_err(),
            "--proxy-required without trusted networks"
        );
    }
}
