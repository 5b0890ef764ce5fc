//! The `gantry` command: parse arguments, load the configuration, run or check it.
#![forbid(unsafe_code)]

use clap::Parser;
use gantry::server::{self, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gantry: an API gateway and edge proxy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "conf", default_value = "conf/gantry.toml")]
    conf: PathBuf,
    /// Check the configuration, print `configuration ok` or every error, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (see server.pid_file and server.error_log).
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Take over the listeners of a running instance (graceful binary upgrade).
    #[arg(short = 'u', long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match gantry::config::load(&cli.conf) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!("configuration ok: {}", cli.conf.display());
        return ExitCode::SUCCESS;
    }
    log::info!(
        "gantry {} serving {} routes, {} clusters on {:?}",
        env!("CARGO_PKG_VERSION"),
        config.router.len(),
        config.clusters.len(),
        config.server.listen
    );
    let opts = RunOptions {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    match server::build(config, cli.conf, opts) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
