//! Small operational helpers of the multi-call binary: a development
//! certificate for containers, and an HTTP probe for health checks (the
//! runtime image has no curl).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(clap::Args, Debug)]
pub struct TlsCertArgs {
    /// Directory for tls.crt and tls.key.
    #[arg(long)]
    out: PathBuf,
    /// Name the certificate is for (also valid for localhost).
    #[arg(long, default_value = "localhost")]
    hostname: String,
    /// Keep existing files instead of replacing them.
    #[arg(long)]
    if_missing: bool,
    /// Give the files to this user id (containers run as an unprivileged user).
    #[arg(long)]
    owner: Option<u32>,
}

/// Writes a self-signed certificate and its key as PEM.
///
/// # Errors
/// Generation or file errors.
pub fn tls_cert(a: &TlsCertArgs) -> anyhow::Result<()> {
    let crt = a.out.join("tls.crt");
    let key = a.out.join("tls.key");
    if a.if_missing && crt.exists() && key.exists() {
        println!("keeping the certificate in {}", a.out.display());
        return Ok(());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let (cert_pem, key_pem) = tls_kit::self_signed_pem(&a.hostname)?;
    std::fs::write(&crt, cert_pem).context("write tls.crt")?;
    std::fs::write(&key, key_pem).context("write tls.key")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    if let Some(uid) = a.owner {
        for f in [&crt, &key] {
            std::os::unix::fs::chown(f, Some(uid), Some(uid))
                .with_context(|| format!("chown {}", f.display()))?;
        }
    }
    println!(
        "wrote a self-signed certificate for {} to {} (development only)",
        a.hostname,
        a.out.display()
    );
    Ok(())
}

/// GETs `http://host:port/path` and succeeds on status 200.
///
/// # Errors
/// Anything but a 200 within five seconds.
pub async fn probe(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("timed out")??;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        bail!("{url}: {}", head.lines().next().unwrap_or("no answer"))
    }
}
