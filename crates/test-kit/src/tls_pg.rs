//! A PostgreSQL cluster speaking TLS, for the store's `sslmode` tests.

use std::path::PathBuf;
use std::process::Command;

use super::{find_pg_bin, is_root, pg_cmd, run, spawn_watchdog};

/// A PostgreSQL cluster of its own that speaks TLS on 127.0.0.1 (for the
/// store's `sslmode=verify-full` test). Stopped and removed when dropped.
pub struct TlsPostgres {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    pg_ctl: PathBuf,
    as_root: bool,
}

impl TlsPostgres {
    /// Starts a cluster with `ssl = on` and the given server certificate
    /// and key (PEM), trusting every local user (test only).
    ///
    /// # Errors
    /// No PostgreSQL binaries, or a step failing (the message says which).
    pub fn start(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let bin = find_pg_bin().ok_or("no PostgreSQL binaries (initdb, pg_ctl)")?;
        let dir = PathBuf::from(format!(
            "/tmp/epg-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| e.to_string())?;
        let as_root = is_root();
        let data = dir.join("data");
        let initdb = pg_cmd(as_root, &bin.join("initdb"), |c| {
            c.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]);
        });
        if as_root {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            run(chown)?;
        }
        run(initdb)?;
        // PostgreSQL refuses a key readable by others.
        for (name, pem, mode) in [
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ] {
            let path = data.join(name);
            std::fs::write(&path, pem).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| e.to_string())?;
        }
        if as_root {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            run(chown)?;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on",
            dir.display()
        );
        let pg_ctl = bin.join("pg_ctl");
        run(pg_cmd(as_root, &pg_ctl, |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("pg.log"))
                .args(["-w", "-o", &opts, "start"]);
        }))?;
        spawn_watchdog(&dir, &bin, as_root);
        Ok(Self {
            port,
            dir,
            pg_ctl,
            as_root,
        })
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = run(pg_cmd(self.as_root, &self.pg_ctl, |c| {
            c.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
        }));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
