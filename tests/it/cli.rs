//! `gantry -t`: shipped configs pass, broken ones list every problem with its line.

use crate::common::{check_config, check_config_file};

#[test]
fn every_shipped_config_passes_the_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut files = vec![root.join("gantry.toml")];
    for entry in std::fs::read_dir(root.join("examples")).expect("conf/examples") {
        files.push(entry.expect("entry").path());
    }
    for file in files {
        let (ok, out) = check_config_file(file.clone());
        assert!(ok, "{} failed:\n{out}", file.display());
        assert!(out.contains("configuration ok"), "{out}");
    }
}

#[test]
fn broken_config_reports_every_error_with_line_and_fix() {
    let text = r#"[server]
listen = ["127.0.0.1:99999"]
treads = 2

[clusters.users]
balancer = "round_robbin"
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 0 }]
connect_timeout = "soon"

[routes.users]
paths = ["users"]
methods = ["get"]
clsuter = "users"

[routes.orders]
paths = ["/orders"]
cluster = "user"
"#;
    let (ok, out) = check_config(text);
    assert!(!ok, "broken config passed:\n{out}");
    let expect = [
        (":2:11: `server.listen[0]`", "not an IP:port"),
        (":3:1: `server.treads`", "did you mean `threads`?"),
        (
            ":6:12: `clusters.users.balancer`",
            "did you mean `round_robin`?",
        ),
        (
            ":7:31: `clusters.users.backends[1]`",
            "weight must be between 1 and 1000",
        ),
        (
            ":8:19: `clusters.users.connect_timeout`",
            "invalid duration `soon`",
        ),
        (":11:10: `routes.users.paths[0]`", "must start with `/`"),
        (":12:12: `routes.users.methods[0]`", "must be upper case"),
        (":13:1: `routes.users.clsuter`", "did you mean `cluster`?"),
        (":17:11: `routes.orders.cluster`", "did you mean `users`?"),
    ];
    for (position, text) in expect {
        let line = out
            .lines()
            .find(|l| l.contains(position))
            .unwrap_or_else(|| panic!("no error at {position} in:\n{out}"));
        let block_start = out.find(line).expect("line");
        let block = &out[block_start..];
        let next = block[1..].find("error:").map_or(block.len(), |i| i + 1);
        assert!(
            block[..next].contains(text),
            "{position}: expected `{text}` in:\n{}",
            &block[..next]
        );
    }
    assert!(out.contains("errors in configuration"));
}

#[test]
fn syntax_errors_and_missing_files_are_reported() {
    let (ok, out) = check_config("[routes.a\npaths = [\"/\"]\n");
    assert!(!ok);
    assert!(out.contains(":1:") && out.contains("TOML syntax"), "{out}");
    let (ok, out) = check_config_file("/nonexistent/gantry.toml".into());
    assert!(!ok);
    assert!(
        out.contains("/nonexistent/gantry.toml") && out.contains("cannot read"),
        "{out}"
    );
}
