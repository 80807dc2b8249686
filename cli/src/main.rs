//! `sluice`: one pipeline per process, from PostgreSQL's committed changes to every sink.
//!
//! Exit status: 0 success, 1 runtime failure, 2 bad input (file, flags, envelope).

mod commands;
mod logging;
mod registry;
mod stages;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "PostgreSQL change streams to webhooks, caches, search and Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline until SIGINT/SIGTERM; drains and commits on shutdown.
    Run { pipeline: PathBuf },
    /// Check the pipeline file; with --connect also PostgreSQL and the sinks.
    Validate {
        pipeline: PathBuf,
        /// Also connect: wal_level, tables, replication rights, sinks.
        #[arg(long)]
        connect: bool,
    },
    /// Per sink: committed position, lag, queue; the slot's state.
    Status {
        pipeline: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Drop the slot and the publication (stops WAL retention) and forget offsets.
    Teardown { pipeline: PathBuf },
    /// Dead-letter queues: list, show, replay and purge parked events.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// WebAssembly transforms: try one offline.
    #[command(subcommand)]
    Transform(TransformCommand),
}

#[derive(Subcommand)]
enum TransformCommand {
    /// Run envelopes (JSON Lines) through a transform and print the results as JSON Lines.
    ///
    /// Reads one envelope per line from --input (default stdin); every line is parsed
    /// before anything runs. Prints each output event on stdout, one envelope per line, and
    /// each failed event on stderr as `line N: <kind>: <message>` (kind: error, trap,
    /// timeout, out_of_memory).
    ///
    /// Exit status: 0 when every event succeeded; 1 when any event failed; 2 for bad input
    /// (a malformed line, named by its number; a bad flag; a file that is not a
    /// sluice:transform@0.1.0 component; an `init` that fails).
    Test {
        /// The component (.wasm) to run.
        wasm: PathBuf,
        /// A config entry handed to the transform's `init`; repeat for more.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The envelopes, one JSON object per line (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Time budget per batch.
        #[arg(long, default_value = "1s")]
        timeout: String,
        /// Memory cap of the instance, e.g. 64MiB, 128MB, 1GiB.
        #[arg(long, default_value = "64MiB")]
        memory: String,
        /// Events per call to the transform.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Parked events, per sink.
    List {
        pipeline: PathBuf,
        #[arg(long)]
        sink: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One entry: the event, the error, the stage, attempts, first and last failure.
    Show {
        pipeline: PathBuf,
        /// An entry id (from `dlq list`) or an event id.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send parked events again, through the sink's current configuration.
    Replay {
        pipeline: PathBuf,
        #[arg(long)]
        sink: Option<String>,
        #[arg(long = "id")]
        ids: Vec<String>,
    },
    /// Delete parked events for good; events held behind them are released.
    Purge {
        pipeline: PathBuf,
        #[arg(long)]
        sink: Option<String>,
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Purge every entry (needed when neither --sink nor --id is given).
        #[arg(long)]
        all: bool,
    },
}

/// A failure with the exit status it calls for.
pub enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// Runtime failure: exit 1.
    Runtime(String),
}

impl From<sluice_runtime::config::ConfigError> for Failure {
    fn from(e: sluice_runtime::config::ConfigError) -> Self {
        Failure::Input(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { pipeline } => commands::run::run(&pipeline).await,
            Command::Validate { pipeline, connect } => {
                commands::validate::run(&pipeline, connect).await
            }
            Command::Status { pipeline, json } => commands::status::run(&pipeline, json).await,
            Command::Teardown { pipeline } => commands::teardown::run(&pipeline).await,
            Command::Dlq(dlq) => {
                use commands::dlq::{self, Selection};
                match dlq {
                    DlqCommand::List {
                        pipeline,
                        sink,
                        json,
                    } => dlq::list(&pipeline, Selection { sink, ids: vec![] }, json),
                    DlqCommand::Show { pipeline, id, json } => dlq::show(&pipeline, id, json),
                    DlqCommand::Replay {
                        pipeline,
                        sink,
                        ids,
                    } => dlq::replay(&pipeline, Selection { sink, ids }),
                    DlqCommand::Purge {
                        pipeline,
                        sink,
                        ids,
                        all,
                    } => dlq::purge(&pipeline, Selection { sink, ids }, all),
                }
            }
            Command::Transform(TransformCommand::Test {
                wasm,
                config,
                input,
                timeout,
                memory,
                batch,
            }) => commands::transform::test(commands::transform::TestArgs {
                wasm,
                config,
                input,
                timeout,
                memory,
                batch: batch as usize,
            }),
        }
    });
    // Do not wait for stray background tasks (catalog connections, HTTP pools).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}
