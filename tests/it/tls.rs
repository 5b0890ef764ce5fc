//! TLS termination: certificates chosen by SNI, HTTP/2 by ALPN, gRPC over TLS, load-time checks.

use crate::common::protocol_upstream::{grpc_frame, ProtocolUpstream};
use crate::common::{check_config, free_port, wait_for_port, Gantry, Upstream};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;

struct Site {
    cert_pem: String,
    cert_file: String,
    key_file: String,
}

fn site(dir: &std::path::Path, name: &str, host: &str) -> Site {
    let cert = rcgen::generate_simple_self_signed(vec![host.into()]).expect("cert");
    let cert_file = dir.join(format!("{name}.pem"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).expect("write key");
    Site {
        cert_pem: cert.cert.pem(),
        cert_file: cert_file.display().to_string(),
        key_file: key_file.display().to_string(),
    }
}

fn trusting(site: &Site, port: u16) -> reqwest::Client {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(site.cert_pem.as_bytes()).expect("pem"),
        )
        .resolve("a.test", addr)
        .resolve("x.b.test", addr)
        .no_proxy()
        .build()
        .expect("client")
}

#[tokio::test]
async fn tls_listeners_pick_certificates_by_sni_and_speak_h2_and_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = site(dir.path(), "a", "a.test");
    let b = site(dir.path(), "b", "*.b.test");
    let up = Upstream::start("web").await;
    let grpc = ProtocolUpstream::grpc().await;
    let tls_port = free_port();
    let g = Gantry::start_with(
        &format!(
            "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificates = [\
             {{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]\n",
            a.cert_file, a.key_file, b.cert_file, b.key_file
        ),
        &format!(
            "[clusters.web]\nbackends = [\"{}\"]\n[clusters.grpc]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n\
             [routes.web]\npaths = [\"/\"]\ncluster = \"web\"\n\
             [routes.grpc]\npaths = [\"/echo.Echo/\"]\ncluster = \"grpc\"\n",
            up.addr, grpc.addr
        ),
    );
    wait_for_port(tls_port);

    // Each name gets its own certificate: a client trusting only that one connects.
    let resp = trusting(&a, tls_port)
        .get(format!("https://a.test:{tls_port}/hello"))
        .send()
        .await
        .expect("a.test with a.test's certificate");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN h2");
    let resp = trusting(&b, tls_port)
        .get(format!("https://x.b.test:{tls_port}/hello"))
        .send()
        .await
        .expect("x.b.test with the wildcard certificate");
    assert_eq!(resp.status(), 200);
    assert!(
        trusting(&a, tls_port)
            .get(format!("https://x.b.test:{tls_port}/hello"))
            .send()
            .await
            .is_err(),
        "x.b.test is not served a.test's certificate"
    );

    // gRPC over TLS with ALPN h2: reply and trailers.
    let mut roots = rustls::RootCertStore::empty();
    let der =
        rustls::pki_types::CertificateDer::from_pem_slice(a.cert_pem.as_bytes()).expect("der");
    roots.add(der).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    use http_body_util::BodyExt;
    let req = http::Request::post(format!("https://a.test:{tls_port}/echo.Echo/Reverse"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(grpc_frame(
            b"tls",
        ))))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.expect("body");
    assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], &grpc_frame(b"slt")[..]);
    drop(g);

    // Load-time checks: a key that does not fit, a missing file.
    for (cert, key, complaint) in [
        (&a.cert_file, &b.key_file, "does not fit"),
        (
            &a.cert_file,
            &format!("{}.missing", a.key_file),
            "cannot read",
        ),
    ] {
        let (ok, text) = check_config(&format!(
            "[server]\n[[server.tls]]\nlisten = \"127.0.0.1:1\"\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n"
        ));
        assert!(!ok && text.contains(complaint), "{text}");
    }
}

#[tokio::test]
async fn a_reload_serves_renewed_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = site(dir.path(), "a", "a.test");
    let tls_port = free_port();
    let admin = free_port();
    let tls = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\n\
         certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        old.cert_file, old.key_file
    );
    let body = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"admin-token-0123456789\"\n\
         [routes.hi]\npaths = [\"/\"]\nrespond = {{ body = \"hi\" }}\n"
    );
    let g = Gantry::start_with(&tls, &body);
    wait_for_port(tls_port);
    wait_for_port(admin);
    let get = |site: &Site| {
        trusting(site, tls_port)
            .get(format!("https://a.test:{tls_port}/"))
            .send()
    };
    assert_eq!(get(&old).await.expect("old certificate").status(), 200);

    // The files are renewed in place (same paths), then the configuration reloaded.
    let renewed = site(dir.path(), "a", "a.test");
    g.rewrite_config(&tls, &body);
    let reload = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{admin}/reload"))
        .bearer_auth("admin-token-0123456789")
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status(), 200);
    assert_eq!(
        get(&renewed).await.expect("renewed certificate").status(),
        200
    );
    assert!(
        get(&old).await.is_err(),
        "the old certificate is no longer served"
    );
}
