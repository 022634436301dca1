use super::*;

/// What the classifier makes of `head`: the back end and where the request ends, or the refusal
/// with the target it read.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Engine(u64),
    Pipeline(Option<u64>),
    Refused(Refusal, Option<String>),
}

fn got(head: &[u8], max: usize, engine: bool) -> Got {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    match classify(head, &mut fields, max, engine) {
        Head::Accepted(a) => Got::Engine(a.ends()),
        Head::Pipeline(ends) => Got::Pipeline(ends),
        Head::Refused(why, seen) => Got::Refused(why, seen.map(|(_, t)| t.to_string())),
    }
}

#[test]
fn a_request_takes_its_head_and_declared_body_and_leaves_the_next() {
    let one = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    let two = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    let both = [&one[..], &two[..]].concat();
    let n = |b: &[u8]| b.len() as u64;
    assert_eq!(got(&both, 32768, true), Got::Engine(n(one)));
    assert_eq!(got(two, 32768, true), Got::Engine(n(two)));
    // Body bytes still to come.
    assert_eq!(got(&one[..one.len() - 1], 32768, true), Got::Engine(n(one)));
    // With the engine off, the same heads go to the pipeline, fenced at the same place.
    assert_eq!(got(&both, 32768, false), Got::Pipeline(Some(n(one))));
    assert_eq!(got(two, 32768, false), Got::Pipeline(Some(n(two))));
}

#[test]
fn what_the_engine_does_not_relay_goes_to_the_pipeline() {
    // Only the pipeline knows where these end.
    let chunked = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET";
    assert_eq!(got(chunked, 32768, true), Got::Pipeline(None));
    let upgrade =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(got(upgrade, 32768, true), Got::Pipeline(None));
    let connect = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\nxyz";
    assert_eq!(got(connect, 32768, true), Got::Pipeline(None));
    // These end where their declared length says.
    let expect =
        b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(
        got(expect, 32768, true),
        Got::Pipeline(Some(expect.len() as u64 + 2))
    );
    let absolute = b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        got(absolute, 32768, true),
        Got::Pipeline(Some(absolute.len() as u64))
    );
    // HTTP/1.0 may leave Host out.
    let old = b"GET /a HTTP/1.0\r\n\r\n";
    assert_eq!(got(old, 32768, true), Got::Pipeline(Some(old.len() as u64)));
}

#[test]
fn unparsable_or_oversized_heads_are_refused() {
    assert_eq!(
        got(b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n", 32768, true),
        Got::Refused(Refusal::MalformedHead, None)
    );
    assert_eq!(
        got(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 16, true),
        Got::Refused(Refusal::HeadTooLarge, None)
    );
    let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
    for engine in [true, false] {
        assert_eq!(
            got(head.as_bytes(), 32768, engine),
            Got::Refused(Refusal::HeadTooLarge, None)
        );
    }
}

#[test]
fn the_shared_rules_see_the_head_as_sent_whichever_back_end_serves_it() {
    let path = Some("/a".to_string());
    for engine in [true, false] {
        let refused = |head: &[u8]| got(head, 32768, engine);
        assert_eq!(
            refused(b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
            Got::Refused(Refusal::DuplicateHost, path.clone())
        );
        assert_eq!(
            refused(
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
            Got::Refused(Refusal::InvalidLength, path.clone())
        );
        assert_eq!(
            refused(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Got::Refused(Refusal::LengthWithTransferEncoding, path.clone())
        );
        assert_eq!(
            refused(b"GET /a/%2e%2e/%2e%2e/b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Got::Refused(Refusal::AboveRoot, Some("/a/%2e%2e/%2e%2e/b".to_string()))
        );
        assert_eq!(
            refused(b"GET /a HTTP/1.1\r\n\r\n"),
            Got::Refused(Refusal::MissingHost, path.clone())
        );
    }
    // Equal lengths collapse into one.
    let same = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(got(same, 32768, true), Got::Engine(same.len() as u64));
}

#[test]
fn a_refused_targets_query_is_never_kept_for_the_log() {
    let (method, path) = seen_for_log(("GET", "/a?token=secret"));
    assert_eq!((method, path.as_str()), (http::Method::GET, "/a"));
}

#[test]
fn a_head_ends_at_its_empty_line() {
    assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(head_complete(b"GET / HTTP/1.1\nHost: x\n\n"));
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    assert!(!head_complete(b""));
    // Mixed endings: a CRLF line then a bare LF, or a bare LF line then CRLF.
    assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\n"));
    assert!(head_complete(b"GET / HTTP/1.1\nHost: x\n\r\n"));
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r"));
    assert!(!head_complete(b"GET / HTTP/1.1\nHost: x\n\r"));
    // Whatever follows the first empty line does not matter.
    assert!(head_complete(b"GET / HTTP/1.1\n\nbody\r\n\r\n"));
    assert!(head_complete(b"GET / HTTP/1.1\n\nbody"));
}

#[test]
fn an_answer_head_says_what_the_answer_is() {
    let mut out = Vec::new();
    answer_head(&mut out, 404, "application/json", 20, Some("abc"), false);
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 20\r\nx-request-id: abc\r\n\r\n"
    );
    answer_head(&mut out, 400, "application/problem+json", 2, None, true);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
    );
}
