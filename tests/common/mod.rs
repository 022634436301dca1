//! Test harness: real upstream servers on 127.0.0.1:0 and the real `switchyard run` binary on a free
//! loopback port, driven with real HTTP. Everything stops when dropped.
#![allow(
    dead_code,
    unused_macros,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod client;
pub mod etcd;
pub mod fixture;
pub mod http2;
pub mod rollout;

pub use client::{Client, Requester};
pub use fixture::Fixture;
pub use http2::{edge_upstream, h2_connection, h2_scheme, tls_connector, EdgeUpstream};

pub use switchyard::demo::backend::RunningBackend;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The request path the proxies a test starts serve on: Switchyard's HTTP/1 engine, or Pingora's
/// pipeline (`server.http1_engine: false`). Set per test by `on_both_paths!`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPath {
    Engine,
    Pingora,
    /// The engine behind a TLS listener: `url()` is https and `client()` trusts the test CA.
    EngineTls,
    /// Pingora's pipeline behind a TLS listener.
    PingoraTls,
    /// The engine, and clients speaking HTTP/2 with prior knowledge (h2c) to the plain listener.
    EngineH2c,
    /// Pingora's pipeline (`http1_engine: false`), clients speaking h2c.
    PingoraH2c,
    /// The engine behind a TLS listener, clients negotiating h2 by ALPN.
    EngineH2,
    /// Pingora's pipeline behind a TLS listener, clients negotiating h2.
    PingoraH2,
}

impl RequestPath {
    /// Whether the proxy's `url()` is its TLS listener.
    pub fn tls(self) -> bool {
        matches!(
            self,
            RequestPath::EngineTls
                | RequestPath::PingoraTls
                | RequestPath::EngineH2
                | RequestPath::PingoraH2
        )
    }

    /// Whether `client()` speaks HTTP/2 to the proxy.
    pub fn http2(self) -> bool {
        matches!(
            self,
            RequestPath::EngineH2c
                | RequestPath::PingoraH2c
                | RequestPath::EngineH2
                | RequestPath::PingoraH2
        )
    }

    /// Whether the engine may serve (`http1_engine` left on).
    pub fn engine(self) -> bool {
        matches!(
            self,
            RequestPath::Engine
                | RequestPath::EngineTls
                | RequestPath::EngineH2c
                | RequestPath::EngineH2
        )
    }
}

/// A CA and a `localhost` certificate it signed, made once per test process: (ca.pem, cert.pem,
/// key.pem).
pub fn test_pki() -> &'static (PathBuf, PathBuf, PathBuf) {
    static PKI: std::sync::OnceLock<(PathBuf, PathBuf, PathBuf)> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchyard-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let paths = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&paths.0, ca.pem()).unwrap();
        std::fs::write(&paths.1, leaf.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    })
}

thread_local! {
    static REQUEST_PATH: std::cell::Cell<RequestPath> = const { std::cell::Cell::new(RequestPath::Engine) };
}

/// The request path of this test.
pub fn request_path() -> RequestPath {
    REQUEST_PATH.with(|p| p.get())
}

/// Runs `test` with its proxies on `path`.
pub fn on_path(path: RequestPath, test: fn()) {
    REQUEST_PATH.with(|p| p.set(path));
    test()
}

/// Instantiates each named test function once per request path, as `engine::NAME` and
/// `pingora::NAME`, so that no behaviour is tested on one path only.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        mod engine {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::Engine, super::$name) } )*
        }
        mod pingora {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::Pingora, super::$name) } )*
        }
    };
}
pub(crate) use on_both_paths;

/// Like `on_both_paths!`, each path behind a TLS listener too (`engine_tls::NAME`,
/// `pingora_tls::NAME`), and each over HTTP/2 (`on_h2_paths!`), for tests that speak to the proxy
/// through `url()` and `client()`.
macro_rules! on_every_path {
    ($($name:ident),* $(,)?) => {
        $crate::common::on_both_paths!($($name),*);
        $crate::common::on_tls_paths!($($name),*);
        $crate::common::on_h2_paths!($($name),*);
    };
}
pub(crate) use on_every_path;

/// Each named test with `client()` speaking HTTP/2 to the proxy, on both paths: h2c with prior
/// knowledge (`engine_h2c::NAME`, `pingora_h2c::NAME`) and h2 over TLS (`engine_h2::NAME`,
/// `pingora_h2::NAME`).
macro_rules! on_h2_paths {
    ($($name:ident),* $(,)?) => {
        mod engine_h2c {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::EngineH2c, super::$name) } )*
        }
        mod pingora_h2c {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::PingoraH2c, super::$name) } )*
        }
        mod engine_h2 {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::EngineH2, super::$name) } )*
        }
        mod pingora_h2 {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::PingoraH2, super::$name) } )*
        }
    };
}
pub(crate) use on_h2_paths;

/// Each named test behind a TLS listener, on both paths (`engine_tls::NAME`, `pingora_tls::NAME`).
macro_rules! on_tls_paths {
    ($($name:ident),* $(,)?) => {
        mod engine_tls {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::EngineTls, super::$name) } )*
        }
        mod pingora_tls {
            $( #[test] fn $name() { $crate::common::on_path($crate::common::RequestPath::PingoraTls, super::$name) } )*
        }
    };
}
pub(crate) use on_tls_paths;

pub fn backend(version: &str) -> RunningBackend {
    RunningBackend::start(version, "127.0.0.1:0").expect("start backend")
}

/// A loopback port nobody listens on (bound then released).
///
/// It is taken from below the kernel's ephemeral range, never from it: a proxy restarted on the same
/// port must find it still free, and a port from the ephemeral range can be handed in between to any
/// other test's outgoing connection or `bind(0)`. No port is handed out twice by one test process.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = ((ephemeral_low / 2).clamp(1024, 10_000), ephemeral_low);
    if high <= low {
        // no room below the ephemeral range: take what the kernel gives
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
    }
    let span = u32::from(high - low);
    let start = rand::random::<u32>() % span;
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            given.push(port);
            return l.local_addr().unwrap();
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

pub struct ProxyProcess {
    pub addr: SocketAddr,
    /// The TLS listener, when the test runs behind TLS (`url()` then points there).
    pub tls_addr: Option<SocketAddr>,
    pub dir: PathBuf,
    pub child: Child,
    /// `server.access_log` of the generated config.
    pub access_log: String,
    /// More lines of the generated `server:` section (e.g. `tls:`), indented by two spaces.
    pub server_extra: String,
}

impl ProxyProcess {
    /// Starts `switchyard run` with `body` (upstreams/routes/clients YAML) under a generated `server:`.
    pub fn start(body: &str) -> ProxyProcess {
        ProxyProcess::start_with(body, "off", Stdio::null())
    }

    /// Like `start`, with `server.access_log: ACCESS_LOG` (`{dir}` is replaced by the instance's
    /// directory) and the process's stdout going to `stdout`.
    pub fn start_with(body: &str, access_log: &str, stdout: Stdio) -> ProxyProcess {
        ProxyProcess::start_full(body, access_log, "", stdout)
    }

    /// Like `start_with`, with more lines in `server:` (`{dir}` is replaced as in ACCESS_LOG).
    pub fn start_full(
        body: &str,
        access_log: &str,
        server_extra: &str,
        stdout: Stdio,
    ) -> ProxyProcess {
        let addr = free_addr();
        let dir = std::env::temp_dir().join(format!(
            "switchyard-test-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let access_log = access_log.replace("{dir}", &dir.display().to_string());
        let path = request_path();
        let tls_addr = path.tls().then(free_addr);
        let tls = tls_addr.map(|t| {
            let (_, cert, key) = test_pki();
            format!(
                "  tls: [{{listen: \"{t}\", cert: {}, key: {}}}]\n",
                cert.display(),
                key.display()
            )
        });
        let mut path_setting = if path.engine() {
            String::new()
        } else {
            "  http1_engine: false\n".to_string()
        } + tls.as_deref().unwrap_or("");
        if path.http2() {
            if !path.tls() {
                path_setting += "  h2c: true\n";
            }
            client::speak_h2_to(tls_addr.unwrap_or(addr).port());
        }
        let server_extra =
            path_setting + &server_extra.replace("{dir}", &dir.display().to_string());
        std::fs::write(
            dir.join("switchyard.yaml"),
            config_text(addr, &dir, &access_log, &server_extra, body),
        )
        .unwrap();
        let child = spawn_run(&dir, &[], stdout);
        let proxy = ProxyProcess {
            addr,
            tls_addr,
            dir,
            child,
            access_log,
            server_extra,
        };
        proxy.wait_ready();
        proxy
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("switchyard.yaml")
    }

    /// Replaces the config file's body (the `server:` section stays the same).
    pub fn rewrite_config(&self, body: &str) {
        std::fs::write(
            self.config_path(),
            config_text(
                self.addr,
                &self.dir,
                &self.access_log,
                &self.server_extra,
                body,
            ),
        )
        .unwrap();
    }

    /// Stops the instance (SIGKILL, no drain) and starts a new one on the same files.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_run(&self.dir, &[], Stdio::null());
        self.wait_ready();
    }

    /// Starts a second instance on the same config with `-u`: it takes the listening sockets over.
    pub fn spawn_upgrade(&self) -> Child {
        spawn_run(&self.dir, &["-u"], Stdio::null())
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        // Every listener the test may use: the plain one and, on the TLS paths, the TLS one.
        let listeners: Vec<SocketAddr> = std::iter::once(self.addr).chain(self.tls_addr).collect();
        while Instant::now() < deadline {
            if listeners.iter().all(|a| TcpStream::connect(a).is_ok()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("proxy did not listen on {listeners:?} in time");
    }

    pub fn url(&self, path: &str) -> String {
        match self.tls_addr {
            Some(t) => format!("https://localhost:{}{}", t.port(), path),
            None => format!("http://{}{}", self.addr, path),
        }
    }

    /// What the instance has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("switchyard.log")).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A process that took over by an upgrade is not our child: stop it by its pid file.
        if let Some(pid) = std::fs::read_to_string(self.dir.join("switchyard.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|pid| *pid != self.child.id())
            // Only if it is still a switchyard of this test (a pid can be reused).
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*self.dir.to_string_lossy())
                })
            })
        {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_text(
    addr: SocketAddr,
    dir: &std::path::Path,
    access_log: &str,
    server_extra: &str,
    body: &str,
) -> String {
    format!(
        "server:\n  listen: [\"{addr}\"]\n  threads: 1\n  pid_file: {d}/switchyard.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 2s\n  shutdown_timeout: 2s\n  state_dir: {d}/state\n  access_log: {access_log}\n{server_extra}{body}",
        d = dir.display()
    )
}

/// Runs `switchyard ARGS...` to completion; returns its exit code and output.
pub fn switchyard(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `switchyard ARGS...` with these environment variables; returns its exit code and its
/// standard output alone (e.g. what `ctl export` writes).
pub fn switchyard_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = if out.status.success() {
        stdout
    } else {
        stdout + &String::from_utf8_lossy(&out.stderr)
    };
    (out.status.code().unwrap_or(-1), text)
}

/// Starts `switchyard run` on DIR's config; its log (stderr) is appended to DIR/switchyard.log.
fn spawn_run(dir: &std::path::Path, extra: &[&str], stdout: Stdio) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("switchyard.log"))
        .expect("open the instance's log file");
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c"])
        .arg(dir.join("switchyard.yaml"))
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("SY_LOG").unwrap_or("warn,switchyard=info".into()),
        )
        .stdout(stdout)
        .stderr(log)
        .spawn()
        .expect("spawn switchyard")
}

/// Sends a signal to a process by pid.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// A keep-alive HTTP client that never turns statuses into errors; https URLs are checked against
/// the test CA. It speaks HTTP/2 to a proxy started on an HTTP/2 path, HTTP/1.1 to everything else.
pub fn client() -> Client {
    Client::new(h1_client())
}

/// A keep-alive HTTP/1.1 client, like `client()` but never HTTP/2.
pub fn h1_client() -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&test_pki().0).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .tls_config(std::sync::Arc::new(tls))
        .build()
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The `version` the demo backend reported.
    pub fn version(&self) -> String {
        self.json()["version"]
            .as_str()
            .unwrap_or_else(|| panic!("no version in {}", self.body))
            .to_string()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// A header as the upstream received it (echoed by the demo backend).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_str()
            .map(str::to_string)
    }
}

pub fn send(agent: &impl Requester, method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    agent.round_trip(method, url, headers, None)
}

/// Sends a request with an optional body; any status is a `Reply`, only transport errors panic.
pub fn send_body(
    agent: &impl Requester,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    agent.round_trip(method, url, headers, body)
}

/// Lowercase hex SHA-256, as the config stores keys and tokens.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn get(agent: &impl Requester, url: &str, headers: &[(&str, &str)]) -> Reply {
    send(agent, "GET", url, headers)
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Waits (up to 10 s) until something listens on `addr`, e.g. an instance's admin listener.
pub fn wait_listening(addr: SocketAddr) {
    assert!(
        eventually(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "nothing listens on {addr}"
    );
}

/// A one-worker runtime for a test server, and a listener on a free loopback port in it.
pub fn server_runtime() -> (tokio::runtime::Runtime, tokio::net::TcpListener) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    (runtime, listener)
}

/// A runtime for a test's client calls.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The pid the instance's pid file names now.
pub fn pid_in(proxy: &ProxyProcess) -> u32 {
    std::fs::read_to_string(proxy.dir.join("switchyard.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether process `pid` is alive (not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

/// `switchyard upgrade -c FILE`, its log appended to the instance's.
pub fn upgrade_command(proxy: &ProxyProcess, extra: &[&str]) -> (i32, String) {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(proxy.dir.join("switchyard.log"))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("upgrade")
        .arg("-c")
        .arg(proxy.config_path())
        .args(extra)
        .env("RUST_LOG", "warn,switchyard=info")
        .stderr(log)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Where `pat` first occurs in `buf`.
pub fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

/// Reads one HTTP/1.1 message (head, then a Content-Length or chunked body) from `s`, `buf` holding
/// what was read before and keeping what follows. `None` at end of stream.
pub fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(l) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
    {
        let n: usize = l.trim().parse().unwrap();
        while buf.len() < n {
            let k = s.read(&mut chunk).ok()?;
            if k == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        body = buf.drain(..n).collect();
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n") {
                    break p;
                }
                let k = s.read(&mut chunk).ok()?;
                buf.extend_from_slice(&chunk[..k]);
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let k = s.read(&mut chunk).ok()?;
                buf.extend_from_slice(&chunk[..k]);
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Some((head, body))
}
