//! `sluice`: one pipeline per process, from PostgreSQL's committed changes to every sink.
//!
//! Exit status: 0 success, 1 runtime failure, 2 bad input (file, flags, envelope).

mod commands;
mod logging;
mod registry;
mod stages;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "PostgreSQL change streams to webhooks, caches, search and Kafka",
    long_about = "PostgreSQL change streams to webhooks, caches, search and Kafka.\n\n\
        One pipeline file describes one pipeline; `sluice run` streams it until SIGINT or \
        SIGTERM. Logs go to stderr (SLUICE_LOG sets the filter, e.g. info or \
        sluice_postgres=debug; SLUICE_LOG_FORMAT=json for JSON lines).\n\n\
        Exit status: 0 success, 1 runtime failure, 2 bad input (file, flags, envelope)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline until SIGINT/SIGTERM; drains and commits on shutdown.
    Run {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Start even though the disk journal was lost after the slot had confirmed changes
        /// only it held: those changes are lost to the sinks that had not received them
        /// (backfill their tables afterwards).
        #[arg(long)]
        accept_journal_gap: bool,
    },
    /// Check the pipeline file; with --connect also the source and the sinks.
    Validate {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Also connect: wal_level, tables, rights, slot, state file, admin port, sinks.
        #[arg(long)]
        connect: bool,
        /// Print the result as one JSON object (errors too, with file, line, column, key).
        #[arg(long)]
        json: bool,
    },
    /// Per sink: committed position, lag, queue, DLQ depth; the slot's state.
    Status {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop the slot and the publication (stops WAL retention) and forget offsets.
    ///
    /// Refuses while the pipeline runs, and while a dead-letter queue holds events unless
    /// --drop-dlq is given. What the role may not drop is printed as SQL for an
    /// administrator.
    Teardown {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Also delete every parked event (otherwise a non-empty DLQ stops the teardown).
        #[arg(long)]
        drop_dlq: bool,
    },
    /// Deliver a sink's events again from an earlier point of the journal (disk journal).
    ///
    /// Only this sink receives them again; the others and the slot are not touched. A
    /// running pipeline applies it within a second, otherwise the next `sluice run` does.
    /// Events in the sink's DLQ are not sent again (replay them).
    Rewind {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// The sink to deliver again.
        #[arg(long)]
        sink: String,
        /// From where: an LSN (every change committed at or after it), an RFC 3339 time
        /// (from the first change committed then), or `oldest` (all the journal keeps).
        #[arg(long, value_name = "LSN|TIME|oldest")]
        to: String,
    },
    /// Wait until sinks have applied a commit (read-your-writes), through the running
    /// pipeline's admin server.
    ///
    /// The token is the application's `SELECT pg_current_wal_insert_lsn()` after its COMMIT.
    /// Exit 0 once every named sink applied every change committed at or before it; 1 when
    /// the time runs out or a change before it is in a sink's DLQ; 2 for bad input.
    Wait {
        /// The pipeline file (YAML); it must have `admin:`.
        pipeline: PathBuf,
        /// A sink to wait for (repeat it for several).
        #[arg(long, required = true)]
        sink: Vec<String>,
        /// The LSN to wait for, e.g. 0/16B3748.
        #[arg(long)]
        lsn: String,
        /// How long to wait at most (at most 60s).
        #[arg(long, default_value = "5s")]
        timeout: String,
        /// Print the admin server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Copy tables' current rows to sinks (`op: read` events) while the stream flows.
    ///
    /// A running pipeline starts it within a second, a stopped one at its next `run`. Only
    /// the named sinks receive the rows; the others go on streaming. Rows are read in key
    /// order in chunks between watermarks in the WAL, so a row copied never overwrites a
    /// newer change. Exit 2 for a table the pipeline does not capture, one without a
    /// primary key, or an unknown sink; with --wait, 1 when a backfill failed or was
    /// cancelled.
    Backfill {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// A sink to copy to (repeat for several; default: every sink).
        #[arg(long)]
        sink: Vec<String>,
        /// A captured table to copy (repeat for several; default: every captured table).
        #[arg(long)]
        table: Vec<String>,
        /// Copy only rows meeting this SQL condition (default: the table's
        /// `source.backfill.tables.<t>.where`, if any).
        #[arg(long = "where", value_name = "SQL")]
        filter: Option<String>,
        /// Follow the progress until every requested backfill ends (when the same backfill
        /// is already under way, follow that one instead of asking again).
        #[arg(long)]
        wait: bool,
        /// Cancel the pending and running backfills (of --table only, when given).
        #[arg(long)]
        cancel: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dead-letter queues: list, show, replay and purge parked events.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// WebAssembly transforms: try one offline.
    #[command(subcommand)]
    Transform(TransformCommand),
    /// Print a shell completion script, e.g. `sluice completions bash > /etc/bash_completion.d/sluice`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
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
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Only this sink's entries.
        #[arg(long)]
        sink: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One entry: the event, the error, the stage, attempts, first and last failure.
    Show {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// An entry id (from `dlq list`) or an event id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send parked events again, through the current transforms and sink configuration.
    Replay {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Only this sink's entries.
        #[arg(long)]
        sink: Option<String>,
        /// Only these entries (entry ids or event ids); repeat for more.
        #[arg(long = "id")]
        ids: Vec<String>,
    },
    /// Delete parked events for good; events held behind them are released.
    Purge {
        /// The pipeline file (YAML).
        pipeline: PathBuf,
        /// Only this sink's entries.
        #[arg(long)]
        sink: Option<String>,
        /// Only these entries (entry ids or event ids); repeat for more.
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
    if let Err(message) = logging::init() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        // Synchronous commands run outside the async runtime: a transform's guest code
        // reaches WASI's blocking calls, which may not run inside one.
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            Ok(())
        }
        Command::Rewind { pipeline, sink, to } => commands::rewind::run(&pipeline, &sink, &to),
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
        command => run_async(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, message) = match failure {
                Failure::Input(message) => (2, message),
                Failure::Runtime(message) => (1, message),
            };
            // An empty message: the command reported the failure itself (`--json`).
            if !message.is_empty() {
                logging::fatal(&message);
            }
            ExitCode::from(code)
        }
    }
}

/// The commands that talk to the network.
fn run_async(command: Command) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match command {
            Command::Run {
                pipeline,
                accept_journal_gap,
            } => commands::run::run(&pipeline, accept_journal_gap).await,
            Command::Validate {
                pipeline,
                connect,
                json,
            } => commands::validate::run(&pipeline, connect, json).await,
            Command::Status { pipeline, json } => commands::status::run(&pipeline, json).await,
            Command::Teardown { pipeline, drop_dlq } => {
                commands::teardown::run(&pipeline, drop_dlq).await
            }
            Command::Wait {
                pipeline,
                sink,
                lsn,
                timeout,
                json,
            } => commands::wait::run(&pipeline, &sink, &lsn, &timeout, json).await,
            Command::Backfill {
                pipeline,
                sink,
                table,
                filter,
                wait,
                cancel,
                json,
            } => {
                commands::backfill::run(commands::backfill::Args {
                    pipeline,
                    sinks: sink,
                    tables: table,
                    filter,
                    wait,
                    cancel,
                    json,
                })
                .await
            }
            Command::Dlq(_)
            | Command::Transform(_)
            | Command::Completions { .. }
            | Command::Rewind { .. } => {
                unreachable!("run synchronously")
            }
        }
    });
    // Do not wait for stray background tasks (catalog connections, HTTP pools).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}
