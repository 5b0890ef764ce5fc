//! Response compression (`compress` on a route): Pingora's compression context, negotiated per
//! request among the route's codings, in a downstream module that also ends brotli streams.
//!
//! Pingora 0.9's brotli encoder only flushes at the end of a body and never writes the final
//! (`ISLAST`) meta-block, so strict decoders reject its output as truncated. After a flush the
//! stream is byte-aligned, so the missing end is one byte: `ISLAST = 1, ISLASTEMPTY = 1`
//! (`0x03`). This module appends it when a brotli body ends.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::protocols::http::compression::{Algorithm, ResponseCompressionCtx};
use pingora::Result;
use std::ops::{Deref, DerefMut};

/// The end of a byte-aligned brotli stream: an empty last meta-block.
const BROTLI_END: u8 = 0x03;

/// The per-request compression state.
pub struct Compression {
    ctx: ResponseCompressionCtx,
    /// The body has ended (and a brotli stream got its end).
    finished: bool,
}

impl Deref for Compression {
    type Target = ResponseCompressionCtx;

    fn deref(&self) -> &Self::Target {
        &self.ctx
    }
}

impl DerefMut for Compression {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.ctx
    }
}

impl Compression {
    /// Turns compression on for this request: `offered` codings, most preferred first,
    /// negotiated with the client's `Accept-Encoding` (only offered codings count, in the
    /// client's order).
    pub fn enable(&mut self, req: &RequestHeader, offered: &[Algorithm]) {
        let accepted: Vec<&str> = req
            .headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|coding| {
                let name = coding.split(';').next().unwrap_or_default().trim();
                offered.contains(&Algorithm::from(name))
            })
            .collect();
        if accepted.is_empty() {
            return;
        }
        let Ok(mut negotiated) = RequestHeader::build("GET", b"/", Some(1)) else {
            return;
        };
        if negotiated
            .insert_header(header::ACCEPT_ENCODING, accepted.join(", "))
            .is_err()
        {
            return;
        }
        for algorithm in offered {
            self.ctx
                .adjust_algorithm_level(*algorithm, level(*algorithm));
        }
        self.ctx.request_filter(&negotiated);
    }

    fn brotli(&self) -> bool {
        matches!(self.ctx.get_info(), Some(("brotli", ..)))
    }

    /// The body's last compressed bytes, with the brotli end when needed.
    fn finish(&mut self, last: Option<Bytes>) -> Option<Bytes> {
        self.finished = true;
        if !self.brotli() {
            return last;
        }
        let mut out = BytesMut::from(last.unwrap_or_default().as_ref());
        out.extend_from_slice(&[BROTLI_END]);
        Some(out.freeze())
    }
}

/// Levels that trade little speed for most of the size: gzip 6, brotli 5, zstd 3.
fn level(algorithm: Algorithm) -> u32 {
    match algorithm {
        Algorithm::Gzip => 6,
        Algorithm::Brotli => 5,
        _ => 3,
    }
}

#[async_trait]
impl HttpModule for Compression {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> Result<()> {
        self.ctx.response_header_filter(resp, end_of_stream);
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        if self.finished || !self.ctx.is_enabled() {
            return Ok(());
        }
        let compressed = self.ctx.response_body_filter(body.as_ref(), end_of_stream);
        let compressed = if end_of_stream {
            self.finish(compressed)
        } else {
            compressed
        };
        if compressed.is_some() {
            *body = compressed;
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> Result<Option<Bytes>> {
        if self.finished || !self.ctx.is_enabled() {
            return Ok(None);
        }
        let last = self.ctx.response_body_filter(None, true);
        Ok(self.finish(last))
    }
}

/// Builds [`Compression`], off (level 0) until a route enables it for its request.
pub struct CompressionBuilder;

impl HttpModuleBuilder for CompressionBuilder {
    fn init(&self) -> Module {
        Box::new(Compression {
            ctx: ResponseCompressionCtx::new(0, false, false),
            finished: false,
        })
    }

    fn order(&self) -> i16 {
        i16::MIN / 2
    }
}
