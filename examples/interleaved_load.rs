//! An open-loop HTTP/1.1 load generator that interleaves its requests over several targets, so that
//! every target is measured at the same moments. perf/bench.py's `paired` phase runs it against
//! Switchyard, nginx and the direct upstream at once: whatever the machine does meanwhile (a busy
//! core, the hypervisor taking a CPU) falls on all of them alike, and their latency percentiles can
//! be compared within one run rather than across runs minutes apart.
//!
//! Requests are due at fixed intervals (`--rate`, all targets together). Each group of as many
//! requests as there are targets goes to the targets in a fresh random order, so none is always
//! first. A request's latency runs from the moment it was due to its response's last byte, so a
//! request that waits for a free connection counts its wait (no coordinated omission).
//!
//! Run: `cargo run --release --example interleaved_load -- --rate 24000 --duration 20 \
//!        sy=http://127.0.0.1:18080/pass/orders/1 nginx=http://127.0.0.1:18081/pass/orders/1`
//!
//! `USER` in a path is replaced by a random six-digit number per request. Targets must be loopback
//! addresses. The result is one JSON object on stdout: per target the request and error counts,
//! p50/p90/p99/p99.9/max in µs over the measured part, and p99 per window (`--window-ms`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use clap::Parser;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

#[derive(Parser)]
#[command(about = "Open-loop HTTP/1.1 load, interleaved over several loopback targets")]
struct Args {
    /// requests per second, over all targets together
    #[arg(long)]
    rate: u64,
    /// seconds of measured load, after the warm-up
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// seconds of load before the measurement starts (sent, not counted)
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// keep-alive connections per target
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// a request header for every target, "Name: value"
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// one connection per request, with "Connection: close"
    #[arg(long)]
    close: bool,
    /// the width of the windows whose p99 is reported, in ms
    #[arg(long, default_value_t = 1000)]
    window_ms: u64,
    /// seconds a request may take before it counts as a timeout
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// NAME=http://127.0.0.1:PORT/PATH, one or more
    #[arg(required = true)]
    targets: Vec<String>,
}

#[derive(Debug)]
struct Target {
    name: String,
    url: String,
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_target(spec: &str) -> Result<Target, String> {
    let (name, url) = spec
        .split_once('=')
        .ok_or_else(|| format!("target {spec:?}: expected NAME=http://HOST:PORT/PATH"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("target {name}: {url:?} is not an http:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| format!("target {name}: {host:?} is not IP:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("target {name}: {addr} is not a loopback address"));
    }
    Ok(Target {
        name: name.to_string(),
        url: url.to_string(),
        addr,
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// One request, due at `due`.
struct Job {
    due: Instant,
}

#[derive(Default)]
struct Record {
    /// (ns from the measurement's start to when the request was due, latency in ns)
    done: Vec<(u64, u64)>,
    errors: BTreeMap<&'static str, u64>,
}

enum Body {
    Length(usize),
    Chunked,
}

/// Reads more of the response into `buf`; an error if the connection ends first.
async fn read_more(conn: &mut TcpStream, buf: &mut BytesMut) -> Result<(), &'static str> {
    match conn.read_buf(buf).await {
        Ok(0) => Err("closed"),
        Ok(_) => Ok(()),
        Err(_) => Err("read"),
    }
}

/// Reads one response from `conn`; its status and whether the connection may carry another request.
async fn read_response(
    conn: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<(u16, bool), &'static str> {
    let (status, body, head_len, keep) = loop {
        {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut body = Body::Length(0);
                    let mut keep = resp.version == Some(1);
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or("bad content-length")?;
                            body = Body::Length(n);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            body = Body::Chunked;
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            keep = !h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    if (100..200).contains(&status) {
                        buf.advance(n);
                        continue;
                    }
                    break (status, body, n, keep);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err("bad response"),
            }
        }
        read_more(conn, buf).await?;
    };
    buf.advance(head_len);
    match body {
        Body::Length(n) => {
            while buf.len() < n {
                read_more(conn, buf).await?;
            }
            buf.advance(n);
        }
        Body::Chunked => loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((i, size))) => {
                    let size = usize::try_from(size).map_err(|_| "bad chunk")?;
                    let need = i + size + 2;
                    while buf.len() < need {
                        read_more(conn, buf).await?;
                    }
                    buf.advance(need);
                    if size == 0 {
                        break;
                    }
                }
                Ok(httparse::Status::Partial) => read_more(conn, buf).await?,
                Err(_) => return Err("bad chunk"),
            }
        },
    }
    Ok((status, keep))
}

struct Shared {
    target: Target,
    /// The request up to where the path has USER, and the rest after it (None: no USER, the
    /// request is all in the first part). Built once; only the user id changes per request.
    request: (Vec<u8>, Option<Vec<u8>>),
    close: bool,
    timeout: Duration,
    measure_from: Instant,
    record: RefCell<Record>,
}

async fn connection(shared: Rc<Shared>, jobs: Rc<Mutex<mpsc::UnboundedReceiver<Job>>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn: Option<TcpStream> = None;
    let mut buf = BytesMut::with_capacity(4096);
    let mut req = Vec::with_capacity(256);
    loop {
        let job = {
            let mut rx = jobs.lock().await;
            match rx.recv().await {
                Some(job) => job,
                None => return,
            }
        };
        req.clear();
        req.extend_from_slice(&shared.request.0);
        if let Some(rest) = &shared.request.1 {
            let user: u32 = rng.gen_range(100_000..1_000_000);
            let _ = write!(req, "{user}");
            req.extend_from_slice(rest);
        }
        let exchange = async {
            if conn.is_none() {
                let c = TcpStream::connect(shared.target.addr)
                    .await
                    .map_err(|_| "connect")?;
                c.set_nodelay(true).map_err(|_| "connect")?;
                buf.clear();
                conn = Some(c);
            }
            let c = conn.as_mut().ok_or("connect")?;
            c.write_all(&req).await.map_err(|_| "write")?;
            read_response(c, &mut buf).await
        };
        let result = tokio::time::timeout(shared.timeout, exchange)
            .await
            .unwrap_or(Err("timeout"));
        let now = Instant::now();
        let keep = matches!(result, Ok((_, true))) && !shared.close;
        if !keep {
            conn = None;
        }
        if job.due < shared.measure_from {
            continue;
        }
        let mut rec = shared.record.borrow_mut();
        match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                let at = (job.due - shared.measure_from).as_nanos() as u64;
                let latency = (now - job.due).as_nanos() as u64;
                rec.done.push((at, latency));
            }
            Ok(_) => *rec.errors.entry("status").or_default() += 1,
            Err(kind) => *rec.errors.entry(kind).or_default() += 1,
        }
    }
}

fn quantile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i] as f64 / 1000.0)
}

fn summary(shared: &Shared, window_ns: u64, windows: usize) -> serde_json::Value {
    let rec = shared.record.borrow();
    let mut all: Vec<u64> = rec.done.iter().map(|&(_, l)| l).collect();
    all.sort_unstable();
    let mut per_window: Vec<Vec<u64>> = vec![Vec::new(); windows];
    for &(at, l) in &rec.done {
        if let Some(w) = per_window.get_mut((at / window_ns) as usize) {
            w.push(l);
        }
    }
    let window_p99: Vec<Option<f64>> = per_window
        .iter_mut()
        .map(|w| {
            w.sort_unstable();
            quantile(w, 0.99)
        })
        .collect();
    let errors: u64 = rec.errors.values().sum();
    serde_json::json!({
        "name": shared.target.name,
        "url": shared.target.url,
        "requests": rec.done.len(),
        "errors": errors,
        "error_kinds": rec.errors,
        "p50_us": quantile(&all, 0.50),
        "p90_us": quantile(&all, 0.90),
        "p99_us": quantile(&all, 0.99),
        "p999_us": quantile(&all, 0.999),
        "max_us": all.last().map(|&v| v as f64 / 1000.0),
        "window_p99_us": window_p99,
    })
}

/// The request `connection` sends to `target`, split where the path has USER.
fn request_parts(target: &Target, headers: &[String], close: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut rest = format!(" HTTP/1.1\r\nHost: {}\r\n", target.host);
    for h in headers {
        rest += h.trim();
        rest += "\r\n";
    }
    if close {
        rest += "Connection: close\r\n";
    }
    rest += "\r\n";
    match target.path.split_once("USER") {
        Some((before, after)) => (
            format!("GET {before}").into_bytes(),
            Some(format!("{after}{rest}").into_bytes()),
        ),
        None => (format!("GET {}{rest}", target.path).into_bytes(), None),
    }
}

async fn run(args: Args, targets: Vec<Target>) -> serde_json::Value {
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let total = ((args.warmup + args.duration) * args.rate as f64).round() as u64;
    let mut senders = Vec::new();
    let mut shared = Vec::new();
    let mut tasks = Vec::new();
    for (t, target) in targets.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Rc::new(Mutex::new(rx));
        let s = Rc::new(Shared {
            request: request_parts(&target, &args.headers, args.close),
            target,
            close: args.close,
            timeout: Duration::from_secs_f64(args.timeout),
            measure_from,
            record: RefCell::new(Record::default()),
        });
        for c in 0..args.connections {
            let seed = (t as u64) << 32 | c as u64;
            tasks.push(tokio::task::spawn_local(connection(
                s.clone(),
                rx.clone(),
                seed,
            )));
        }
        senders.push(tx);
        shared.push(s);
    }
    // The schedule is kept by a thread of its own that sleeps to each due time (the kernel's
    // high-resolution timers): tokio's timer has millisecond ticks, which would send the requests
    // in bursts a millisecond apart and add up to a millisecond to every latency.
    let rate = args.rate;
    let pacer = std::thread::spawn(move || {
        let mut order: Vec<usize> = (0..senders.len()).collect();
        let mut rng = StdRng::seed_from_u64(0x5157_c4ad);
        let interval_ns = 1e9 / rate as f64;
        let due = |i: u64| start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        let mut i = 0u64;
        while i < total {
            let now = Instant::now();
            while i < total && due(i) <= now {
                let slot = (i % order.len() as u64) as usize;
                if slot == 0 {
                    order.shuffle(&mut rng);
                }
                // a send fails only when every connection of that target has ended, which they do not
                let _ = senders[order[slot]].send(Job { due: due(i) });
                i += 1;
            }
            if i < total {
                std::thread::sleep(due(i).saturating_duration_since(now));
            }
        }
    });
    for t in tasks {
        let _ = t.await;
    }
    let _ = pacer.join();
    let window_ns = args.window_ms.max(1) * 1_000_000;
    let windows = ((args.duration * 1e9) as u64).div_ceil(window_ns) as usize;
    serde_json::json!({
        "rate": args.rate,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections_per_target": args.connections,
        "window_ms": args.window_ms,
        "sent": total,
        "targets": shared.iter().map(|s| summary(s, window_ns, windows)).collect::<Vec<_>>(),
    })
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("interleaved_load: {msg}");
    std::process::exit(code);
}

fn main() {
    let args = Args::parse();
    let targets = match args.targets.iter().map(|t| parse_target(t)).collect() {
        Ok(t) => t,
        Err(e) => fail(2, &e),
    };
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if args.rate == 0
        || args.connections == 0
        || !positive(args.duration)
        || !positive(args.timeout)
    {
        fail(
            2,
            "--rate, --connections, --duration and --timeout must be above 0",
        );
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        fail(2, "--warmup must be 0 or more seconds");
    }
    match on_one_thread(run(args, targets)) {
        Ok(out) => println!("{out}"),
        Err(e) => fail(1, &format!("runtime: {e}")),
    }
}

/// Runs `f` on a single-threaded runtime, where `run` spawns its connections as local tasks.
fn on_one_thread<F: std::future::Future>(f: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(tokio::task::LocalSet::new().block_on(&rt, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A loopback server that answers every request on a connection with `answer`.
    async fn server(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            if sock.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// Writes `parts` to a fresh connection, a pause between them, and reads one response back.
    async fn read_one(parts: &'static [&'static [u8]]) -> Result<(u16, bool), &'static str> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            for p in parts {
                sock.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        read_response(&mut conn, &mut buf).await
    }

    #[tokio::test]
    async fn reads_length_chunked_interim_and_close_delimited_ends() {
        assert_eq!(
            read_one(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe", b"llo"]).await,
            Ok((200, true))
        );
        assert_eq!(
            read_one(&[
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                b"c\r\n0\r\n\r\n"
            ])
            .await,
            Ok((201, true))
        );
        assert_eq!(
            read_one(&[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
            ])
            .await,
            Ok((204, true))
        );
        assert_eq!(
            read_one(&[b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
                .await,
            Ok((503, false))
        );
        assert_eq!(
            read_one(&[b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"]).await,
            Ok((200, false))
        );
        assert_eq!(
            read_one(&[b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"]).await,
            Err("closed")
        );
        assert_eq!(
            read_one(&[b"not http at all\r\n\r\n"]).await,
            Err("bad response")
        );
    }

    #[test]
    fn targets_are_loopback_http_urls() {
        let t = parse_target("sy=http://127.0.0.1:18080/pass/orders/1?user=USER").unwrap();
        assert_eq!(
            (t.name.as_str(), t.path.as_str()),
            ("sy", "/pass/orders/1?user=USER")
        );
        assert_eq!(t.addr, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(parse_target("d=http://[::1]:80").unwrap().path, "/");
        assert!(parse_target("x=http://10.0.0.1:80/")
            .unwrap_err()
            .contains("not a loopback address"));
        assert!(parse_target("x=https://127.0.0.1:80/")
            .unwrap_err()
            .contains("not an http:// URL"));
        assert!(parse_target("http://127.0.0.1:80/")
            .unwrap_err()
            .contains("NAME="));
        assert!(parse_target("x=http://localhost:80/")
            .unwrap_err()
            .contains("not IP:PORT"));
    }

    #[test]
    fn the_request_is_built_once_around_the_user_id() {
        let t = parse_target("sy=http://127.0.0.1:18080/split/1?user=USER&x=1").unwrap();
        let (before, after) = request_parts(&t, &[" X-Version: beta ".into()], true);
        assert_eq!(before, b"GET /split/1?user=");
        assert_eq!(
            after.unwrap(),
            b"&x=1 HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nX-Version: beta\r\nConnection: close\r\n\r\n"
        );
        let t = parse_target("d=http://127.0.0.1:19001/pass").unwrap();
        assert_eq!(
            request_parts(&t, &[], false),
            (
                b"GET /pass HTTP/1.1\r\nHost: 127.0.0.1:19001\r\n\r\n".to_vec(),
                None
            )
        );
    }

    #[test]
    fn quantiles_take_the_sample_at_or_above_the_rank() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v[..1], 0.99), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    fn args(rate: u64, duration: f64, warmup: f64, targets: Vec<String>) -> Args {
        Args {
            rate,
            duration,
            warmup,
            connections: 4,
            headers: vec!["X-Version: beta".into()],
            close: false,
            window_ms: 250,
            timeout: 5.0,
            targets,
        }
    }

    #[test]
    fn load_is_shared_out_evenly_and_answers_are_told_apart() {
        let out = on_one_thread(async {
            let ok = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            let bad = server(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n").await;
            // nothing listens on a port that was just bound and dropped
            let gone = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let specs = vec![
                format!("ok=http://{ok}/a?u=USER"),
                format!("bad=http://{bad}/b"),
                format!("gone=http://{gone}/"),
            ];
            let targets = specs.iter().map(|s| parse_target(s).unwrap()).collect();
            run(args(2000, 0.5, 0.1, specs), targets).await
        })
        .unwrap();
        assert_eq!(out["sent"], 1200);
        let t = out["targets"].as_array().unwrap();
        let count = |i: usize, k: &str| t[i][k].as_u64().unwrap();
        // 1,000 measured requests, a third of them to each target, give or take one of each turn
        assert!((332..=335).contains(&count(0, "requests")), "{out}");
        assert_eq!(count(0, "errors"), 0);
        assert_eq!(count(1, "requests"), 0);
        assert!(
            (332..=335).contains(&t[1]["error_kinds"]["status"].as_u64().unwrap()),
            "{out}"
        );
        assert!(
            (332..=335).contains(&t[2]["error_kinds"]["connect"].as_u64().unwrap()),
            "{out}"
        );
        assert_eq!(t[0]["window_p99_us"].as_array().unwrap().len(), 2);
        let p50 = t[0]["p50_us"].as_f64().unwrap();
        let p99 = t[0]["p99_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99, "{out}");
        assert!(t[1]["p99_us"].is_null());
    }

    #[test]
    fn a_request_waiting_for_a_connection_counts_its_wait() {
        // one connection to a server that takes 20 ms per answer, asked 200 times a second: the
        // requests queue, and the latency of the last ones includes the queue
        let out = on_one_thread(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let requests = buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                    for _ in 0..requests {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .await
                            .unwrap();
                    }
                }
            });
            let specs = vec![format!("slow=http://{addr}/")];
            let targets = specs.iter().map(|s| parse_target(s).unwrap()).collect();
            let mut a = args(200, 0.2, 0.0, specs);
            a.connections = 1;
            a.window_ms = 1000;
            run(a, targets).await
        })
        .unwrap();
        let t = &out["targets"][0];
        assert_eq!(t["requests"], 40, "{out}");
        // 40 requests due over 200 ms, answered one per 20 ms: the last waits about 600 ms
        assert!(t["max_us"].as_f64().unwrap() > 500_000.0, "{out}");
        assert!(t["p50_us"].as_f64().unwrap() > 100_000.0, "{out}");
    }
}
