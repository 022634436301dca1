//! A small HTTP/1.1 server that says which version it is and echoes what it received. `switchyard demo`
//! runs its v1/v2/blue/green backends on it, and the integration tests use it as a real upstream.
//!
//! `GET /healthz` answers 200 while healthy and 503 once [`BackendControl::set_healthy`] turned it off.
//! Every other request gets a JSON body: `{"version","method","path","query","headers","body_bytes"}`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Live knobs of a running backend.
#[derive(Debug)]
pub struct BackendControl {
    pub version: String,
    healthy: AtomicBool,
    status: AtomicU16,
    /// Share of non-health requests answered 500 at random, in millionths.
    error_ppm: AtomicU64,
    delay_ms: AtomicU64,
    /// A slow tail: this share (in millionths) of non-health requests waits `tail_ms` more.
    tail_ppm: AtomicU64,
    tail_ms: AtomicU64,
    requests: AtomicU64,
    body: std::sync::Mutex<Option<String>>,
    /// Fields added to (or replacing those of) every echoed JSON body.
    fields: std::sync::Mutex<serde_json::Map<String, serde_json::Value>>,
    /// `GET|POST /_demo/errors?share=S` sets the error rate (the demo's knob; off elsewhere).
    knobs: AtomicBool,
    received: std::sync::Mutex<Vec<Received>>,
}

/// A request as a backend received it (kept for the last 1,000 non-health requests).
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl BackendControl {
    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
    }
    /// Status code of every non-health response (default 200).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
    /// Answers this share (0–1) of non-health requests with 500, at random.
    pub fn set_error_rate(&self, share: f64) {
        self.error_ppm
            .store((share.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }
    /// Delay before every non-health response.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
    /// A slow tail: this share (0–1) of non-health requests, at random, waits `extra` longer.
    pub fn set_tail(&self, share: f64, extra: Duration) {
        self.tail_ppm
            .store((share.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
        self.tail_ms
            .store(extra.as_millis() as u64, Ordering::Relaxed);
    }
    /// Adds these fields to every echoed JSON body (a version that answers differently).
    pub fn set_fields(&self, fields: serde_json::Value) {
        if let serde_json::Value::Object(map) = fields {
            *self.fields.lock().unwrap_or_else(|p| p.into_inner()) = map;
        }
    }
    /// Lets `/_demo/errors?share=S` set the error rate over HTTP (the demo's knob).
    pub fn enable_knobs(&self) {
        self.knobs.store(true, Ordering::Relaxed);
    }
    /// Answer every non-health request with this body instead of the echo (`None`: echo again).
    pub fn set_body(&self, body: Option<&str>) {
        *self.body.lock().unwrap_or_else(|p| p.into_inner()) = body.map(str::to_string);
    }
    /// The last requests received (at most 1,000), oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Non-health requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// A backend running on its own thread; it stops when dropped.
pub struct RunningBackend {
    pub addr: SocketAddr,
    pub control: Arc<BackendControl>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningBackend {
    /// Starts a backend reporting `version` on `addr` (use port 0 for any free port).
    pub fn start(version: &str, addr: &str) -> io::Result<RunningBackend> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let control = Arc::new(BackendControl {
            version: version.to_string(),
            healthy: AtomicBool::new(true),
            status: AtomicU16::new(200),
            error_ppm: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            tail_ppm: AtomicU64::new(0),
            tail_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            body: std::sync::Mutex::new(None),
            fields: std::sync::Mutex::new(serde_json::Map::new()),
            knobs: AtomicBool::new(false),
            received: std::sync::Mutex::new(Vec::new()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ctl = control.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("backend-{version}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("backend {}: {e}", ctl.version);
                            return;
                        }
                    };
                    tokio::select! {
                        _ = serve(listener, ctl) => {}
                        _ = rx => {}
                    }
                })
            })?;
        Ok(RunningBackend {
            addr,
            control,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for RunningBackend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: TcpListener, control: Arc<BackendControl>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let control = control.clone();
                tokio::spawn(async move {
                    let _ = connection(stream, control).await;
                });
            }
            Err(e) => {
                log::warn!("backend {}: accept failed: {e}", control.version);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Reads until `buf` holds at least `n` bytes; false at end of stream.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<bool> {
    while buf.len() < n {
        let mut chunk = [0u8; 8192];
        let got = stream.read(&mut chunk).await?;
        if got == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(true)
}

/// Reads a request body, chunked or of `content_length` bytes, from the front of `buf`; `None` at end
/// of stream.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunked: bool,
    content_length: usize,
) -> io::Result<Option<Vec<u8>>> {
    if chunked {
        return read_chunked(stream, buf).await;
    }
    if !fill(stream, buf, content_length).await? {
        return Ok(None);
    }
    Ok(Some(buf.drain(..content_length).collect()))
}

/// Reads a chunked request body from the front of `buf` (reading more as needed) and returns its
/// content; `None` at end of stream or on a chunk that does not read.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if buf.len() > MAX_HEAD || !fill(stream, buf, buf.len() + 1).await? {
                return Ok(None);
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Ok(None);
        };
        buf.drain(..line_end + 2);
        if size == 0 {
            // The trailer section: lines up to an empty one.
            loop {
                if !fill(stream, buf, 2).await? {
                    return Ok(None);
                }
                let Some(p) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if !fill(stream, buf, buf.len() + 1).await? {
                        return Ok(None);
                    }
                    continue;
                };
                buf.drain(..p + 2);
                if p == 0 {
                    return Ok(Some(body));
                }
            }
        }
        if !fill(stream, buf, size + 2).await? {
            return Ok(None);
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn connection(mut stream: TcpStream, control: Arc<BackendControl>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read until a full head is buffered.
        let head_len = loop {
            if let Some(pos) = find_head_end(&buf) {
                break pos;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(
            req.parse(&buf[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        }
        let method = req.method.unwrap_or("GET").to_string();
        let target = req.path.unwrap_or("/").to_string();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = req.version == Some(0);
        let mut echoed = serde_json::Map::new();
        let mut raw_headers = Vec::new();
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            let value = String::from_utf8_lossy(h.value).into_owned();
            if name == "content-length" {
                content_length = value.trim().parse().unwrap_or(0);
            }
            if name == "transfer-encoding" {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
            if name == "connection" {
                close = value.eq_ignore_ascii_case("close");
            }
            raw_headers.push((name.clone(), value.clone()));
            echoed.insert(name, serde_json::Value::String(value));
        }
        buf.drain(..head_len);
        let Some(body) = read_body(&mut stream, &mut buf, chunked, content_length).await? else {
            return Ok(());
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.clone(), None),
        };
        let (status, payload) = if path == "/healthz" {
            let up = control.healthy.load(Ordering::Relaxed);
            (if up { 200 } else { 503 }, format!("{{\"healthy\":{up}}}"))
        } else if path == "/_demo/errors" && control.knobs.load(Ordering::Relaxed) {
            knob(&control, query.as_deref())
        } else {
            let served = Served {
                method: &method,
                target: &target,
                path: &path,
                query: query.as_deref(),
                headers: raw_headers,
                echoed,
                body: &body,
            };
            served.answer(&control).await
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-served-by: {}\r\n{}\r\n",
            reason(status),
            payload.len(),
            control.version,
            if close { "connection: close\r\n" } else { "" },
        );
        let mut out = head.into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(payload.as_bytes());
        }
        stream.write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

/// A request the backend answers itself (not a health check or a knob).
struct Served<'a> {
    method: &'a str,
    target: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(String, String)>,
    echoed: serde_json::Map<String, serde_json::Value>,
    body: &'a [u8],
}

impl Served<'_> {
    /// Records the request, waits the configured delay, and answers with its echo (or the fixed
    /// body), or a 500 for the configured share.
    async fn answer(self, control: &BackendControl) -> (u16, String) {
        control.requests.fetch_add(1, Ordering::Relaxed);
        {
            let mut received = control.received.lock().unwrap_or_else(|p| p.into_inner());
            if received.len() >= 1000 {
                received.remove(0);
            }
            received.push(Received {
                method: self.method.to_string(),
                target: self.target.to_string(),
                headers: self.headers,
                body: self.body.to_vec(),
            });
        }
        let mut delay = control.delay_ms.load(Ordering::Relaxed);
        if rand::random::<u64>() % 1_000_000 < control.tail_ppm.load(Ordering::Relaxed) {
            delay += control.tail_ms.load(Ordering::Relaxed);
        }
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut json = serde_json::json!({
            "version": control.version,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.echoed,
            "body_bytes": self.body.len(),
        });
        if let Some(o) = json.as_object_mut() {
            for (k, v) in control
                .fields
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                o.insert(k.clone(), v.clone());
            }
        }
        let fixed = control
            .body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let ppm = control.error_ppm.load(Ordering::Relaxed);
        let status = if ppm > 0 && rand::random::<u64>() % 1_000_000 < ppm {
            500
        } else {
            control.status.load(Ordering::Relaxed)
        };
        (status, fixed.unwrap_or_else(|| json.to_string()))
    }
}

/// `/_demo/errors?share=S`: answers this share (0–1) of requests with 500 from now on.
fn knob(control: &BackendControl, query: Option<&str>) -> (u16, String) {
    let share = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("share="))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| (0.0..=1.0).contains(v));
    match share {
        Some(share) => {
            control.set_error_rate(share);
            (
                200,
                format!(
                    "{{\"version\":\"{}\",\"error_rate\":{share}}}",
                    control.version
                ),
            )
        }
        None => (
            400,
            "{\"error\":\"give share=S with S from 0 to 1, e.g. /_demo/errors?share=0.3\"}".into(),
        ),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}
