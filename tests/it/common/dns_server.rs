//! A DNS server run by the test: answers every `A` query with the addresses it is told, with
//! a 1 s TTL, over UDP on an ephemeral loopback port; it can be told to stop answering. It
//! runs on a thread of its own, so it answers while the test thread blocks (waiting for the
//! gateway to start, which resolves through it).

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// What the server answers, changed by the test.
#[derive(Default)]
struct Answers {
    addrs: Mutex<Vec<Ipv4Addr>>,
    silent: AtomicBool,
    queries: AtomicUsize,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    answers: Arc<Answers>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DnsServer {
    /// A server answering `addrs` for every name.
    pub fn start(addrs: &[Ipv4Addr]) -> DnsServer {
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        std_socket.set_nonblocking(true).expect("nonblocking");
        let addr = std_socket.local_addr().expect("addr");
        let answers = Arc::new(Answers::default());
        *answers.addrs.lock().expect("answers") = addrs.to_vec();
        let shared = Arc::clone(&answers);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = async move {
            let socket = UdpSocket::from_std(std_socket).expect("dns socket");
            let mut buf = vec![0u8; 4096];
            loop {
                let received = tokio::select! {
                    r = socket.recv_from(&mut buf) => r,
                    _ = &mut stopped => return,
                };
                let Ok((n, from)) = received else {
                    continue;
                };
                shared.queries.fetch_add(1, Ordering::SeqCst);
                if shared.silent.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.authoritative = true;
                for q in &query.queries {
                    reply.add_query(q.clone());
                    if q.query_type() == RecordType::A {
                        for ip in shared.addrs.lock().expect("answers").iter() {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                1,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        };
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("dns runtime")
                .block_on(serve)
        });
        DnsServer {
            addr,
            answers,
            stop: Some(stop),
        }
    }

    /// Answers `addrs` from now on.
    pub fn answer(&self, addrs: &[Ipv4Addr]) {
        *self.answers.addrs.lock().expect("answers") = addrs.to_vec();
    }

    /// Stops answering (queries are read and dropped), like a dead resolver.
    pub fn go_silent(&self) {
        self.answers.silent.store(true, Ordering::SeqCst);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.answers.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
