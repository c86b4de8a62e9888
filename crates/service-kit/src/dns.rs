//! The one way an Epistole process builds its DNS resolver (hickory): the
//! system configuration, or a single server given by `--dns-server` (a
//! local validating resolver in production, the test DNS server in tests).
//! Callers tune caching on the builder before `build()`.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{ResolverBuilder, TokioResolver};

/// A resolver builder for `server` (or /etc/resolv.conf when `None`):
/// each query times out after `timeout` and is tried twice; /etc/hosts is
/// never consulted (mail routing follows DNS only).
///
/// # Errors
/// When the system resolver configuration cannot be read.
pub fn resolver_builder(
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            )
        }
        None => TokioResolver::builder(provider)?,
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 2;
    opts.use_hosts_file = ResolveHosts::Never;
    Ok(builder)
}
