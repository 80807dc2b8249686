//! `hostile`: misbehaves on purpose, so the host's sandbox can be tested. Not for pipelines.
//!
//! The behaviour is chosen per event by its `after.mode` text column, so one batch can mix
//! good and bad events. Where a mode reports what it saw, it sets the text column `seen`.
//!
//! | `mode`      | what the guest does                                                        |
//! |-------------|----------------------------------------------------------------------------|
//! | `loop`      | loops forever (the host's deadline must stop it)                           |
//! | `alloc`     | allocates 1 GiB and touches every page; a refused allocation aborts: trap  |
//! | `alloc_try` | tries to reserve 1 GiB; refused → error outcome, granted → `seen` = size   |
//! | `panic`     | panics: trap                                                               |
//! | `fs`        | reads /etc/passwd: the error text as an error outcome, or `seen` = bytes   |
//! | `env`       | `seen` = `HOME=<value or error>; vars=<names, comma-separated>`            |
//! | `socket`    | connects to 127.0.0.1:5432: `seen` = the error text, or `connected`        |
//! | `clock`     | `seen` = SystemTime::now() since the epoch as `secs.nanos`                 |
//! | `random`    | `seen` = a u64 from std's randomly seeded `RandomState`                    |
//! | `log`       | logs `hostile: log requested` at info through the `log` import, unchanged |
//! | `stderr`    | writes `hostile: stderr requested` to stderr, unchanged                    |
//! | `error`     | error outcome `hostile: error requested`                                   |
//! | `drop`      | drops the event                                                            |
//! | `dup`       | fans out into two copies of the event                                      |
//! | other/none  | the event, unchanged                                                       |
//!
//! Config: `fail_init=1` makes `init` return an error; `init_mode=panic` or `init_mode=loop`
//! makes `init` trap or hang.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_transform::{log, Config, Event, Outcome, Row, Transform, Value};

const GIB: usize = 1 << 30;

struct Hostile;

impl Transform for Hostile {
    fn init(config: Config) -> Result<Self, String> {
        if config.flag("fail_init") {
            return Err("hostile: fail_init requested".to_string());
        }
        match config.get("init_mode") {
            Some("panic") => panic!("hostile: init panic requested"),
            Some("loop") => spin(),
            _ => {}
        }
        Ok(Hostile)
    }

    fn transform(&mut self, mut event: Event) -> Outcome {
        let mode = event
            .after()
            .and_then(|row| row.get("mode"))
            .and_then(Value::as_str);
        let mode = mode.unwrap_or_default().to_string();
        let seen = match mode.as_str() {
            "loop" => spin(),
            "alloc" => {
                let block = std::hint::black_box(vec![1u8; GIB]);
                let touched: u64 = block.iter().step_by(4096).map(|b| u64::from(*b)).sum();
                format!("allocated 1 GiB, touched {touched} pages")
            }
            "alloc_try" => {
                let mut block: Vec<u8> = Vec::new();
                if let Err(e) = block.try_reserve_exact(GIB) {
                    return Outcome::error(format!("hostile: allocation refused: {e}"));
                }
                block.resize(GIB, 1);
                format!("reserved {} bytes", std::hint::black_box(block).len())
            }
            "panic" => panic!("hostile: panic requested"),
            "fs" => match std::fs::read("/etc/passwd") {
                Ok(bytes) => format!("read {} bytes of /etc/passwd", bytes.len()),
                Err(e) => return Outcome::error(format!("hostile: fs: {e}")),
            },
            "env" => {
                let home = std::env::var("HOME").unwrap_or_else(|e| format!("<{e}>"));
                let names: Vec<String> = std::env::vars_os()
                    .map(|(k, _)| k.to_string_lossy().into_owned())
                    .collect();
                format!("HOME={home}; vars={}", names.join(","))
            }
            "socket" => match std::net::TcpStream::connect("127.0.0.1:5432") {
                Ok(_) => "connected".to_string(),
                Err(e) => e.to_string(),
            },
            "clock" => match SystemTime::now().duration_since(UNIX_EPOCH) {
                Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
                Err(e) => format!("before the epoch: {e}"),
            },
            "random" => {
                let mut hasher = RandomState::new().build_hasher();
                hasher.write_u64(0);
                hasher.finish().to_string()
            }
            "log" => {
                log::info("hostile: log requested");
                return Outcome::one(event);
            }
            "stderr" => {
                let _ = writeln!(std::io::stderr(), "hostile: stderr requested");
                return Outcome::one(event);
            }
            "error" => return Outcome::error("hostile: error requested"),
            "drop" => return Outcome::drop(),
            "dup" => return Outcome::many(vec![event.clone(), event]),
            _ => return Outcome::one(event),
        };
        event.set("seen", Value::text(seen));
        Outcome::one(event)
    }
}

/// Never returns, and cannot be optimised away.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

sluice_transform::export!(Hostile);
