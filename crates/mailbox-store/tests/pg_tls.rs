//! PostgreSQL over TLS (issue 19; managed PostgreSQL services require it):
//! the store's database URL takes libpq's `sslmode` and `sslrootcert`, and
//! with `sslmode=verify-full` the store connects only to a server whose
//! certificate chains to the given CA and names the host. A real cluster
//! with `ssl = on` on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_kit::TlsPostgres;

#[tokio::test]
async fn verify_full_connects_over_tls_and_refuses_an_unknown_ca() {
    let (cert, key) = tls_kit::self_signed_pem("localhost").unwrap();
    let pg = TlsPostgres::start(&cert, &key).expect("a TLS PostgreSQL cluster");
    let dir = std::env::temp_dir().join(format!("pg-tls-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let url = |mode: &str, root: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode={mode}&sslrootcert={}",
            pg.port,
            root.display()
        )
    };

    // The right CA: connected, and the server says the session is encrypted.
    let pool = mailbox_store::pool(&url("verify-full", &ca), 1).unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("verify-full with the server's CA connects");
    assert!(ssl, "the session is not encrypted");
    pool.close().await;

    // Another CA: refused, never a clear-text fallback.
    let (other, _) = tls_kit::self_signed_pem("localhost").unwrap();
    let wrong = dir.join("other.pem");
    std::fs::write(&wrong, &other).unwrap();
    let pool = mailbox_store::pool(&url("verify-full", &wrong), 1).unwrap();
    let err = sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .expect_err("a certificate from an unknown CA must be refused");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls") || text.contains("invalid"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
