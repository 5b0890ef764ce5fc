//! Upstreams speaking other protocols: HTTP/2 cleartext (prior knowledge), TLS with a fresh
//! self-signed certificate for `localhost` offering HTTP/2 and HTTP/1.1 by ALPN (both answer
//! `{"version": "HTTP/2.0", "path": ..., "tls": bool}`), and a gRPC server over h2c whose
//! every unary method answers with the request message reversed and `grpc-status: 0`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// A running upstream; stopped on drop.
pub struct ProtocolUpstream {
    pub addr: SocketAddr,
    /// The TLS upstream's self-signed certificate, PEM (a CA file that trusts it).
    pub cert_pem: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ProtocolUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(req: Request<Incoming>, tls: bool) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let json = serde_json::json!({
        "version": format!("{:?}", req.version()),
        "path": req.uri().path(),
        "tls": tls,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("response"))
}

/// Serves `handler` over HTTP/2 cleartext with prior knowledge on a fresh loopback port.
async fn serve_h2c<F, Fut, B>(handler: F) -> ProtocolUpstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, hyper::Error>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            conns.spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
    ProtocolUpstream {
        addr,
        cert_pem: String::new(),
        server,
    }
}

/// `message` in gRPC's length-prefixed framing (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

type GrpcBody = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, hyper::Error>>>,
>;

async fn grpc_answer(req: Request<Incoming>) -> Result<Response<GrpcBody>, hyper::Error> {
    use http_body_util::BodyExt;
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let te_trailers = req.headers().get("te").is_some_and(|v| v == "trailers");
    let body = req.into_body().collect().await?.to_bytes();
    let mut trailers = http::HeaderMap::new();
    let frames = if grpc && te_trailers && body.len() >= 5 {
        let mut message = body[5..].to_vec();
        message.reverse();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        trailers.insert("grpc-message", http::HeaderValue::from_static("reversed"));
        vec![
            Ok(hyper::body::Frame::data(Bytes::from(grpc_frame(&message)))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ]
    } else {
        trailers.insert("grpc-status", http::HeaderValue::from_static("3"));
        let why = format!("grpc={grpc} te={te_trailers} body={}", body.len());
        if let Ok(why) = http::HeaderValue::from_str(&why) {
            trailers.insert("grpc-message", why);
        }
        vec![Ok(hyper::body::Frame::trailers(trailers))]
    };
    Ok(Response::builder()
        .header("content-type", "application/grpc+proto")
        .body(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
        .expect("response"))
}

impl ProtocolUpstream {
    /// A gRPC server over h2c (see the module docs).
    pub async fn grpc() -> ProtocolUpstream {
        serve_h2c(grpc_answer).await
    }

    /// HTTP/2 only, cleartext, prior knowledge.
    pub async fn h2c() -> ProtocolUpstream {
        serve_h2c(|r| answer(r, false)).await
    }

    /// TLS with a self-signed certificate for `localhost`; ALPN `h2` and `http/1.1`.
    pub async fn tls() -> ProtocolUpstream {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert_pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(|r| answer(r, true)))
                        .await;
                });
            }
        });
        ProtocolUpstream {
            addr,
            cert_pem,
            server,
        }
    }
}
