//! The tests' HTTP client: HTTP/1.1 (ureq) by default, HTTP/2 to a proxy a test started on an HTTP/2
//! path (h2c with prior knowledge on its plain listener, or ALPN h2 on its TLS listener). Tests send
//! through `send`/`get` and read a `Reply` the same way on every path.

use super::Reply;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Listener ports of proxies started on an HTTP/2 path: requests to them go over HTTP/2.
static H2_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Marks the proxy listener on `port` as one the tests speak HTTP/2 to.
pub fn speak_h2_to(port: u16) {
    H2_PORTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(port);
}

fn speaks_h2(port: u16) -> bool {
    H2_PORTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&port)
}

/// Something that sends a request and reads its whole reply; statuses are never errors, transport
/// errors panic.
pub trait Requester {
    fn round_trip(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply;
}

impl Requester for ureq::Agent {
    fn round_trip(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut req = ureq::Agent::request(self, method, url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string())))
            .collect();
        let body = resp.into_string().unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// A keep-alive client: ureq over HTTP/1.1, and HTTP/2 connections (one per listener, reused) to the
/// proxies marked by [`speak_h2_to`].
pub struct Client {
    pub h1: ureq::Agent,
    h2: OnceLock<H2>,
}

struct H2 {
    runtime: tokio::runtime::Runtime,
    conns: Mutex<HashMap<(bool, u16), h2::client::SendRequest<Bytes>>>,
}

impl Client {
    pub fn new(h1: ureq::Agent) -> Client {
        Client {
            h1,
            h2: OnceLock::new(),
        }
    }

    /// The ureq agent, for a test that speaks HTTP/1.1 on purpose.
    pub fn h1(&self) -> &ureq::Agent {
        &self.h1
    }

    fn h2(&self) -> &H2 {
        self.h2.get_or_init(|| H2 {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            conns: Mutex::new(HashMap::new()),
        })
    }
}

/// Direct ureq calls on a `Client` speak HTTP/1.1.
impl std::ops::Deref for Client {
    type Target = ureq::Agent;

    fn deref(&self) -> &ureq::Agent {
        &self.h1
    }
}

impl Requester for Client {
    fn round_trip(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let uri: http::Uri = url.parse().unwrap();
        let port = uri.port_u16().unwrap_or(80);
        if !speaks_h2(port) {
            return Requester::round_trip(&self.h1, method, url, headers, body);
        }
        let h2 = self.h2();
        let tls = uri.scheme_str() == Some("https");
        let exchange = h2.exchange(tls, port, method, &uri, headers, body);
        match h2
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), exchange).await })
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => panic!("{method} {url} over HTTP/2: {e}"),
            Err(_) => panic!("{method} {url} over HTTP/2: no answer in 10 s"),
        }
    }
}

impl H2 {
    /// A ready connection to the listener, reused while it lasts.
    async fn ready(&self, tls: bool, port: u16) -> h2::client::SendRequest<Bytes> {
        let kept = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tls, port));
        if let Some(conn) = kept {
            if let Ok(conn) = conn.ready().await {
                return conn;
            }
        }
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let send = if tls {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let io = super::tls_connector().connect(name, tcp).await.unwrap();
            assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (send, connection) = h2::client::handshake(io).await.unwrap();
            tokio::spawn(connection);
            send
        } else {
            let (send, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            send
        };
        send.ready().await.unwrap()
    }

    async fn exchange(
        &self,
        tls: bool,
        port: u16,
        method: &str,
        uri: &http::Uri,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, h2::Error> {
        let mut send = self.ready(tls, port).await;
        // A `Host` the test sets is the request's authority over HTTP/2.
        let host = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.to_string());
        let authority = host.unwrap_or_else(|| uri.authority().unwrap().to_string());
        let target = format!(
            "{}://{authority}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut req = http::Request::builder().method(method).uri(target);
        for (k, v) in headers {
            // Connection-specific fields do not exist in HTTP/2.
            let connection_specific = ["host", "connection", "keep-alive", "transfer-encoding"]
                .iter()
                .any(|n| k.eq_ignore_ascii_case(n));
            if !connection_specific {
                req = req.header(*k, *v);
            }
        }
        let req = req.body(()).unwrap();
        let (response, mut stream) = send.send_request(req, body.is_none())?;
        if let Some(b) = body {
            stream.send_data(Bytes::copy_from_slice(b.as_bytes()), true)?;
        }
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((tls, port), send);
        let response = response.await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}
