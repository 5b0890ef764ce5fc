//! An upstream that keeps every request it receives (what a mirror or a trace collector saw),
//! answering `200 shadow`, or what its [`Faults`] say: another status, a hang.

use super::Faults;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The upstream.
pub struct Recorder {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Faults::default());
        let (record, faulty) = (Arc::clone(&seen), Arc::clone(&faults));
        let server = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (record, faults) = (Arc::clone(&record), Arc::clone(&faulty));
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (record, faults) = (Arc::clone(&record), Arc::clone(&faults));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            if faults.hang.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            record.lock().expect("record").push(Recorded {
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from_static(b"shadow")));
                            let status = faults.status.load(Ordering::SeqCst);
                            if status != 0 {
                                *resp.status_mut() =
                                    http::StatusCode::from_u16(status).expect("a status");
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            faults,
            seen,
            server,
        }
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}
