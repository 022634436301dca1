//! HTTP/2 clients to a test proxy (the `h2` crate): h2c with prior knowledge on the plain listener,
//! or h2 by ALPN on the TLS one when the test runs behind TLS.

use super::{test_pki, ProxyProcess};
use std::sync::Arc;

/// A client that trusts the test CA and offers h2 then http/1.1 by ALPN.
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&test_pki().0).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// An HTTP/2 client connection to the proxy, and the task driving it: it ends `Ok` when the proxy
/// closes the connection with a GOAWAY.
pub async fn h2_connection(
    proxy: &ProxyProcess,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    async fn over<S>(
        io: S,
    ) -> (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    )
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (client, connection) = h2::client::handshake(io).await.unwrap();
        (client, tokio::spawn(connection))
    }
    match proxy.tls_addr {
        None => over(tokio::net::TcpStream::connect(proxy.addr).await.unwrap()).await,
        Some(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tls_connector().connect(name, tcp).await.unwrap();
            assert_eq!(
                tls.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "ALPN chose h2"
            );
            over(tls).await
        }
    }
}

/// The scheme of the proxy's listener the test speaks to.
pub fn h2_scheme(proxy: &ProxyProcess) -> &'static str {
    if proxy.tls_addr.is_some() {
        "https"
    } else {
        "http"
    }
}

/// An h2c upstream (the `h2` crate's server) that fails calls the ways an HTTP/2 server can, by path:
///
/// - `/t.Edge/ResetBefore`: RST_STREAM(INTERNAL_ERROR) before any response;
/// - `/t.Edge/Refuse`: RST_STREAM(REFUSED_STREAM) before any response;
/// - `/t.Edge/ResetAfter`: a gRPC response head and one empty message, then RST_STREAM(INTERNAL_ERROR);
/// - `/plain/reset-after`: a plain response head and some body, then RST_STREAM(INTERNAL_ERROR);
/// - `/t.Edge/Slow`: keeps the `grpc-timeout` it was sent (see `timeouts`), answers OK after 2 s;
/// - anything else: a gRPC OK with one empty message.
pub struct EdgeUpstream {
    pub addr: std::net::SocketAddr,
    /// The `grpc-timeout` of each `/t.Edge/Slow` call, as received.
    pub timeouts: Arc<std::sync::Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

pub fn edge_upstream() -> EdgeUpstream {
    let (runtime, listener) = super::server_runtime();
    let addr = listener.local_addr().unwrap();
    let timeouts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = timeouts.clone();
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(edge_call(req, respond, seen.clone()));
                }
            });
        }
    });
    EdgeUpstream {
        addr,
        timeouts,
        _runtime: runtime,
    }
}

async fn edge_call(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let grpc_head = || {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    let empty_message = bytes::Bytes::from_static(&[0, 0, 0, 0, 0]);
    match req.uri().path() {
        "/t.Edge/ResetBefore" => respond.send_reset(h2::Reason::INTERNAL_ERROR),
        "/t.Edge/Refuse" => respond.send_reset(h2::Reason::REFUSED_STREAM),
        "/t.Edge/ResetAfter" => {
            let mut body = respond.send_response(grpc_head(), false).unwrap();
            let _ = body.send_data(empty_message, false);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            body.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        "/plain/reset-after" => {
            let head = http::Response::builder().status(200).body(()).unwrap();
            let mut body = respond.send_response(head, false).unwrap();
            let _ = body.send_data(bytes::Bytes::from_static(b"partial"), false);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            body.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        path => {
            if path == "/t.Edge/Slow" {
                let timeout = req.headers().get("grpc-timeout");
                let timeout = timeout.map(|v| v.to_str().unwrap_or("?").to_string());
                seen.lock().unwrap().push(timeout.unwrap_or_default());
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            let Ok(mut body) = respond.send_response(grpc_head(), false) else {
                return;
            };
            let _ = body.send_data(empty_message, false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = body.send_trailers(trailers);
        }
    }
}
