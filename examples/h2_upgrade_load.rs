//! HTTP/2 clients for perf/upgrade.py: `--clients` connections (h2c, or h2 over TLS with `--tls`),
//! each sending GETs one stream after another at `--rate` per second in all, until standard input
//! closes. A stream the server refused unprocessed (above the last stream id of its GOAWAY, or reset
//! with REFUSED_STREAM) is recorded as `unprocessed` and sent again at once on a new connection, as
//! browsers and gRPC clients do.
//!
//! Prints one JSON line per request: `{"s": start, "e": end, "r": "ok" | "unprocessed" | error}`,
//! the times in seconds since the Unix epoch. Loopback addresses only; the certificate is not
//! checked (perf/upgrade.py makes a self-signed one).
//!
//! Run: `cargo run --release --example h2_upgrade_load -- --addr 127.0.0.1:18443 --tls --rate 400`

use clap::Parser;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "HTTP/2 GETs at a fixed rate until standard input closes")]
struct Args {
    /// the proxy's listener (loopback)
    #[arg(long)]
    addr: SocketAddr,
    /// h2 over TLS (ALPN), else h2c with prior knowledge
    #[arg(long)]
    tls: bool,
    /// requests per second, over all clients
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// the path requested
    #[arg(long, default_value = "/api")]
    path: String,
}

type Log = Arc<Mutex<Vec<(f64, f64, String)>>>;

fn record(log: &Log, started: f64, ending: String) {
    if let Ok(mut log) = log.lock() {
        log.push((started, now(), ending));
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Accepts any certificate: the load runs against a self-signed one on loopback.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> Option<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn connect(args: &Args) -> Option<h2::client::SendRequest<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(args.addr).await.ok()?;
    let client = if args.tls {
        let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
        let io = tls_connector()?.connect(name, tcp).await.ok()?;
        let (client, conn) = h2::client::handshake(io).await.ok()?;
        tokio::spawn(conn);
        client
    } else {
        let (client, conn) = h2::client::handshake(tcp).await.ok()?;
        tokio::spawn(conn);
        client
    };
    client.ready().await.ok()
}

/// One stream: "ok", "unprocessed", or what went wrong.
async fn one(client: &mut h2::client::SendRequest<bytes::Bytes>, args: &Args) -> String {
    let scheme = if args.tls { "https" } else { "http" };
    let uri = format!("{scheme}://localhost{}", args.path);
    let Ok(req) = http::Request::get(uri).body(()) else {
        return "bad request".into();
    };
    let sent = match client.send_request(req, true) {
        Ok((response, _)) => response.await,
        Err(e) => Err(e),
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
            return "unprocessed".into()
        }
        Err(e) => return e.to_string(),
    };
    let status = response.status();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(c) => {
                let _ = body.flow_control().release_capacity(c.len());
            }
            Err(e) => return format!("body: {e}"),
        }
    }
    if status == 200 {
        "ok".into()
    } else {
        format!("status {status}")
    }
}

async fn client(args: Arc<Args>, stop: Arc<AtomicBool>, log: Log) {
    let interval = Duration::from_secs_f64(args.clients as f64 / args.rate);
    let mut tick = tokio::time::interval(interval);
    let mut conn: Option<h2::client::SendRequest<bytes::Bytes>> = None;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        loop {
            let started = now();
            let mut c = match conn.take() {
                Some(c) => match c.ready().await {
                    Ok(c) => c,
                    // The connection is closing (a GOAWAY): a new one takes over.
                    Err(_) => match connect(&args).await {
                        Some(c) => c,
                        None => {
                            record(&log, started, "connect failed".into());
                            break;
                        }
                    },
                },
                None => match connect(&args).await {
                    Some(c) => c,
                    None => {
                        record(&log, started, "connect failed".into());
                        break;
                    }
                },
            };
            let ending = one(&mut c, &args).await;
            let again = ending == "unprocessed";
            if ending == "ok" {
                conn = Some(c);
            }
            record(&log, started, ending);
            if !again || stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

fn main() {
    let args = Arc::new(Args::parse());
    assert!(args.addr.ip().is_loopback(), "loopback addresses only");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let log: Log = Arc::default();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("h2_upgrade_load: no runtime");
        return;
    };
    runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| tokio::spawn(client(args.clone(), stop.clone(), log.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let Ok(log) = log.lock() else {
        return;
    };
    let mut out = std::io::stdout().lock();
    for (s, e, r) in log.iter() {
        let line = serde_json::json!({"s": s, "e": e, "r": r});
        let _ = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes());
    }
}
