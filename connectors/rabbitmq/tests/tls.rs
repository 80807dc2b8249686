//! `amqps://`: TLS with rustls, the broker's certificate checked against the trust store
//! (here `SSL_CERT_FILE`, which this test binary sets for itself, so it runs alone in its
//! process).

mod common;

use std::path::Path;
use std::process::Command;

use common::{change, declare, drain, write};
use lapin::ExchangeKind;
use sluice_rabbitmq::{RabbitMqConfig, RabbitMqSink};
use sluice_runtime::{Op, Sink};
use sluice_testkit::rabbitmq::RabbitMq;

/// Run `openssl` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (it comes with rabbitmq-server)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir` (`<name>.pem`, `<name>.key`).
fn ca(dir: &Path, name: &str) {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let subject = format!("/CN=sluice test {name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", &key, "-out",
            &pem, "-subj", &subject,
        ],
    );
}

/// A server certificate for localhost and 127.0.0.1, signed by the CA `ca`.
fn server_certificate(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_publishes_over_tls_to_a_broker_whose_certificate_is_trusted() {
    let certs = sluice_testkit::scratch_dir("rabbitmq-tls");
    ca(&certs, "ca");
    ca(&certs, "other");
    server_certificate(&certs, "ca");
    let tls_port = sluice_testkit::free_port();
    let file = |name: &str| certs.join(name).display().to_string();
    let rabbit = RabbitMq::start_with(&format!(
        "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false",
        file("ca.pem"),
        file("server.pem"),
        file("server.key"),
    ));
    declare(&rabbit, "events", ExchangeKind::Topic, &[("all", "#")]).await;
    let config = || {
        let mut config = RabbitMqConfig::new(
            format!("amqps://guest:guest@localhost:{tls_port}/%2f"),
            "events",
        );
        config.timeout = std::time::Duration::from_secs(5);
        config
    };

    // A certificate from a CA the client does not trust: refused, and said so.
    std::env::set_var("SSL_CERT_FILE", certs.join("other.pem"));
    let e = RabbitMqSink::new(config())
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(
        e.starts_with(&format!(
            "cannot connect to rabbitmq at localhost:{tls_port}"
        )),
        "{e}"
    );
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    std::env::set_var("SSL_CERT_FILE", certs.join("ca.pem"));
    let mut sink = RabbitMqSink::new(config()).unwrap();
    sink.check().await.expect("trusted");
    let batch = vec![change("items", Op::Insert, 0x100, 0, 1, 1)];
    assert_eq!(write(&mut sink, &batch).await, ["delivered"]);
    assert_eq!(drain(&rabbit, "all").await[0].id(), batch[0].id());
    let _ = std::fs::remove_dir_all(&certs);
}
