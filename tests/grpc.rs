//! gRPC through a canary split, with real tonic servers and clients over h2c: unary, server-streaming
//! and bidi calls reach the version their metadata and sticky bucket say, with trailers intact; a
//! canary answering UNAVAILABLE counts as errors in stats and metrics; with no healthy backend the
//! client gets a gRPC UNAVAILABLE from Switchyard itself. On both request paths.
#![allow(clippy::unwrap_used, clippy::result_large_err)] // tonic's API returns its Status by value

mod common;
use common::*;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::ProstCodec;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(string, tag = "2")]
    version: String,
}

/// `test.Echo`: `Unary`, `ServerStream` (three answers) and `Bidi` (one answer per message), each
/// answer naming the version; or every call failing with `fail`.
#[derive(Clone)]
struct Echo {
    version: &'static str,
    fail: Option<tonic::Code>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

impl Echo {
    fn answer(&self, text: String) -> Result<Msg, Status> {
        match self.fail {
            Some(code) => Err(Status::new(code, format!("{} is failing", self.version))),
            None => Ok(Msg {
                text,
                version: self.version.to_string(),
            }),
        }
    }
}

struct Unary(Echo);
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move { echo.answer(request.into_inner().text).map(Response::new) })
    }
}

struct ServerStream(Echo);
impl tonic::server::ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move {
            let text = request.into_inner().text;
            let first = echo.answer(text.clone())?;
            let answers: Vec<Result<Msg, Status>> = (0..3)
                .map(|i| {
                    Ok(Msg {
                        text: format!("{text} {i}"),
                        version: first.version.clone(),
                    })
                })
                .collect();
            Ok(Response::new(
                Box::pin(tokio_stream::iter(answers)) as MsgStream
            ))
        })
    }
}

struct Bidi(Echo);
impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<Response<MsgStream>, Status>;
    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        let echo = self.0.clone();
        Box::pin(async move {
            let incoming = request.into_inner();
            let out = incoming.map(move |m| m.and_then(|m| echo.answer(m.text)));
            Ok(Response::new(Box::pin(out) as MsgStream))
        })
    }
}

impl<B> Service<http::Request<B>> for Echo
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let echo = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Unary(echo), req).await,
                "/test.Echo/ServerStream" => grpc.server_streaming(ServerStream(echo), req).await,
                "/test.Echo/Bidi" => grpc.streaming(Bidi(echo), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server on its own runtime; stops with the test process.
struct GrpcBackend {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn grpc_backend(version: &'static str, fail: Option<tonic::Code>) -> GrpcBackend {
    let (runtime, listener) = server_runtime();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(Echo { version, fail })
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    GrpcBackend {
        addr,
        _runtime: runtime,
    }
}

async fn channel(proxy: &ProxyProcess) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn with_metadata<T>(message: T, metadata: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (k, v) in metadata {
        request.metadata_mut().insert(*k, v.parse().unwrap());
    }
    request
}

async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    metadata: &[(&'static str, &str)],
) -> Result<Msg, Status> {
    grpc.ready().await.unwrap();
    let msg = Msg {
        text: "hello".into(),
        version: String::new(),
    };
    grpc.unary(
        with_metadata(msg, metadata),
        http::uri::PathAndQuery::from_static("/test.Echo/Unary"),
        ProstCodec::default(),
    )
    .await
    .map(Response::into_inner)
}

fn config(v1: SocketAddr, v2: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"admin:
  listen: "{admin}"
  tokens: {{ops: {}}}
upstreams:
  v1: {{protocol: h2c, backends: ["{v1}"]}}
  v2: {{protocol: h2c, backends: ["{v2}"]}}
routes:
  - name: echo
    match: {{path_prefix: /test.Echo}}
    rules:
      - when: {{header: {{x-version: beta}}}}
        to: v2
    split: {{targets: {{v1: 50, v2: 50}}, baseline: v1, sticky: [header:x-user-id]}}
"#,
        sha256_hex("ops-token")
    )
}

fn unary_server_stream_and_bidi_calls_reach_their_version_with_trailers_intact() {
    let (v1, v2) = (grpc_backend("v1", None), grpc_backend("v2", None));
    let proxy = ProxyProcess::start(&config(v1.addr, v2.addr, free_addr()));
    client_runtime().block_on(async {
        let mut grpc = channel(&proxy).await;
        // tonic reads the status from the trailers: an Ok is a call whose trailers came through.
        let beta = unary(&mut grpc, &[("x-version", "beta")]).await.unwrap();
        assert_eq!((beta.text.as_str(), beta.version.as_str()), ("hello", "v2"));
        // Sticky: one user, one version, call after call; both versions serve some users.
        let mut seen = std::collections::HashSet::new();
        for user in 0..30 {
            let user = format!("user-{user}");
            let first = unary(&mut grpc, &[("x-user-id", &user)]).await.unwrap();
            let again = unary(&mut grpc, &[("x-user-id", &user)]).await.unwrap();
            assert_eq!(first.version, again.version, "{user}");
            seen.insert(first.version);
        }
        assert_eq!(seen.len(), 2);

        grpc.ready().await.unwrap();
        let stream = grpc
            .server_streaming(
                with_metadata(
                    Msg {
                        text: "tick".into(),
                        version: String::new(),
                    },
                    &[("x-version", "beta")],
                ),
                http::uri::PathAndQuery::from_static("/test.Echo/ServerStream"),
                ProstCodec::<Msg, Msg>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let answers: Vec<Msg> = stream.map(|m| m.unwrap()).collect().await;
        let texts: Vec<&str> = answers.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["tick 0", "tick 1", "tick 2"]);
        assert!(answers.iter().all(|m| m.version == "v2"));

        // Bidi: each message is answered while the call is still open.
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(4);
        grpc.ready().await.unwrap();
        let call = grpc.streaming(
            with_metadata(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &[("x-version", "beta")],
            ),
            http::uri::PathAndQuery::from_static("/test.Echo/Bidi"),
            ProstCodec::<Msg, Msg>::default(),
        );
        tx.send(Msg {
            text: "ping 1".into(),
            version: String::new(),
        })
        .await
        .unwrap();
        let mut replies = call.await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            // The first reply arrives before the client has finished sending.
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (first.text.as_str(), first.version.as_str()),
            ("ping 1", "v2")
        );
        tx.send(Msg {
            text: "ping 2".into(),
            version: String::new(),
        })
        .await
        .unwrap();
        drop(tx);
        let second = replies.message().await.unwrap().unwrap();
        assert_eq!(second.text, "ping 2");
        assert!(
            replies.message().await.unwrap().is_none(),
            "the call ends cleanly"
        );
    });
}

fn a_canary_answering_unavailable_shows_up_as_errors_in_stats_and_metrics() {
    let (v1, v2) = (
        grpc_backend("v1", None),
        grpc_backend("v2", Some(tonic::Code::Unavailable)),
    );
    let admin = free_addr();
    let proxy = ProxyProcess::start(&config(v1.addr, v2.addr, admin));
    client_runtime().block_on(async {
        let mut grpc = channel(&proxy).await;
        for _ in 0..10 {
            let failed = unary(&mut grpc, &[("x-version", "beta")])
                .await
                .unwrap_err();
            assert_eq!(failed.code(), tonic::Code::Unavailable);
            assert_eq!(failed.message(), "v2 is failing");
        }
        // Calls v1 answers end with grpc-status 0 in their trailers.
        for user in 0..20 {
            let _ = unary(&mut grpc, &[("x-user-id", &format!("user-{user}"))]).await;
        }
    });
    let agent = client();
    let auth = "Bearer ops-token";
    let stats = get(
        &agent,
        &format!("http://{admin}/v1/stats?route=echo"),
        &[("Authorization", auth)],
    )
    .json();
    let v2_stats = stats["routes"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "v2")
        .unwrap()
        .clone();
    assert!(
        v2_stats["last_60s"]["status_5xx"].as_u64().unwrap() >= 10,
        "{v2_stats:#}"
    );
    assert!(v2_stats["last_60s"]["error_rate"].as_f64().unwrap() > 0.5);
    let metrics = get(&agent, &format!("http://{admin}/metrics"), &[]).body;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchyard_requests_total{")
                && l.contains("target=\"v2\"")
                && l.contains("grpc_status=\"14\"")
        })
        .unwrap_or_else(|| panic!("no grpc_status 14 sample:\n{metrics}"));
    // HTTP 200 (a gRPC call's transport succeeded), counted as a server error by its grpc-status.
    assert!(
        line.contains("code=\"200\"") && line.contains("code_class=\"5xx\""),
        "{line}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_requests_total{")
                && l.contains("target=\"v1\"")
                && l.contains("code=\"200\",code_class=\"2xx\"")
                && l.contains("grpc_status=\"0\"")),
        "OK calls are counted from their trailers:\n{metrics}"
    );
}

fn no_healthy_backend_gives_a_grpc_client_unavailable() {
    // The beta rule's target and the baseline it would fall back to both refuse connections.
    let (dead, baseline_dead) = (free_addr(), free_addr());
    let proxy = ProxyProcess::start(&config(baseline_dead, dead, free_addr()));
    client_runtime().block_on(async {
        let mut grpc = channel(&proxy).await;
        let failed = unary(&mut grpc, &[("x-version", "beta")])
            .await
            .unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
        assert!(!failed.message().is_empty());
    });
}

fn unary_calls_are_mirrored_and_compared_on_grpc_status_and_message_bytes() {
    let (v1, same, failing) = (
        grpc_backend("v1", None),
        grpc_backend("v1", None),
        grpc_backend("v3", Some(tonic::Code::Unavailable)),
    );
    let admin = free_addr();
    let proxy = ProxyProcess::start(&format!(
        r#"admin:
  listen: "{admin}"
  tokens: {{ops: {}}}
upstreams:
  v1: {{protocol: h2c, backends: ["{}"]}}
  same: {{protocol: h2c, backends: ["{}"]}}
  failing: {{protocol: h2c, backends: ["{}"]}}
routes:
  - name: same
    match: {{path_prefix: /test.Echo/Unary}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: same, percent: 100, methods: [POST], compare: {{}}}}
  - name: failing
    match: {{path_prefix: /test.Echo}}
    split: {{targets: {{v1: 100}}}}
    mirror: {{to: failing, percent: 100, methods: [POST], compare: {{}}}}
"#,
        sha256_hex("ops-token"),
        v1.addr,
        same.addr,
        failing.addr
    ));
    client_runtime().block_on(async {
        let mut grpc = channel(&proxy).await;
        for _ in 0..5 {
            // The client is answered by v1, whatever its shadow does.
            assert_eq!(unary(&mut grpc, &[]).await.unwrap().version, "v1");
        }
        grpc.ready().await.unwrap();
        let answers: Vec<Msg> = grpc
            .server_streaming(
                Request::new(Msg {
                    text: "tick".into(),
                    version: String::new(),
                }),
                http::uri::PathAndQuery::from_static("/test.Echo/ServerStream"),
                ProstCodec::<Msg, Msg>::default(),
            )
            .await
            .unwrap()
            .into_inner()
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(answers.len(), 3);
    });
    let agent = client();
    let diffs = |route: &str| {
        get(
            &agent,
            &format!("http://{admin}/v1/mirror/diffs?route={route}"),
            &[("Authorization", "Bearer ops-token")],
        )
        .json()
    };
    let compared = |result: &str, target: &str| {
        let metrics = get(&agent, &format!("http://{admin}/metrics"), &[]).body;
        metrics
            .lines()
            .find(|l| {
                l.starts_with("switchyard_mirror_compare_total{")
                    && l.contains(&format!("target=\"{target}\""))
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The same answers (same message bytes, grpc-status 0 in both trailers) match.
    let matched = eventually(Duration::from_secs(5), || compared("match", "same") >= 5.0);
    let mirror_lines: Vec<String> = get(&agent, &format!("http://{admin}/metrics"), &[])
        .body
        .lines()
        .filter(|l| l.starts_with("switchyard_mirror") && !l.ends_with(" 0"))
        .map(str::to_string)
        .collect();
    let log: Vec<String> = proxy
        .log()
        .lines()
        .filter(|l| l.contains("mirror of") || l.contains("Fail to proxy"))
        .map(str::to_string)
        .collect();
    assert!(matched, "{:#}\n{mirror_lines:#?}\n{log:#?}", diffs("same"));
    // A shadow answering UNAVAILABLE differs in its gRPC status.
    assert!(eventually(Duration::from_secs(5), || compared(
        "status", "failing"
    ) >= 1.0));
    let failing_diffs = diffs("failing");
    assert_eq!(
        failing_diffs["diffs"][0]["diff"], "grpc-status: primary 0 != shadow 14",
        "{failing_diffs:#}"
    );
}

/// What a real gRPC client (tonic) reports for each way a call fails at or behind the proxy
/// (tests/grpc_errors.rs reads the same endings frame by frame, over TLS too, and the deadline: a
/// tonic client holds the same deadline and ends the call itself as CANCELLED at the same moment).
fn grpc_clients_read_the_status_each_failure_means() {
    let edge = edge_upstream();
    let proxy = ProxyProcess::start(&format!(
        r#"upstreams:
  edge: {{protocol: h2c, backends: ["{}"]}}
routes:
  - name: edge
    match: {{path_prefix: /t.Edge}}
    split: {{targets: {{edge: 100}}}}
"#,
        edge.addr
    ));
    client_runtime().block_on(async {
        let grpc = channel(&proxy).await;
        let call = |path: &'static str| {
            let request = Request::new(Msg::default());
            let path = http::uri::PathAndQuery::from_static(path);
            let mut grpc = grpc.clone();
            async move {
                grpc.ready().await.unwrap();
                let answer: Result<Response<Msg>, Status> =
                    grpc.unary(request, path, ProstCodec::default()).await;
                answer.map(|_| ()).map_err(|s| s.code())
            }
        };
        assert_eq!(call("/t.Edge/Fine").await, Ok(()));
        assert_eq!(
            call("/t.Edge/ResetBefore").await,
            Err(tonic::Code::Internal)
        );
        assert_eq!(call("/t.Edge/Refuse").await, Err(tonic::Code::Unavailable));
        assert_eq!(call("/t.Edge/ResetAfter").await, Err(tonic::Code::Internal));
        assert_eq!(call("/nowhere/Call").await, Err(tonic::Code::Unimplemented));
    });
}

on_both_paths!(
    grpc_clients_read_the_status_each_failure_means,
    unary_calls_are_mirrored_and_compared_on_grpc_status_and_message_bytes,
    unary_server_stream_and_bidi_calls_reach_their_version_with_trailers_intact,
    a_canary_answering_unavailable_shows_up_as_errors_in_stats_and_metrics,
    no_healthy_backend_gives_a_grpc_client_unavailable
);

/// The demo's greeter messages (`conf/demo.proto`).
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(string, tag = "2")]
    version: String,
}

async fn hello(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    name: &str,
    metadata: &[(&'static str, &str)],
) -> Result<HelloReply, Status> {
    grpc.ready().await.unwrap();
    grpc.unary(
        with_metadata(HelloRequest { name: name.into() }, metadata),
        http::uri::PathAndQuery::from_static("/demo.Greeter/Hello"),
        ProstCodec::<HelloRequest, HelloReply>::default(),
    )
    .await
    .map(Response::into_inner)
}

/// `switchyard demo` (the README's first command), as a user tries it: its HTTP canary and its gRPC
/// canary, through the one listener.
#[test]
fn the_demo_serves_its_http_and_grpc_canaries() {
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("demo")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(15), || {
        std::net::TcpStream::connect("127.0.0.1:8080").is_ok()
    });
    let result = std::panic::catch_unwind(|| {
        assert!(up, "the demo did not listen on 127.0.0.1:8080");
        let agent = client();
        let beta = get(
            &agent,
            "http://127.0.0.1:8080/api/payments",
            &[("X-Version", "beta")],
        );
        assert_eq!(beta.version(), "payments-v2");
        client_runtime().block_on(async {
            let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:8080")
                .connect()
                .await
                .unwrap();
            let mut grpc = tonic::client::Grpc::new(channel);
            let reply = hello(&mut grpc, "tester", &[("x-version", "beta")])
                .await
                .unwrap();
            assert_eq!(reply.message, "hello tester");
            assert_eq!(reply.version, "greeter-v2");
            let alice = hello(&mut grpc, "alice", &[("x-user-id", "alice")])
                .await
                .unwrap();
            let again = hello(&mut grpc, "alice", &[("x-user-id", "alice")])
                .await
                .unwrap();
            assert_eq!(alice.version, again.version, "sticky per x-user-id");
            let failed = hello(&mut grpc, "fail", &[("x-version", "beta")])
                .await
                .unwrap_err();
            assert_eq!(failed.code(), tonic::Code::Unavailable);
        });
    });
    let _ = demo.kill();
    let _ = demo.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
