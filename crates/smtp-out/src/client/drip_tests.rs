use super::*;

#[tokio::test]
async fn dripping_greeting_times_out() {
    let (c, mut s) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        for b in b"220 slow server\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let t = Timeouts {
        command: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let started = std::time::Instant::now();
    let r = Connection::open(c, "x", None, t).await;
    assert!(
        matches!(r, Err(ClientError::Timeout("greeting"))),
        "{:?}",
        r.err()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
