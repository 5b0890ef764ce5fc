//! Mutual TLS: client certificates verified on TLS listeners (`client_ca`, `client_auth`) and
//! mapped to consumers by `mtls-auth`, a new `client_ca` applied by a reload, and clusters
//! presenting a client certificate to backends and their health checks.

use crate::common::{
    admin_metrics, assert_problem, check_config, eventually, free_port, wait_for_metric,
    wait_for_port, Gantry, Upstream,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// A test certificate authority, with the files of its certificate.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    file: String,
}

/// A certificate and its key: PEM text and files.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    cert_file: String,
    key_file: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        let file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&file, cert.pem()).expect("write ca");
        Ca {
            cert,
            key,
            file: file.display().to_string(),
        }
    }

    /// A certificate for `cn` with `sans` (DNS names, or URIs with a scheme), for `usage`.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.contains("://") {
                true => SanType::URI((*s).try_into().expect("uri")),
                false => SanType::DnsName((*s).try_into().expect("dns")),
            })
            .collect();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed");
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
        }
    }

    fn client(&self, dir: &Path, name: &str, cn: &str, sans: &[&str]) -> Leaf {
        self.issue(dir, name, cn, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The gateway's own TLS certificate, for `gw.test`, and the client CAs.
struct Pki {
    dir: tempfile::TempDir,
    server: Leaf,
    clients: Ca,
    others: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = Ca::new(dir.path(), "site");
        let server = site.issue(
            dir.path(),
            "gw",
            "gw.test",
            &["gw.test"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        Pki {
            clients: Ca::new(dir.path(), "clients"),
            others: Ca::new(dir.path(), "others"),
            server,
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `[[server.tls]]` on `port` with `client_ca` and `client_auth` lines.
    fn listener(&self, port: u16, client_lines: &str) -> String {
        format!(
            "[[server.tls]]\nlisten = \"127.0.0.1:{port}\"\n\
             certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n{client_lines}\n",
            self.server.cert_file, self.server.key_file
        )
    }

    /// A client of `gw.test` on `port` presenting `identity`.
    fn client(&self, port: u16, identity: Option<&Leaf>) -> reqwest::Client {
        let ca = std::fs::read_to_string(self.path().join("site-ca.pem")).expect("site ca");
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("pem"))
            .resolve("gw.test", SocketAddr::from(([127, 0, 0, 1], port)))
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if let Some(leaf) = identity {
            let pem = format!("{}{}", leaf.cert_pem, leaf.key_pem);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("id"));
        }
        builder.build().expect("client")
    }
}

/// `GET path` on `gw.test:port` as `identity`, with `headers`.
async fn get(
    pki: &Pki,
    port: u16,
    identity: Option<&Leaf>,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Result<reqwest::Response> {
    let mut req = pki
        .client(port, identity)
        .get(format!("https://gw.test:{port}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await
}

/// What the echo upstream saw: its request headers.
async fn upstream_headers(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("echo");
    body["headers"].clone()
}

/// `gantry_tls_handshake_failures_total` of the listener on `port` for `reason`.
async fn failures(admin: u16, port: u16, reason: &str) -> u64 {
    let series = format!(
        "gantry_tls_handshake_failures_total{{listener=\"127.0.0.1:{port}\",reason=\"{reason}\"}} "
    );
    let metrics = admin_metrics(admin).await;
    let value = metrics.lines().find_map(|line| line.strip_prefix(&series));
    value
        .and_then(|v| v.parse().ok())
        .expect("the series is exported")
}

/// Whether `leaf` gets a 200 from `/partners` on `gw.test:port`.
async fn accepted(pki: &Pki, port: u16, leaf: &Leaf) -> bool {
    get(pki, port, Some(leaf), "/partners", &[])
        .await
        .is_ok_and(|r| r.status() == 200)
}

const ROUTES: &str = "[routes.partners]\npaths = [\"/partners\"]\ncluster = \"web\"\n\
     [routes.partners.plugins.mtls-auth]\nsubject_claim = \"san_dns\"\nforward_certificate = true\n\
     [routes.open]\npaths = [\"/open\"]\ncluster = \"web\"\n\
     [consumers.acme]\ncertificate_subjects = [\"api.acme.example\"]\n";

#[tokio::test]
async fn required_client_certificates_identify_consumers_and_refuse_the_rest() {
    let pki = Pki::new();
    let acme = pki.clients.client(
        pki.path(),
        "acme",
        "acme client",
        &["api.acme.example", "spiffe://acme/api"],
    );
    let stranger = pki
        .clients
        .client(pki.path(), "stranger", "stranger", &["api.initech.example"]);
    let forged = pki
        .others
        .client(pki.path(), "forged", "acme client", &["api.acme.example"]);
    let up = Upstream::start("web").await;
    let (tls_port, admin) = (free_port(), free_port());
    let g = Gantry::start_with(
        &pki.listener(tls_port, &format!("client_ca = \"{}\"", pki.clients.file)),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[clusters.web]\nbackends = [\"{}\"]\n{ROUTES}",
            up.addr
        ),
    );
    wait_for_port(tls_port);
    wait_for_port(admin);

    // A certificate of the client CA: the consumer and the certificate reach the upstream,
    // in place of the copies the client sent.
    let spoofed = [
        ("x-consumer-name", "admin"),
        ("x-client-cert-subject", "CN=admin"),
        ("x-client-cert-san", "DNS:admin.example"),
        ("x-client-cert-fingerprint", "00"),
    ];
    let resp = get(&pki, tls_port, Some(&acme), "/partners", &spoofed)
        .await
        .expect("acme's certificate is accepted");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let seen = upstream_headers(resp).await;
    assert_eq!(seen["x-consumer-name"], "acme");
    assert_eq!(seen["x-client-cert-subject"], "CN=acme client");
    assert_eq!(
        seen["x-client-cert-san"],
        "DNS:api.acme.example, URI:spiffe://acme/api"
    );
    assert_eq!(
        seen["x-client-cert-fingerprint"],
        hex::encode(Sha256::digest(&acme.der))
    );

    // HTTP/1.1 sees the same certificate; a route without mtls-auth forwards no certificate
    // and no client copy.
    let http1 = pki
        .client(tls_port, Some(&acme))
        .get(format!("https://gw.test:{tls_port}/open"))
        .version(reqwest::Version::HTTP_11)
        .header("x-client-cert-subject", "CN=admin")
        .send()
        .await
        .expect("open route");
    let seen = upstream_headers(http1).await;
    assert!(seen.get("x-client-cert-subject").is_none(), "{seen}");
    assert!(seen.get("x-consumer-name").is_none(), "{seen}");

    // A valid certificate of a subject that is no consumer's.
    let resp = get(&pki, tls_port, Some(&stranger), "/partners", &[])
        .await
        .expect("stranger's certificate is valid");
    let problem = assert_problem(resp, 403, "certificate-not-mapped").await;
    assert_eq!(
        problem["detail"],
        "the client certificate belongs to no known consumer"
    );

    // No certificate, or one of another CA: the handshake is refused, and counted.
    for reason in ["no_client_certificate", "bad_client_certificate"] {
        assert_eq!(failures(admin, tls_port, reason).await, 0, "{reason}");
    }
    assert!(get(&pki, tls_port, None, "/open", &[]).await.is_err());
    assert!(get(&pki, tls_port, Some(&forged), "/open", &[])
        .await
        .is_err());
    for reason in ["no_client_certificate", "bad_client_certificate"] {
        eventually(reason, || async {
            (failures(admin, tls_port, reason).await >= 1).then_some(())
        })
        .await;
    }
    assert_eq!(up.hits(), 2, "refused clients never reach the upstream");
    let log = g.log();
    assert!(
        !log.contains("handshake"),
        "refusals are logged at debug: {log}"
    );
}

#[tokio::test]
async fn optional_client_certificates_leave_the_decision_to_mtls_auth() {
    let pki = Pki::new();
    let acme = pki
        .clients
        .client(pki.path(), "acme", "acme client", &["api.acme.example"]);
    let forged = pki
        .others
        .client(pki.path(), "forged", "acme client", &["api.acme.example"]);
    let up = Upstream::start("web").await;
    let tls_port = free_port();
    let g = Gantry::start_with(
        &pki.listener(
            tls_port,
            &format!(
                "client_ca = \"{}\"\nclient_auth = \"optional\"",
                pki.clients.file
            ),
        ),
        &format!("[clusters.web]\nbackends = [\"{}\"]\n{ROUTES}", up.addr),
    );
    wait_for_port(tls_port);

    let resp = get(&pki, tls_port, None, "/partners", &[])
        .await
        .expect("no certificate is accepted in the handshake");
    let problem = assert_problem(resp, 401, "missing-credentials").await;
    assert_eq!(problem["detail"], "a client certificate is required");

    let resp = get(
        &pki,
        tls_port,
        None,
        "/open",
        &[("x-client-cert-subject", "CN=admin")],
    )
    .await
    .expect("open route without a certificate");
    let seen = upstream_headers(resp).await;
    assert!(seen.get("x-client-cert-subject").is_none(), "{seen}");

    let resp = get(&pki, tls_port, Some(&acme), "/partners", &[])
        .await
        .expect("acme");
    assert_eq!(upstream_headers(resp).await["x-consumer-name"], "acme");

    // An invalid certificate is refused even when none is required.
    assert!(get(&pki, tls_port, Some(&forged), "/open", &[])
        .await
        .is_err());

    // The plain listener has no certificate to offer.
    let resp = g.get("/partners", &[]).await;
    let problem = assert_problem(resp, 401, "missing-credentials").await;
    assert_eq!(
        problem["detail"],
        "a client certificate is required: connect over TLS"
    );
}

#[tokio::test]
async fn a_reload_with_a_new_client_ca_switches_the_clients_accepted() {
    let pki = Pki::new();
    let old = pki
        .clients
        .client(pki.path(), "old", "old", &["api.acme.example"]);
    let new = pki
        .others
        .client(pki.path(), "new", "new", &["api.acme.example"]);
    let up = Upstream::start("web").await;
    let (tls_port, admin) = (free_port(), free_port());
    let body = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"admin-token-0123456789\"\n\
         [clusters.web]\nbackends = [\"{}\"]\n{ROUTES}",
        up.addr
    );
    let with_ca = |ca: &Ca| pki.listener(tls_port, &format!("client_ca = \"{}\"", ca.file));
    let g = Gantry::start_with(&with_ca(&pki.clients), &body);
    wait_for_port(tls_port);
    wait_for_port(admin);
    assert!(accepted(&pki, tls_port, &old).await);
    assert!(!accepted(&pki, tls_port, &new).await);

    g.rewrite_config(&with_ca(&pki.others), &body);
    let reload = crate::common::client()
        .post(format!("http://127.0.0.1:{admin}/reload"))
        .bearer_auth("admin-token-0123456789")
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status(), 200);
    let answer: serde_json::Value = reload.json().await.expect("reload answer");
    assert_eq!(answer["needs_restart"], serde_json::json!([]), "{answer}");
    assert!(
        accepted(&pki, tls_port, &new).await,
        "the new CA's client is accepted"
    );
    assert!(
        !accepted(&pki, tls_port, &old).await,
        "the old CA's client is refused"
    );
}

/// A TLS upstream that requires a client certificate of `ca`: it answers `200 verified` on
/// every path and counts the `/healthz` probes apart.
struct MtlsUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl MtlsUpstream {
    async fn start(server: &Leaf, ca: &Ca) -> MtlsUpstream {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.der().clone()).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.der.clone().into()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let (r, p) = (Arc::clone(&requests), Arc::clone(&probes));
        let server = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, r, p) = (acceptor.clone(), Arc::clone(&r), Arc::clone(&p));
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let counter = match req.uri().path() {
                            "/healthz" => Arc::clone(&p),
                            _ => Arc::clone(&r),
                        };
                        async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"verified"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        MtlsUpstream {
            addr,
            requests,
            probes,
            server,
        }
    }
}

impl Drop for MtlsUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test]
async fn clusters_present_client_certificates_to_backends_and_health_checks() {
    let pki = Pki::new();
    let backend_ca = Ca::new(pki.path(), "backends");
    let backend_cert = backend_ca.issue(
        pki.path(),
        "backend",
        "payments.internal",
        &["payments.internal"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let gantry_client =
        pki.clients
            .client(pki.path(), "gantry-client", "gantry", &["gantry.internal"]);
    let upstream = MtlsUpstream::start(&backend_cert, &pki.clients).await;
    let admin = free_port();
    let cluster = |name: &str, extra: &str| {
        format!(
            "[clusters.{name}]\nbackends = [\"{}\"]\ntls = true\nverify = false\nsni = \"payments.internal\"\n{extra}\n\
             [routes.{name}]\npaths = [\"/{name}\"]\ncluster = \"{name}\"\n",
            upstream.addr
        )
    };
    let identity = format!(
        "client_cert = \"{}\"\nclient_key = \"{}\"",
        gantry_client.cert_file, gantry_client.key_file
    );
    let checked = "[clusters.NAME.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\n";
    let g = Gantry::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}{}{}{}",
        cluster("payments", &identity),
        checked.replace("NAME", "payments"),
        cluster("anonymous", ""),
        cluster("probed", "") + &checked.replace("NAME", "probed"),
    ));
    wait_for_port(admin);

    let resp = g.get("/payments", &[]).await;
    assert_eq!(resp.status(), 200, "{}", g.log());
    assert_eq!(resp.text().await.expect("body"), "verified");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);

    // Without a client certificate the backend refuses the handshake.
    assert_problem(g.get("/anonymous", &[]).await, 502, "upstream-unavailable").await;
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);

    // The health checks of `payments` present the certificate (the backend answers them),
    // those of `probed` do not and mark its backend down.
    eventually("health checks with the certificate pass", || async {
        (upstream.probes.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    let backend = upstream.addr;
    wait_for_metric(
        admin,
        &format!("gantry_upstream_health{{cluster=\"probed\",backend=\"{backend}\"}} 0"),
    )
    .await;
    let metrics = admin_metrics(admin).await;
    assert!(
        metrics.contains(&format!(
            "gantry_upstream_health{{cluster=\"payments\",backend=\"{backend}\"}} 1"
        )),
        "{metrics}"
    );
    assert_eq!(g.get("/payments", &[]).await.status(), 200);
}

#[test]
fn client_certificate_settings_are_checked_at_load() {
    let pki = Pki::new();
    let acme = pki
        .clients
        .client(pki.path(), "acme", "acme client", &["api.acme.example"]);
    let other = pki.clients.client(pki.path(), "other", "other", &["x"]);
    let garbage = pki.path().join("garbage.key");
    std::fs::write(&garbage, "private-key-material-do-not-print\n").expect("write");
    let garbage = garbage.display().to_string();
    let missing = pki.path().join("missing.pem").display().to_string();
    let check = |text: &str| check_config(&format!("[server]\n{text}"));
    let cluster = |lines: &str| {
        format!("[clusters.pay]\nbackends = [\"127.0.0.1:9443\"]\nverify = false\n{lines}\n")
    };
    let identity =
        |cert: &str, key: &str| format!("client_cert = \"{cert}\"\nclient_key = \"{key}\"");
    for (text, complaints) in [
        (
            pki.listener(1, "client_auth = \"optional\""),
            vec!["server.tls[0].client_auth", "only applies with client_ca"],
        ),
        (
            pki.listener(1, &format!("client_ca = \"{missing}\"")),
            vec!["server.tls[0].client_ca", "cannot read CA certificates"],
        ),
        (
            pki.listener(
                1,
                &format!(
                    "client_ca = \"{}\"\nclient_auth = \"sometimes\"",
                    pki.clients.file
                ),
            ),
            vec!["client_auth", "sometimes"],
        ),
        (
            cluster(&identity(&acme.cert_file, &acme.key_file)),
            vec!["clusters.pay.client_cert", "only apply with tls = true"],
        ),
        (
            cluster(&format!("tls = true\nclient_cert = \"{}\"", acme.cert_file)),
            vec!["clusters.pay.client_key", "needs client_key"],
        ),
        (
            cluster(&format!(
                "tls = true\n{}",
                identity(&acme.cert_file, &other.key_file)
            )),
            vec!["clusters.pay.client_key", "does not fit"],
        ),
        (
            cluster(&format!(
                "tls = true\n{}",
                identity(&acme.cert_file, &garbage)
            )),
            vec!["clusters.pay.client_key", "holds no PEM private key"],
        ),
        (
            cluster(&format!(
                "tls = true\n{}",
                identity(&missing, &acme.key_file)
            )),
            vec!["clusters.pay.client_cert", "cannot read certificates"],
        ),
        (
            "[consumers.a]\ncertificate_subjects = [\"api.acme.example\"]\n\
             [consumers.b]\ncertificate_subjects = [\"x\", \"api.acme.example\"]\n"
                .to_string(),
            vec!["consumers.b.certificate_subjects[1]", "consumer `a`"],
        ),
        (
            "[routes.r]\npaths = [\"/\"]\nrespond = {}\n\
             [routes.r.plugins.mtls-auth]\nsubject_claim = \"email\"\n"
                .to_string(),
            vec!["subject_claim", "email"],
        ),
    ] {
        let (ok, out) = check(&text);
        assert!(!ok, "accepted:\n{text}");
        for complaint in complaints {
            assert!(
                out.contains(complaint),
                "`{complaint}` missing from:\n{out}"
            );
        }
        assert!(!out.contains("private-key-material"), "{out}");
    }
    let (ok, out) = check(&format!(
        "{}{}[routes.r]\npaths = [\"/\"]\ncluster = \"pay\"\n",
        pki.listener(1, &format!("client_ca = \"{}\"", pki.clients.file)),
        cluster(&format!(
            "tls = true\n{}",
            identity(&acme.cert_file, &acme.key_file)
        ))
    ));
    assert!(ok, "{out}");
}
