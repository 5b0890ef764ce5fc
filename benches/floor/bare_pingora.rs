//! A bare Pingora reverse proxy (`bare.rs`): the floor under Gantry in the benchmark scripts,
//! what unpatched Pingora costs per request and per connection.
//!
//! `cargo build --release --example bare_pingora`, then
//! `target/release/examples/bare_pingora LISTEN_ADDR UPSTREAM_ADDR` (one worker thread).
//! SIGTERM stops it at once (no grace period).

mod bare;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    bare::server(&listen, &upstream).run_forever();
}
