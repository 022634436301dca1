//! Differential tests: generated and mutated request heads go to the front door's classifier as the
//! engine takes them (httparse and the shared rules, [`classify`]) and to Pingora's pipeline as it
//! is served (the front door's classifier with the engine off, then Pingora's own parser in a real
//! `ServerSession` reading from a loopback socket, then the same rules as the pipeline applies them). Wherever the engine serves or refuses a request itself,
//! the two must agree on accepting or refusing it (and why), on the path it routes on, the host and
//! the body length it derives. Bounded: a fixed number of cases per run.

use crate::front::{classify, Head, PlainTcp, MAX_FIELDS};
use crate::policy::request::Refusal;
use crate::proxy::check_request;
use pingora::protocols::http::ServerSession;
use proptest::prelude::*;
use std::mem::MaybeUninit;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What a parser made of a head.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Refused(Refusal),
    Accepted {
        route_path: String,
        host: String,
        length: Option<u64>,
    },
}

fn engine(head: &[u8]) -> Option<Verdict> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    match classify(head, &mut fields, 32 * 1024, true) {
        Head::Pipeline(_) => None,
        Head::Refused(why, _) => Some(Verdict::Refused(why)),
        Head::Accepted(a) => Some(Verdict::Accepted {
            route_path: a.target.route_path.to_string(),
            host: a.host.to_string(),
            length: a.length,
        }),
    }
}

/// The front door with the engine off, then Pingora's parser over a real socket, then the
/// pipeline's checks (`check_request`).
async fn pingora(head: &[u8]) -> Verdict {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    match classify(head, &mut fields, 32 * 1024, false) {
        Head::Refused(why, _) => return Verdict::Refused(why),
        Head::Accepted(_) => unreachable!("the engine is off"),
        Head::Pipeline(_) => {}
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (server, peer) = listener.accept().await.expect("accept");
    client.write_all(head).await.expect("write");
    let mut session = ServerSession::new_http1(Box::new(PlainTcp::new(server, peer)));
    let read = tokio::time::timeout(Duration::from_secs(2), session.read_request()).await;
    if !matches!(read, Ok(Ok(true))) {
        return Verdict::Refused(Refusal::MalformedHead);
    }
    let req = session.req_header();
    match check_request(req, 32 * 1024) {
        Err(why) => Verdict::Refused(why),
        Ok(checked) => {
            let length = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next()?.trim().parse().ok());
            Verdict::Accepted {
                route_path: checked
                    .route_path
                    .unwrap_or_else(|| req.uri.path().to_string()),
                host: req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                length,
            }
        }
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_string()),
        Just("internal".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just(String::new()),
        Just("%69nternal".to_string()),
        Just("%2F".to_string()),
        Just("%2e%2e".to_string()),
        Just("%2E".to_string()),
        Just("a;b=1".to_string()),
        Just("..;".to_string()),
        Just("%00".to_string()),
        Just("%7E".to_string()),
        Just("%zz".to_string()),
        Just("%41%42".to_string()),
        Just("x%20y".to_string()),
        Just("x y".to_string()),
        "[a-zA-Z0-9._~-]{1,6}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(segment(), 0..5),
        prop_oneof![Just(""), Just("?q=1"), Just("?a=%2F&b"), Just("?")],
        prop_oneof![Just("/"), Just("/"), Just("/"), Just(""), Just("//")],
    )
        .prop_map(|(segments, query, lead)| format!("{lead}{}{query}", segments.join("/")))
}

fn field_lines() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        Just("Host: a.test\r\n".to_string()),
        Just("Host: a.test\r\n".to_string()),
        Just(String::new()),
        Just("Host:\r\n".to_string()),
        Just("Host: a.test\r\nHost: b.test\r\n".to_string()),
        Just("Host: a.test\r\nhost: a.test\r\n".to_string()),
        Just("Host: a.test:8080\r\n".to_string()),
        Just("Host: a b\r\n".to_string()),
    ];
    let length = prop_oneof![
        Just(String::new()),
        Just(String::new()),
        Just("Content-Length: 5\r\n".to_string()),
        Just("Content-Length: 5\r\nContent-Length: 5\r\n".to_string()),
        Just("Content-Length: 5\r\nContent-Length: 6\r\n".to_string()),
        Just("Content-Length: 5, 5\r\n".to_string()),
        Just("Content-Length: +5\r\n".to_string()),
        Just("Content-Length: x\r\n".to_string()),
        Just("Content-Length: 0\r\n".to_string()),
    ];
    let coding = prop_oneof![
        Just(String::new()),
        Just(String::new()),
        Just(String::new()),
        Just("Transfer-Encoding: chunked\r\n".to_string()),
        Just("Transfer-Encoding: gzip\r\n".to_string()),
    ];
    let other = prop_oneof![
        Just(String::new()),
        Just("Connection: close\r\n".to_string()),
        Just("X-Thing: 1\r\n".to_string()),
        Just("X-Switchyard-Client: evil\r\n".to_string()),
        Just("Bad Name: v\r\n".to_string()),
        Just("X-Cr: a\rb\r\n".to_string()),
        Just("Upgrade: websocket\r\nConnection: upgrade\r\n".to_string()),
    ];
    (host, length, coding, other).prop_map(|(a, b, c, d)| format!("{a}{d}{b}{c}"))
}

fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("HEAD"), Just("PUT")],
        target(),
        field_lines(),
    )
        .prop_map(|(method, target, fields)| {
            format!("{method} {target} HTTP/1.1\r\n{fields}\r\n").into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_and_pingora_agree_on_every_head_the_engine_serves(head in head()) {
        let Some(ours) = engine(&head) else {
            // Handed to Pingora's pipeline: its verdict is the only one.
            return Ok(());
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let theirs = rt.block_on(pingora(&head));
        prop_assert_eq!(ours, theirs, "head {:?}", String::from_utf8_lossy(&head));
    }
}

/// The harness itself: known heads give the verdicts they should on both parsers, so the property
/// above compares real verdicts, not two refusals.
#[test]
fn known_heads_are_judged_alike_by_both_parsers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let accepted = |path: &str, length: Option<u64>| Verdict::Accepted {
        route_path: path.to_string(),
        host: "a.test".to_string(),
        length,
    };
    for (head, want) in [
        (
            &b"GET /api/x/../%69nternal HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
            accepted("/api/internal", None),
        ),
        (
            b"POST //a;v=1/b HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            accepted("/a/b", Some(5)),
        ),
        (
            b"GET /a%2Fb HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Verdict::Refused(Refusal::EncodedSeparator),
        ),
        (
            b"GET /a HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            Verdict::Refused(Refusal::DuplicateHost),
        ),
        (
            b"GET /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Verdict::Refused(Refusal::InvalidLength),
        ),
    ] {
        let text = String::from_utf8_lossy(head);
        assert_eq!(engine(head).as_ref(), Some(&want), "engine: {text}");
        assert_eq!(rt.block_on(pingora(head)), want, "pingora: {text}");
    }
}
