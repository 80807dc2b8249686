//! A connection that died without the sink noticing (a broker restart behind a load
//! balancer, a NAT that forgot the flow): the batch that finds it dead is published again,
//! once, on a new connection, and delivered in the same call.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{change, declare, drain, write, Received};
use lapin::ExchangeKind;
use sluice_rabbitmq::{RabbitMqConfig, RabbitMqSink};
use sluice_runtime::Op;
use sluice_testkit::rabbitmq::RabbitMq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of the broker that can sever its connections silently: the broker's
/// side is dropped at once, the client's only when it next sends something, so the client
/// learns of it only by writing.
struct Proxy {
    port: u16,
    /// Connections accepted before the current generation are severed.
    generation: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let born = current.load(Ordering::SeqCst);
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(pipe(client, broker, born, current.clone()));
            }
        });
        Proxy { port, generation }
    }

    /// Sever every connection open now.
    fn sever(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Forward both ways until either side closes or the connection is severed.
async fn pipe(client: TcpStream, broker: TcpStream, born: u64, generation: Arc<AtomicU64>) {
    let alive = move || generation.load(Ordering::SeqCst) == born;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let alive_up = alive.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Severed: what the client sends now goes nowhere, and its socket closes.
            if !alive_up() || broker_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match broker_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !alive() {
                // Keep the client's socket open, and silent, until it writes.
                std::future::pending::<()>().await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // The first direction to end ends the connection: both sockets are dropped.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_found_dead_is_replaced_within_the_batch() {
    let rabbit = RabbitMq::start();
    declare(&rabbit, "events", ExchangeKind::Topic, &[("all", "#")]).await;
    let proxy = Proxy::start(rabbit.port).await;
    let mut config = RabbitMqConfig::new(
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
        "events",
    );
    config.timeout = std::time::Duration::from_secs(5);
    let mut sink = RabbitMqSink::new(config).unwrap();
    let first: Vec<_> = (0..3)
        .map(|i| change("items", Op::Insert, 0x100, i, i.into(), 1))
        .collect();
    assert_eq!(write(&mut sink, &first).await, ["delivered"; 3]);

    proxy.sever();
    let second: Vec<_> = (0..3)
        .map(|i| change("items", Op::Update, 0x200, i, i.into(), 2))
        .collect();
    assert_eq!(
        write(&mut sink, &second).await,
        ["delivered"; 3],
        "published again on a new connection, in the same call"
    );

    // What went out on the dead connection never reached the broker: each message once.
    let ids: Vec<String> = drain(&rabbit, "all")
        .await
        .iter()
        .map(Received::id)
        .collect();
    let expected: Vec<String> = first.iter().chain(&second).map(|e| e.id()).collect();
    assert_eq!(ids, expected);
}
