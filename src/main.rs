//! `baby-discord`: reads the configuration, starts the server, and stops it
//! gracefully on SIGINT or SIGTERM (exit status 0).
//!
//! `baby-discord check` only checks that the configured PostgreSQL and
//! Redis answer, one line each (used by `run-instances.sh`); it exits with
//! status 3 when PostgreSQL answers but the database does not exist, which
//! `baby-discord createdb` creates. `baby-discord seed-unread` fills the
//! configured store with a large history (see `baby_discord::store::seed`).

use std::process::ExitCode;

use baby_discord::config::Config;
use baby_discord::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str = "usage: baby-discord [check | createdb | seed-unread [options]]

Runs the Baby Discord chat server (TCP line protocol and HTTP API).
Configuration comes from environment variables (TCP_PORT, HTTP_PORT,
DATABASE_URL, REDIS_URL, ...): see README.md.

  check     report whether DATABASE_URL and REDIS_URL can be reached, then exit
            (status 3: PostgreSQL answers but the database does not exist)
  createdb  create the database DATABASE_URL names, then exit
  seed-unread [--rooms 100] [--messages 1000000] [--user bench] [--password benchpassword]
            register the account and store that many messages round-robin in rooms
            bench-000…, one in 47 mentioning the account, with its read markers
            half way, in the configured store (for measuring /api/rooms), then exit";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("baby-discord: {e}");
            return ExitCode::from(2);
        }
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => serve(config),
        ["check"] => check(&config),
        ["createdb"] => createdb(&config),
        ["seed-unread", options @ ..] => seed_unread(&config, options),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config) -> ExitCode {
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

/// One line per configured service; exit status 1 if any is unreachable.
fn check(config: &Config) -> ExitCode {
    let mut ok = true;
    let mut missing_database = false;
    match &config.database_url {
        Some(url) => match baby_discord::store::postgres::PostgresStore::open(url) {
            Ok(_) => println!("PostgreSQL (DATABASE_URL): reachable"),
            Err(e) => match baby_discord::store::postgres::missing_database(url) {
                Some(name) => {
                    missing_database = true;
                    println!(
                        "PostgreSQL (DATABASE_URL): reachable, but database '{name}' does not exist: create it with 'createdb {name}' (or 'baby-discord createdb')"
                    );
                }
                None => {
                    ok = false;
                    println!("PostgreSQL (DATABASE_URL): NOT reachable: {e}");
                }
            },
        },
        None => println!("DATABASE_URL is not set: the embedded store under DATA_DIR is used"),
    }
    match &config.redis_url {
        Some(url) => {
            match baby_discord::bus::ping(url) {
                Ok(_) => println!("Redis (REDIS_URL): reachable"),
                Err(e) => {
                    ok = false;
                    println!("Redis (REDIS_URL): NOT reachable: {e}");
                }
            }
        }
        None => println!("REDIS_URL is not set: single instance"),
    }
    if !ok {
        ExitCode::FAILURE
    } else if missing_database {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Fills the configured store for the unread measurement.
fn seed_unread(config: &Config, options: &[&str]) -> ExitCode {
    let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    let plan = match baby_discord::store::seed::SeedPlan::from_args(&options) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("baby-discord seed-unread: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut store = match baby_discord::store::open(config) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("baby-discord: {e}");
            return ExitCode::FAILURE;
        }
    };
    match baby_discord::store::seed::seed_unread(store.as_mut(), &plan) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baby-discord seed-unread: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Creates the database DATABASE_URL names.
fn createdb(config: &Config) -> ExitCode {
    let Some(url) = &config.database_url else {
        eprintln!("baby-discord: DATABASE_URL is not set");
        return ExitCode::from(2);
    };
    match baby_discord::store::postgres::create_database(url) {
        Ok(name) => {
            println!("created database '{name}'");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baby-discord: {e}");
            ExitCode::FAILURE
        }
    }
}
