//! What a guest can touch: the per-instance store state.
//!
//! WASI is linked because Rust guests (and most others) import `wasi:cli` and `wasi:io` for
//! their standard library, but every capability is empty: no preopened directories, no
//! environment, no arguments, no network (sockets and name lookups are denied), stdin
//! closed. Clocks and randomness are deterministic so that the same input gives the same
//! output on a replay: the wall clock reads the Unix epoch, the monotonic clock never moves
//! (a sleep returns at once), and both random generators are seeded identically for every
//! instance. Standard output and error are captured and forwarded to our logs.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::AsyncWrite;
use wasmtime::component::{HasData, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::bindings::sluice::transform::log;

/// The seed of every instance's random generators: fixed, so replays agree.
const RANDOM_SEED: u64 = 0x51_1ce0_c0ff_ee00;

/// Guest output kept per call and stream; the rest is counted and dropped.
const CAPTURE_LIMIT: usize = 64 << 10;

/// At most this many bytes of one guest log message reach our logs.
const LOG_MESSAGE_LIMIT: usize = 4 << 10;

/// At most this many guest log messages per call reach our logs; the rest are counted.
const LOG_CALLS_LIMIT: u32 = 1000;

/// The store state of one instance.
pub(crate) struct Sandbox {
    pub(crate) name: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limits,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    /// Guest log messages in the current call, and how many of them were dropped.
    logged: u32,
    logs_dropped: u32,
}

impl Sandbox {
    pub(crate) fn new(name: Arc<str>, memory: u64) -> Self {
        let stdout = Captured::default();
        let stderr = Captured::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(EpochClock)
            .monotonic_clock(FrozenClock)
            .secure_random(StdRng::seed_from_u64(RANDOM_SEED))
            .insecure_random(StdRng::seed_from_u64(RANDOM_SEED.rotate_left(17)))
            .insecure_random_seed(u128::from(RANDOM_SEED))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        Sandbox {
            name,
            wasi,
            table: ResourceTable::new(),
            limits: Limits::new(memory),
            stdout,
            stderr,
            logged: 0,
            logs_dropped: 0,
        }
    }

    /// Forward what the guest wrote on stdout and stderr during the last call to our logs;
    /// returns its stderr (a panic message, for the event's error).
    pub(crate) fn forward_output(&mut self) -> String {
        let name = &*self.name;
        let shown =
            |l: &&str| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE");
        let (out, out_dropped) = self.stdout.take();
        for line in String::from_utf8_lossy(&out).lines().filter(shown) {
            tracing::info!(target: "transform", transform = name, stream = "stdout", "{line}");
        }
        let (err, err_dropped) = self.stderr.take();
        let err = String::from_utf8_lossy(&err).into_owned();
        for line in err.lines().filter(shown) {
            tracing::warn!(target: "transform", transform = name, stream = "stderr", "{line}");
        }
        if self.logs_dropped > 0 {
            tracing::warn!(
                target: "transform",
                transform = name,
                dropped = self.logs_dropped,
                "The transform logged more than {LOG_CALLS_LIMIT} messages in one call; the rest were dropped"
            );
        }
        self.logged = 0;
        self.logs_dropped = 0;
        if out_dropped + err_dropped > 0 {
            tracing::warn!(
                target: "transform",
                transform = name,
                dropped = out_dropped + err_dropped,
                "The transform wrote more than {CAPTURE_LIMIT} bytes in one call; the rest was dropped"
            );
        }
        err
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Link everything a transformer may import: WASI 0.2 (empty context, frozen monotonic
/// clock) and `sluice:transform/log`.
pub(crate) fn link(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // Replace WASI's monotonic clock: its subscriptions sleep in real time, and a host call
    // that blocks cannot be interrupted by the epoch deadline.
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<Sandbox, Frozen<'static>>(linker, |s| Frozen(&mut s.table))?;
    linker.allow_shadowing(false);
    log::add_to_linker::<Sandbox, HasSelf<Sandbox>>(linker, |s| s)?;
    Ok(())
}

impl log::Host for Sandbox {
    fn log(&mut self, level: log::Level, message: String) {
        if self.logged >= LOG_CALLS_LIMIT {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return;
        }
        self.logged += 1;
        let name = &*self.name;
        let message = truncate(&message, LOG_MESSAGE_LIMIT);
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "transform", transform = name, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "transform", transform = name, "{message}")
            }
            log::Level::Info => tracing::info!(target: "transform", transform = name, "{message}"),
            log::Level::Warn => tracing::warn!(target: "transform", transform = name, "{message}"),
            log::Level::Error => {
                tracing::error!(target: "transform", transform = name, "{message}")
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Memory, table and instance caps. The memory cap is on the instance's total: a component
/// may have several linear memories (adapters, other languages' runtimes), and all of them
/// together must fit. Remembers whether a growth was refused, so that the trap that follows
/// reads as an out-of-memory, not a bug.
pub(crate) struct Limits {
    inner: StoreLimits,
    cap: usize,
    /// The bytes of every linear memory of the instance, together.
    used: usize,
    /// The last growth allowed, undone if the growth then fails.
    pending: usize,
    pub(crate) memory_refused: bool,
}

impl Limits {
    fn new(memory: u64) -> Self {
        let cap = usize::try_from(memory).unwrap_or(usize::MAX);
        Limits {
            inner: StoreLimitsBuilder::new()
                .memory_size(cap)
                // A component is a handful of core instances (the guest, its adapters).
                .instances(64)
                .memories(16)
                .tables(64)
                .table_elements(1 << 20)
                .trap_on_grow_failure(true)
                .build(),
            cap,
            used: 0,
            pending: 0,
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.cap || maximum.is_some_and(|max| desired > max) {
            self.memory_refused = true;
            // A refused growth traps instead of returning -1: a guest that ignores the
            // failure must not go on with a null pointer.
            wasmtime::bail!(
                "memory growth to {desired} bytes refused: the instance would use {total} bytes, \
                 its cap is {}",
                self.cap
            );
        }
        self.pending = desired.saturating_sub(current);
        self.used = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used -= std::mem::take(&mut self.pending);
        self.memory_refused = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// `wasi:clocks/wall-clock`: always the Unix epoch.
struct EpochClock;

impl HostWallClock for EpochClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// `wasi:clocks/monotonic-clock` through the WASI context: never moves.
struct FrozenClock;

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}

/// The linked `wasi:clocks/monotonic-clock`: time stands still, so every subscription is
/// ready at once and a sleep returns immediately.
struct Frozen<'a>(&'a mut ResourceTable);

impl HasData for Frozen<'static> {
    type Data<'a> = Frozen<'a>;
}

impl monotonic_clock::Host for Frozen<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(0)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        _when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        ready(self.0)
    }

    fn subscribe_duration(
        &mut self,
        _duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        ready(self.0)
    }
}

fn ready(table: &mut ResourceTable) -> wasmtime::Result<Resource<DynPollable>> {
    let ready = table.push(Ready)?;
    wasmtime_wasi::p2::subscribe(table, ready)
}

/// A pollable that is always ready.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// A guest's stdout or stderr, kept in memory until the host forwards it after a call.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Capture>>);

#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    dropped: usize,
}

impl Captured {
    /// The bytes written since the last `take`, and how many were dropped past the limit.
    fn take(&self) -> (Vec<u8>, usize) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if c.bytes.is_empty() && c.dropped == 0 {
            return (Vec::new(), 0);
        }
        let dropped = std::mem::take(&mut c.dropped);
        (std::mem::take(&mut c.bytes), dropped)
    }

    fn append(&self, bytes: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = CAPTURE_LIMIT.saturating_sub(c.bytes.len());
        let kept = bytes.len().min(room);
        c.bytes.extend_from_slice(&bytes[..kept]);
        c.dropped += bytes.len() - kept;
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Captured {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: what does not fit is dropped, not blocked on.
        Ok(CAPTURE_LIMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_cap_is_on_all_memories_together() {
        let mut limits = Limits::new(64 << 20);
        assert!(limits.memory_growing(0, 40 * MIB, None).unwrap());
        assert!(limits.memory_growing(40 * MIB, 50 * MIB, None).unwrap());
        assert!(!limits.memory_refused);
        // A second memory: alone it fits, with the first it does not.
        let err = limits.memory_growing(0, 20 * MIB, None).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(limits.memory_refused);
        assert!(limits.memory_growing(0, 14 * MIB, None).unwrap());
        // A growth that fails after being allowed is given back.
        assert!(limits
            .memory_growing(14 * MIB, 14 * MIB, Some(20 * MIB))
            .unwrap());
        assert!(
            limits.memory_growing(0, MIB, Some(0)).is_err(),
            "past the memory's own maximum"
        );
    }

    #[test]
    fn captured_output_is_bounded_and_taken_once() {
        let out = Captured::default();
        out.append(b"hello\n");
        out.append(&vec![b'x'; CAPTURE_LIMIT]);
        let (bytes, dropped) = out.take();
        assert_eq!(bytes.len(), CAPTURE_LIMIT);
        assert!(bytes.starts_with(b"hello\n"));
        assert_eq!(dropped, 6);
        assert_eq!(out.take(), (Vec::new(), 0));
    }
}
