//! The `sse-fanout` binary: parse settings (exit 2 on a bad one), start
//! logging, bind, and hand over to [`sse_fanout::run`].

use std::process::ExitCode;

use sse_fanout::config::{Command, Config};
use tokio_util::sync::CancellationToken;

/// `--features mimalloc`: see BENCHMARKS.md "Allocator".
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--features jemalloc`: see BENCHMARKS.md "Allocator".
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Config::from_env() {
        Ok(cli) => cli,
        Err(Ok(clap_err)) => clap_err.exit(), // --help/--version exit 0, usage errors 2
        Err(Err(config_err)) => {
            eprintln!("sse-fanout: {config_err}");
            return ExitCode::from(2);
        }
    };
    let config = cli.config;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("sse-fanout: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck) = cli.command {
        return runtime.block_on(sse_fanout::server::healthcheck(config.port));
    }
    sse_fanout::telemetry::init(config.log_format);
    runtime.block_on(async move {
        let addr = std::net::SocketAddr::new(config.host, config.port);
        let listener = match sse_fanout::server::bind(addr) {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("sse-fanout: cannot listen on {addr}: {err}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(sse_fanout::shutdown::signal(shutdown.clone()));
        match sse_fanout::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("sse-fanout: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}
