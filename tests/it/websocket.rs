//! WebSocket upgrades through the proxy.

use crate::common::{client, Gantry};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("handshake");
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.expect("echo");
            }
        }
    });
    let g = Gantry::start(&format!(
        "[clusters.ws]\nbackends = [\"{addr}\"]\n[routes.ws]\npaths = [\"/ws\"]\ncluster = \"ws\"\n"
    ));
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", g.port))
        .await
        .expect("websocket handshake through gantry");
    assert!(resp.headers().contains_key("x-request-id"));
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}")))
            .await
            .expect("send");
        let reply = ws.next().await.expect("reply").expect("frame");
        assert_eq!(reply, Message::Text(format!("hello {i}")));
    }
    ws.close(None).await.expect("close");
    drop(client());
    server.abort();
}
