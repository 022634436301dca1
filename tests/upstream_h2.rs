//! Upstreams over HTTP/2: `protocol: h2c` (prior knowledge) and `protocol: h2` (TLS, ALPN h2), next to
//! plain HTTP/1.1 upstreams on the same route, from HTTP/1.1 clients on both request paths. The
//! backends are real HTTP/2 servers (the `h2` crate); health checks speak each pool's protocol.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A real HTTP/2 server answering every request with `{"version": NAME, "protocol": "HTTP/2.0"}`;
/// over TLS with ALPN h2 when `tls`. Counts the requests it served (health checks included).
struct H2Backend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

fn h2_backend(name: &'static str, tls: bool) -> H2Backend {
    let (runtime, listener) = server_runtime();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let acceptor = tls.then(tls_acceptor);
    let count = served.clone();
    runtime.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(tcp).await {
                            serve(tls, name, count).await;
                        }
                    }
                    None => serve(tcp, name, count).await,
                }
            });
        }
    });
    H2Backend {
        addr,
        served,
        _runtime: runtime,
    }
}

async fn serve<S>(io: S, name: &'static str, count: Arc<AtomicU64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        count.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "version": name,
            "protocol": "HTTP/2.0",
            "path": request.uri().path(),
        })
        .to_string();
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        if let Ok(mut stream) = respond.send_response(response, false) {
            let _ = stream.send_data(bytes::Bytes::from(body), true);
        }
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let (_, cert, key) = test_pki();
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut std::fs::read(key).unwrap().as_slice())
        .unwrap()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn each_request_reaches_its_version_over_the_protocol_its_upstream_speaks() {
    let v1 = backend("v1");
    let (v2, v3) = (h2_backend("v2", false), h2_backend("v3", true));
    let admin = free_addr();
    let token = "ops-token";
    let proxy = ProxyProcess::start(&format!(
        r#"admin:
  listen: "{admin}"
  tokens: {{ops: {}}}
upstreams:
  v1: {{backends: ["{}"]}}
  v2:
    protocol: h2c
    backends: ["{}"]
    health_check: {{path: /healthz, interval: 100ms}}
  v3:
    protocol: h2
    tls: {{sni: localhost, verify: false}}
    backends: ["{}"]
    health_check: {{path: /healthz, interval: 100ms}}
routes:
  - name: api
    match: {{path_prefix: /api}}
    rules:
      - when: {{header: {{X-Version: h2c}}}}
        to: v2
      - when: {{header: {{X-Version: h2}}}}
        to: v3
    split: {{targets: {{v1: 100}}}}
"#,
        sha256_hex(token),
        v1.addr,
        v2.addr,
        v3.addr
    ));
    let agent = client();
    let url = proxy.url("/api/thing");
    for _ in 0..5 {
        let plain = get(&agent, &url, &[]);
        assert_eq!((plain.status, plain.version()), (200, "v1".to_string()));
        let h2c = get(&agent, &url, &[("X-Version", "h2c")]);
        assert_eq!(
            (h2c.status, h2c.version()),
            (200, "v2".to_string()),
            "{}",
            h2c.body
        );
        assert_eq!(h2c.json()["path"], "/api/thing");
        let h2 = get(&agent, &url, &[("X-Version", "h2")]);
        assert_eq!(
            (h2.status, h2.version()),
            (200, "v3".to_string()),
            "{}",
            h2.body
        );
    }
    // Health checks reach both HTTP/2 pools over their own protocol.
    let status = || {
        let url = format!("http://{admin}/v1/status");
        let auth = format!("Bearer {token}");
        get(&agent, &url, &[("Authorization", &auth)]).json()
    };
    assert!(eventually(Duration::from_secs(5), || {
        let s = status();
        ["v2", "v3"].iter().all(|name| {
            s["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["name"] == *name)
                .is_some_and(|u| {
                    u["backends"][0]["up"] == true && u["backends"][0]["checked"] == true
                })
        })
    }));
    assert!(v2.served.load(Ordering::Relaxed) > 5);
    assert!(v3.served.load(Ordering::Relaxed) > 5);
}

#[test]
fn an_h2_upstream_without_tls_or_an_h2c_one_with_it_is_refused() {
    let (code, out) = {
        let dir = std::env::temp_dir().join(format!("switchyard-h2-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.yaml");
        std::fs::write(
            &file,
            "upstreams:\n  a: {protocol: h2, backends: [\"127.0.0.1:1\"]}\n  b: {protocol: h2c, tls: {sni: x}, backends: [\"127.0.0.1:2\"]}\n  c: {tls: {}, backends: [\"127.0.0.1:3\"]}\nroutes:\n  - name: r\n    split: {targets: {a: 1, b: 1, c: 1}, baseline: a}\n",
        )
        .unwrap();
        switchyard(&["check", "-c", file.to_str().unwrap()])
    };
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstreams.a.protocol: h2 is HTTP/2 over TLS"),
        "{out}"
    );
    assert!(
        out.contains("upstreams.b.tls: h2c is HTTP/2 without TLS"),
        "{out}"
    );
    assert!(
        out.contains("upstreams.c.tls.sni: a verified TLS upstream needs"),
        "{out}"
    );
}

/// A TLS upstream verified against a private CA (`tls.ca`): reached when its certificate is signed by
/// that CA for the name in `sni`; refused with 502 when the CA is not given (the system's roots do not
/// know it) or the name does not match.
fn a_tls_upstream_is_verified_against_its_private_ca() {
    let backend = h2_backend("private", true);
    let ca = test_pki().0.display().to_string();
    let proxy = ProxyProcess::start(&format!(
        r#"upstreams:
  trusted:
    protocol: h2
    tls: {{sni: localhost, ca: "{ca}"}}
    backends: ["{addr}"]
  unknown-ca:
    protocol: h2
    tls: {{sni: localhost}}
    backends: ["{addr}"]
  other-name:
    protocol: h2
    tls: {{sni: other.example, ca: "{ca}"}}
    backends: ["{addr}"]
routes:
  - name: api
    match: {{path_prefix: /api}}
    rules:
      - when: {{header: {{X-To: unknown-ca}}}}
        to: unknown-ca
      - when: {{header: {{X-To: other-name}}}}
        to: other-name
    split: {{targets: {{trusted: 100}}}}
"#,
        addr = backend.addr
    ));
    let agent = client();
    let url = proxy.url("/api/x");
    for _ in 0..3 {
        let r = get(&agent, &url, &[]);
        assert_eq!(
            (r.status, r.version()),
            (200, "private".to_string()),
            "{}",
            r.body
        );
    }
    let served = backend.served.load(Ordering::Relaxed);
    for to in ["unknown-ca", "other-name"] {
        let r = get(&agent, &url, &[("X-To", to)]);
        assert_eq!(r.status, 502, "{to}: {}", r.body);
    }
    assert_eq!(
        backend.served.load(Ordering::Relaxed),
        served,
        "a backend that failed verification was sent a request"
    );
}

#[test]
fn a_bad_private_ca_is_refused_by_check() {
    let dir = std::env::temp_dir().join(format!("switchyard-ca-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-pem.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let file = dir.join("bad.yaml");
    let ca = test_pki().0.display().to_string();
    std::fs::write(
        &file,
        format!(
            "upstreams:\n  a: {{tls: {{sni: x, ca: {}/missing.pem}}, backends: [\"127.0.0.1:1\"]}}\n  b: {{tls: {{sni: x, ca: {}}}, backends: [\"127.0.0.1:2\"]}}\n  c: {{tls: {{sni: x, verify: false, ca: {ca}}}, backends: [\"127.0.0.1:3\"]}}\nroutes:\n  - name: r\n    split: {{targets: {{a: 1, b: 1, c: 1}}, baseline: a}}\n",
            dir.display(),
            not_pem.display()
        ),
    )
    .unwrap();
    let (code, out) = switchyard(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("upstreams.a.tls.ca: cannot read"), "{out}");
    assert!(
        out.contains("upstreams.b.tls.ca:") && out.contains("no PEM certificate"),
        "{out}"
    );
    assert!(
        out.contains("upstreams.c.tls.ca: ca is what certificates are verified against"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

on_both_paths!(
    each_request_reaches_its_version_over_the_protocol_its_upstream_speaks,
    a_tls_upstream_is_verified_against_its_private_ca,
    a_split_across_http1_and_http2_upstreams_keeps_its_weights,
);
on_h2_paths!(
    each_request_reaches_its_version_over_the_protocol_its_upstream_speaks,
    a_tls_upstream_is_verified_against_its_private_ca,
    a_split_across_http1_and_http2_upstreams_keeps_its_weights,
);

/// A 50/50 split without a sticky key between an HTTP/1.1 pool and an h2c one: each gets its share of
/// 600 requests (within five standard deviations, 61), however the request path hands requests
/// between the engine and Pingora's pipeline. Were a request given up by the engine drawn again, the
/// h2c pool would get a quarter.
fn a_split_across_http1_and_http2_upstreams_keeps_its_weights() {
    let v1 = backend("v1");
    let v2 = h2_backend("v2", false);
    let proxy = ProxyProcess::start(&format!(
        "upstreams:\n  v1: {{backends: [\"{}\"]}}\n  v2: {{protocol: h2c, backends: [\"{}\"]}}\nroutes:\n  - name: api\n    split: {{baseline: v1, targets: {{v1: 50, v2: 50}}}}\n",
        v1.addr, v2.addr
    ));
    let agent = client();
    let url = proxy.url("/api/x");
    let n = 600;
    let on_v2 = (0..n)
        .filter(|_| {
            let r = get(&agent, &url, &[]);
            assert_eq!(r.status, 200, "{}", r.body);
            r.version() == "v2"
        })
        .count();
    assert!(
        (239..=361).contains(&on_v2),
        "{:?}: {on_v2} of {n} on v2",
        request_path()
    );
}
