//! One request and its answer, exchanged with a backend outside Pingora's proxy loop: the
//! gateway's own upstream calls (`aggregate` calls, mirrored requests) over a pooled
//! connection of Pingora's [`Connector`].
//!
//! Reads and writes are bounded by the peer's read and write timeouts, and the wait for the
//! response header by its `response_header_not_after` when set. A connection goes back to the
//! pool only after a complete exchange.

use super::RetryReason;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;

/// Where an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No connection to the backend.
    Connect,
    /// While the request (header or body) was written.
    Request,
    /// While waiting for the response header.
    Answer,
    /// While the response body was read.
    Body,
    /// The body sink refused more of the response body.
    BodyRefused,
}

/// Why an exchange failed: where, and the retry condition it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeError {
    /// Where it failed.
    pub stage: Stage,
    /// The retry condition it is (a timeout, a reset or a connect failure).
    pub reason: RetryReason,
}

impl ExchangeError {
    fn at(stage: Stage) -> impl Fn(Box<pingora::Error>) -> ExchangeError {
        move |e| ExchangeError {
            stage,
            reason: match e.etype() {
                pingora::ErrorType::ReadTimedout | pingora::ErrorType::WriteTimedout => {
                    RetryReason::Timeout
                }
                _ => RetryReason::Reset,
            },
        }
    }
}

/// Sends `req` (with `body`, when there is one) to `peer` and reads the final response
/// (informational ones skipped). Each chunk of the response body goes to `sink`, which
/// returns false to refuse the rest (the connection is then closed, not pooled).
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<Bytes>,
    mut sink: impl FnMut(Bytes) -> bool,
) -> Result<ResponseHeader, ExchangeError> {
    let (mut session, _reused) =
        connector
            .get_http_session(peer)
            .await
            .map_err(|_| ExchangeError {
                stage: Stage::Connect,
                reason: RetryReason::ConnectFailure,
            })?;
    session.set_read_timeout(peer.options.read_timeout);
    session.set_write_timeout(peer.options.write_timeout);
    let request_failed = ExchangeError::at(Stage::Request);
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(&request_failed)?;
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        session
            .write_request_body(body, true)
            .await
            .map_err(&request_failed)?;
    }
    session
        .finish_request_body()
        .await
        .map_err(&request_failed)?;
    // Skip informational answers (100, 103 Early Hints) to the final one.
    loop {
        session
            .read_response_header()
            .await
            .map_err(ExchangeError::at(Stage::Answer))?;
        let informational = session
            .response_header()
            .is_some_and(|r| r.status.is_informational());
        if !informational {
            break;
        }
    }
    let Some(resp) = session.response_header().cloned() else {
        return Err(ExchangeError {
            stage: Stage::Answer,
            reason: RetryReason::Reset,
        });
    };
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(ExchangeError::at(Stage::Body))?
    {
        if !sink(chunk) {
            return Err(ExchangeError {
                stage: Stage::BodyRefused,
                reason: RetryReason::Reset,
            });
        }
    }
    connector
        .release_http_session(session, peer, peer.options.idle_timeout)
        .await;
    Ok(resp)
}
