//! Response compression per route: negotiated from Accept-Encoding among the route's codings,
//! skipped for types that do not compress.

use crate::common::{Gantry, Upstream};
use std::io::Read;

const TEXT: &str = "the quick brown fox jumps over the lazy dog; ";

fn decode(encoding: &str, body: &[u8]) -> String {
    let mut out = String::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_string(&mut out)
                .expect("gzip");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_string(&mut out)
                .expect("brotli");
        }
        "zstd" => out = String::from_utf8(zstd::decode_all(body).expect("zstd")).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

#[tokio::test]
async fn responses_are_compressed_as_negotiated_for_compressible_types() {
    let up = Upstream::start("up").await;
    let text = TEXT.repeat(40);
    let g = Gantry::start(&format!(
        "[clusters.c]\nbackends = [\"{}\"]\n\
         [routes.text]\npaths = [\"/text\"]\ncompress = [\"br\", \"gzip\", \"zstd\"]\n\
         respond = {{ content_type = \"text/plain\", body = \"{text}\" }}\n\
         [routes.png]\npaths = [\"/png\"]\ncompress = [\"br\", \"gzip\", \"zstd\"]\n\
         respond = {{ content_type = \"image/png\", body = \"{text}\" }}\n\
         [routes.api]\npaths = [\"/api\"]\ncluster = \"c\"\ncompress = [\"gzip\"]\n",
        up.addr
    ));
    for encoding in ["gzip", "zstd", "br"] {
        let resp = g.get("/text", &[("accept-encoding", encoding)]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-encoding"], encoding);
        assert!(resp.headers()["vary"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding"));
        let body = resp.bytes().await.unwrap();
        assert!(
            body.len() < text.len() / 4,
            "{encoding}: {} bytes",
            body.len()
        );
        assert_eq!(decode(encoding, &body), text);
    }
    // No Accept-Encoding, or a type that does not compress: sent as is.
    let plain = g.get("/text", &[]).await;
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.text().await.unwrap(), text);
    let png = g.get("/png", &[("accept-encoding", "gzip")]).await;
    assert!(png.headers().get("content-encoding").is_none());
    assert_eq!(png.bytes().await.unwrap().len(), text.len());

    // A proxied JSON response, on a route offering gzip only: a client preferring br gets gzip,
    // a client accepting only br gets the body as is.
    let api = g.get("/api", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(api.headers()["content-encoding"], "gzip");
    let json: serde_json::Value =
        serde_json::from_str(&decode("gzip", &api.bytes().await.unwrap())).unwrap();
    assert_eq!(json["upstream"], "up");
    let br_only = g.get("/api", &[("accept-encoding", "br")]).await;
    assert!(br_only.headers().get("content-encoding").is_none());
    assert!(br_only.json::<serde_json::Value>().await.is_ok());
}
