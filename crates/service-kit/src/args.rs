//! Flags every protocol service shares, generated per service so each keeps
//! its own environment variable names (`EPISTOLE_IMAP_TLS_CERT`, …).

/// Declares a service's listener flags: host name, health endpoint, TLS
/// material, plaintext-auth permission, connection limits and PROXY trust,
/// with `env` names under `$prefix` and the given defaults; with `plain`
/// and `implicit_tls` also the `--listen`/`--listen-tls` pair of a mailbox
/// access service (imap, pop3). The struct has `tls()` (the rustls
/// configuration, if any), `limits()` (the shared [`crate::ConnLimits`]),
/// `proxy()` and `serve()`.
#[macro_export]
macro_rules! listener_args {
    (
        $(#[$meta:meta])* $name:ident, $prefix:literal,
        max_connections = $total:expr, per_ip = $per_ip:expr, http = $http:literal
        $(, plain = $plain:literal, implicit_tls = $implicit:literal)?
    ) => {
        $(#[$meta])*
        #[derive(clap::Args, Debug, Clone)]
        pub struct $name {
            /// Our host name: greeting, and the name of a generated
            /// self-signed certificate.
            #[arg(long = "hostname", env = "EPISTOLE_HOSTNAME", default_value = "localhost")]
            pub hostname: String,
            /// Address of the /healthz /readyz /metrics endpoint; "off" disables it.
            #[arg(long = "http-listen", env = concat!($prefix, "_HTTP"), default_value = $http)]
            pub http_listen: String,
            $(
                /// Addresses (comma-separated) of the plain listener, STARTTLS
                /// available; "off" disables it.
                #[arg(long = "listen", env = concat!($prefix, "_LISTEN"), default_value = $plain)]
                pub listen: String,
                /// Addresses (comma-separated) of the implicit-TLS listener;
                /// "off" disables it.
                #[arg(long = "listen-tls", env = concat!($prefix, "_LISTEN_TLS"), default_value = $implicit)]
                pub listen_tls: String,
            )?
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
            /// Test defaults: host name "localhost", no health endpoint,
            /// listeners on 127.0.0.1 port 0, no TLS files.
            #[must_use]
            pub fn defaults() -> Self {
                Self {
                    hostname: "localhost".into(),
                    http_listen: "off".into(),
                    $(
                        listen: { let _ = $plain; "127.0.0.1:0".into() },
                        listen_tls: { let _ = $implicit; "127.0.0.1:0".into() },
                    )?
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
            /// when both are given, a self-signed certificate for `--hostname`
            /// when explicitly asked, else none.
            ///
            /// # Errors
            /// Half a configuration, unreadable files, generation failure.
            pub fn tls(
                &self,
            ) -> Result<Option<std::sync::Arc<$crate::rustls::ServerConfig>>, $crate::tls_kit::TlsError> {
                $crate::tls_kit::configure(
                    self.tls_cert.as_deref(),
                    self.tls_key.as_deref(),
                    self.tls_self_signed,
                    &self.hostname,
                )
            }

            /// The PROXY protocol policy these flags describe.
            ///
            /// # Errors
            /// A malformed network, or `--proxy-required` without networks.
            pub fn proxy(&self) -> Result<$crate::ProxyPolicy, String> {
                $crate::ProxyPolicy::new(&self.proxy_trusted, self.proxy_required)
            }

            /// Binds `endpoints` and the health endpoint (`--http-listen`), then
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
                readiness: $crate::Readiness,
                shutdown: $crate::Shutdown,
            ) -> anyhow::Result<()> {
                let proxy = self.proxy().map_err(anyhow::Error::msg)?;
                $crate::Service::bind(endpoints, tls_available, &self.http_listen, readiness)
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

        $(
            impl $name {
                /// [`Self::serve`] on the `--listen` (plain, STARTTLS) and
                /// `--listen-tls` (implicit TLS) endpoints, named `names`
                /// (`["imap", "imaps"]`) in logs, metrics and the
                /// `listening NAME=ADDR` lines.
                ///
                /// # Errors
                /// As [`Self::serve`].
                pub async fn serve_pair<P: $crate::Protocol>(
                    &self,
                    protocol: P,
                    names: [&'static str; 2],
                    tls_available: bool,
                    readiness: $crate::Readiness,
                    shutdown: $crate::Shutdown,
                ) -> anyhow::Result<()> {
                    let _defaults = ($plain, $implicit);
                    let endpoints = [
                        (names[0], $crate::Security::Plain, self.listen.as_str()),
                        (names[1], $crate::Security::ImplicitTls, self.listen_tls.as_str()),
                    ];
                    self.serve(protocol, &endpoints, tls_available, readiness, shutdown)
                        .await
                }
            }
        )?
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
            per_ip = 2,
            http = "127.0.0.1:7000",
            plain = "0.0.0.0:1143",
            implicit_tls = "0.0.0.0:1993"
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
        assert!(half.listener.tls().is_err());
        let none = Cli::try_parse_from(["x"]).expect("parses");
        assert!(none.listener.tls().expect("no TLS").is_none());
        assert_eq!(none.listener.max_connections_per_ip, 2);
        assert_eq!(
            (
                none.listener.hostname.as_str(),
                none.listener.http_listen.as_str(),
                none.listener.listen.as_str(),
                none.listener.listen_tls.as_str()
            ),
            (
                "localhost",
                "127.0.0.1:7000",
                "0.0.0.0:1143",
                "0.0.0.0:1993"
            )
        );
        let signed = Cli::try_parse_from(["x", "--tls-self-signed", "--hostname", "mx.test"])
            .expect("parses");
        assert!(signed.listener.tls().expect("self-signed").is_some());
        assert_eq!(TestArgs::defaults().listen, "127.0.0.1:0");
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
