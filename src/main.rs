//! `baby-discord`: reads the configuration, starts the server, and stops it
//! gracefully on SIGINT or SIGTERM (exit status 0).

use std::process::ExitCode;

use baby_discord::config::Config;
use baby_discord::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("baby-discord: {e}");
            return ExitCode::from(2);
        }
    };
    simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .with_utc_timestamps()
        .init()
        .expect("logger is initialised once");
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("Baby Discord instance {} starting", config.instance_id);
    let server = match Server::start(&config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("Baby Discord instance {} ready", config.instance_id);
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    server.shutdown();
    ExitCode::SUCCESS
}
