//! The relay over TLS (rustls), as phones reach it outside loopback.

use handoff_core::Error;

use crate::harness::{Phone, Relay};

/// A self-signed certificate for 127.0.0.1, as PEM files in `dir`.
fn certificate(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (made.cert.pem(), cert, key)
}

/// A relay serving https with a self-signed certificate (its files in
/// `dir`): the certificate's PEM, and the relay.
fn tls_relay(dir: &std::path::Path) -> (String, Relay) {
    let (pem, cert, key) = certificate(dir);
    let relay = Relay::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    (pem, relay)
}

#[test]
fn the_relay_serves_https_with_its_certificate_and_a_phone_refuses_one_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (pem, relay) = tls_relay(dir.path());
    assert!(relay.url.starts_with("https://127.0.0.1:"), "{}", relay.url);
    let (_, invite) = relay.create_team("Riverside", "max");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // A client that trusts exactly this certificate gets answers.
        let trusting = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let health = trusting
            .get(format!("{}/health", relay.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);
        let pull = trusting
            .get(format!("{}/v1/pull", relay.url))
            .send()
            .await
            .unwrap();
        assert_eq!(pull.status(), 401, "no token over TLS is still no token");

        // Plain http to the TLS port gets no HTTP answer at all.
        let plain = reqwest::Client::new()
            .get(relay.url.replace("https://", "http://") + "/health")
            .send()
            .await;
        assert!(plain.is_err(), "{plain:?}");
    });

    // A phone verifies the relay's certificate against the platform's
    // roots: a self-signed one is refused, and nothing is enrolled.
    let phone = Phone::new();
    let refused = phone.engine.enrol(&relay.url, &invite).unwrap_err();
    assert!(matches!(refused, Error::Offline(_)), "{refused:?}");
    assert!(phone.store.relay_settings().unwrap().is_none());
    // The refused connection reached nothing: no device was enrolled.
    let devices = relay.admin(&["devices", "--team", &relay_team(&relay)]);
    assert!(devices.trim().is_empty(), "{devices}");
}

fn relay_team(relay: &Relay) -> String {
    relay
        .admin(&["teams"])
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned()
}

/// Over TLS the relay offers HTTP/1.1 alone (ALPN), where every request's
/// head is bounded by the read pause: a client offering both gets
/// HTTP/1.1, one offering HTTP/2 alone is refused in the handshake.
#[test]
fn over_tls_the_relay_speaks_http1_only() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let dir = tempfile::tempdir().unwrap();
    let (pem, relay) = tls_relay(dir.path());
    let addr = relay.url.trim_start_matches("https://").to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    // The protocol the handshake settles on, offering `protocols`.
    let offer = |protocols: &[&[u8]]| -> std::io::Result<Option<Vec<u8>>> {
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut conn)?;
        }
        Ok(tls.alpn_protocol().map(<[u8]>::to_vec))
    };
    assert_eq!(
        offer(&[b"h2", b"http/1.1"]).unwrap().as_deref(),
        Some(&b"http/1.1"[..])
    );
    let h2_only = offer(&[b"h2"]);
    assert!(h2_only.is_err(), "{h2_only:?}");
    // Offering nothing is plain HTTP/1.1, as before ALPN.
    assert_eq!(offer(&[]).unwrap(), None);
}
