//! HTTP/2 from real clients (the `h2` crate): with prior knowledge on plain listeners (h2c) and by
//! ALPN on TLS listeners, on both request paths. The release decision is the same as over HTTP/1.1:
//! header rules, client rules and the sticky split; HTTP/1.1 keeps working on the same listeners.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::sync::Arc;

const KEY: &str = "partner-key";

struct Rig {
    proxy: ProxyProcess,
    _v1: RunningBackend,
    _v2: RunningBackend,
}

fn start() -> Rig {
    let (v1, v2) = (backend("v1"), backend("v2"));
    let proxy = ProxyProcess::start_with(
        &format!(
            r#"clients:
  keys: {{partner: {key}}}
upstreams:
  v1: {{backends: ["{}"]}}
  v2: {{backends: ["{}"]}}
routes:
  - name: api
    match: {{path_prefix: /api}}
    rules:
      - when: {{header: {{X-Version: beta}}}}
        to: v2
      - when: {{client_in: [partner]}}
        to: v2
    split: {{targets: {{v1: 50, v2: 50}}, baseline: v1, sticky: [header:X-User-Id]}}
"#,
            v1.addr,
            v2.addr,
            key = sha256_hex(KEY),
        ),
        "{dir}/access.log",
        std::process::Stdio::null(),
    );
    Rig {
        proxy,
        _v1: v1,
        _v2: v2,
    }
}

/// One HTTP/2 exchange: status, and the `version` the backend reported (empty when not JSON).
async fn exchange<S>(io: S, uri: &str, headers: &[(&str, &str)]) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (response, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, version)
}

/// An HTTP/2 request to the rig: h2c on the plain listener, or h2 by ALPN on the TLS one.
fn h2_get(rig: &Rig, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match rig.proxy.tls_addr {
            None => {
                let tcp = tokio::net::TcpStream::connect(rig.proxy.addr)
                    .await
                    .unwrap();
                let uri = format!("http://localhost{path}");
                exchange(tcp, &uri, headers).await
            }
            Some(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let tls = tls_connector().connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                );
                let tls = tls.await.unwrap();
                assert_eq!(
                    tls.get_ref().1.alpn_protocol(),
                    Some(&b"h2"[..]),
                    "ALPN chose h2"
                );
                let uri = format!("https://localhost{path}");
                exchange(tls, &uri, headers).await
            }
        }
    })
}

fn tls_connector() -> tokio_rustls::TlsConnector {
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

fn http2_reaches_the_version_its_rules_and_sticky_bucket_say() {
    let rig = start();
    assert_eq!(
        h2_get(&rig, "/api/x", &[("x-version", "beta")]),
        (200, "v2".to_string())
    );
    assert_eq!(
        h2_get(&rig, "/api/x", &[("x-api-key", KEY)]),
        (200, "v2".to_string())
    );
    // The sticky split decides the same over HTTP/2 as over HTTP/1.1, for every user.
    let agent = client();
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let over_h1 = get(&agent, &rig.proxy.url("/api/x"), &[("X-User-Id", &user)]).version();
        let (status, over_h2) = h2_get(&rig, "/api/x", &[("x-user-id", &user)]);
        assert_eq!(status, 200);
        assert_eq!(over_h2, over_h1, "{user}");
        seen.insert(over_h2);
    }
    assert_eq!(seen.len(), 2, "both versions serve some users");
    // A path no route matches is refused the same way.
    assert_eq!(h2_get(&rig, "/nothing", &[]).0, 404);
    // The access log says which protocol each request came in.
    let log = std::path::Path::new(&rig.proxy.access_log);
    assert!(eventually(std::time::Duration::from_secs(5), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.contains("\"protocol\":\"HTTP/2.0\"") && text.contains("\"protocol\":\"HTTP/1.1\"")
    }));
}

fn http1_keeps_working_next_to_http2_on_the_same_listener() {
    let rig = start();
    let agent = client();
    for _ in 0..3 {
        assert_eq!(h2_get(&rig, "/api/x", &[("x-version", "beta")]).1, "v2");
        let r = get(&agent, &rig.proxy.url("/api/x"), &[("X-Version", "beta")]);
        assert_eq!((r.status, r.version()), (200, "v2".to_string()));
    }
}

on_every_path!(
    http2_reaches_the_version_its_rules_and_sticky_bucket_say,
    http1_keeps_working_next_to_http2_on_the_same_listener,
    with_h2c_off_the_preface_is_refused_as_a_malformed_request
);

fn with_h2c_off_the_preface_is_refused_as_a_malformed_request() {
    use std::io::{Read, Write};
    let v1 = backend("v1");
    let proxy = ProxyProcess::start_full(
        &format!(
            "upstreams:\n  v1: {{backends: [\"{}\"]}}\nroutes:\n  - name: api\n    match: {{path_prefix: /}}\n    split: {{targets: {{v1: 100}}}}\n",
            v1.addr
        ),
        "off",
        "  h2c: false\n",
        std::process::Stdio::null(),
    );
    let mut tcp = std::net::TcpStream::connect(proxy.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(v1.control.requests(), 0);
}
