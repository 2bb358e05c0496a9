//! The corpus. Each case is raw bytes from a client, the statuses it must
//! be answered, and the exact bytes each upstream must receive (`{app}` is
//! the `app` upstream's address; `x-request-id` values, and `traceparent`
//! values other than [`TRACE`], are masked as `*`).
//!
//! Sources: RFC 9112 (request line §3, fields §5, length §6, chunked §7),
//! RFC 9110 (Host, Upgrade §7.8, hop-by-hop §7.6.1), RFC 3986 (targets,
//! dot segments), RFC 6455 §4.1 (WebSocket handshake), and the classes of
//! parser disagreement in HTTP Garden's published trophies (CL.TE, TE.CL,
//! bare LF and CR, chunk extensions and trailers, whitespace around
//! names, underscores, h2c upgrades).

pub struct Case {
    pub name: String,
    pub listener: &'static str,
    pub send: Vec<u8>,
    pub statuses: Vec<u16>,
    pub upstream: Vec<(&'static str, Vec<u8>)>,
}

fn case(
    name: impl Into<String>,
    send: impl AsRef<[u8]>,
    statuses: &[u16],
    upstream: Vec<(&'static str, Vec<u8>)>,
) -> Case {
    Case {
        name: name.into(),
        listener: "web",
        send: send.as_ref().to_vec(),
        statuses: statuses.to_vec(),
        upstream,
    }
}

/// Refused with `status`; nothing reaches any upstream.
fn refuse(name: impl Into<String>, send: impl AsRef<[u8]>, status: u16) -> Case {
    case(name, send, &[status], vec![])
}

/// Answered 200 by upstream `tag`, which receives `expect`.
fn pass(
    name: impl Into<String>,
    send: impl AsRef<[u8]>,
    tag: &'static str,
    expect: Vec<u8>,
) -> Case {
    case(name, send, &[200], vec![(tag, expect)])
}

/// What an upstream receives: `line` (method and target), the checked
/// authority as Host and X-Forwarded-Host, the kept client fields
/// (`kept`, each ending in CRLF), the gateway's fields, then `tail`
/// (framing fields, the empty line and the body).
fn up(line: &str, host: &str, kept: &str, tail: &str) -> Vec<u8> {
    up_traced(line, host, kept, "*", tail)
}

/// A valid `traceparent` a client sends: passed on as is, never masked.
pub const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// [`up`] with the `traceparent` the gateway sends (`*`: a new one).
fn up_traced(line: &str, host: &str, kept: &str, trace: &str, tail: &str) -> Vec<u8> {
    format!(
        "{line} HTTP/1.1\r\nhost: {host}\r\nx-forwarded-host: {host}\r\n{kept}\
         x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-request-id: *\r\n\
         traceparent: {trace}\r\n{tail}"
    )
    .into_bytes()
}

/// A plain GET as received upstream.
fn get(target: &str, host: &str) -> Vec<u8> {
    up(&format!("GET {target}"), host, "", "\r\n")
}

/// A POST whose body arrives as `body`, with its length.
fn post(target: &str, host: &str, body: &str) -> Vec<u8> {
    up(
        &format!("POST {target}"),
        host,
        "",
        &format!("content-length: {}\r\n\r\n{body}", body.len()),
    )
}

fn req(line: &str, fields: &str) -> Vec<u8> {
    format!("{line}\r\n{fields}\r\n").into_bytes()
}

pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(request_line());
    v.extend(targets());
    v.extend(authority());
    v.extend(paths());
    v.extend(lengths());
    v.extend(transfer_encoding());
    v.extend(chunked());
    v.extend(fields());
    v.extend(upgrades());
    v.extend(gateway_fields());
    v.extend(connections());
    v
}

fn request_line() -> Vec<Case> {
    let mut v = vec![
        pass(
            "plain GET",
            req("GET / HTTP/1.1", "Host: a\r\n"),
            "app",
            get("/", "a"),
        ),
        pass(
            "query",
            req("GET /x?q=1&r HTTP/1.1", "Host: a\r\n"),
            "app",
            get("/x?q=1&r", "a"),
        ),
        pass(
            "lower-case method is a token",
            req("get / HTTP/1.1", "Host: a\r\n"),
            "app",
            up("get /", "a", "", "\r\n"),
        ),
        pass(
            "extension method",
            req("PURGE /x HTTP/1.1", "Host: a\r\n"),
            "app",
            up("PURGE /x", "a", "", "\r\n"),
        ),
        pass(
            "HEAD",
            req("HEAD /x HTTP/1.1", "Host: a\r\n"),
            "app",
            up("HEAD /x", "a", "", "\r\n"),
        ),
        pass(
            "DELETE",
            req("DELETE /x HTTP/1.1", "Host: a\r\n"),
            "app",
            up("DELETE /x", "a", "", "\r\n"),
        ),
        pass(
            "OPTIONS *",
            req("OPTIONS * HTTP/1.1", "Host: a\r\n"),
            "app",
            up("OPTIONS *", "a", "", "\r\n"),
        ),
        pass(
            "an empty line before the request line is ignored",
            [&b"\r\n"[..], &req("GET / HTTP/1.1", "Host: a\r\n")].concat(),
            "app",
            get("/", "a"),
        ),
        refuse("'*' with GET", req("GET * HTTP/1.1", "Host: a\r\n"), 400),
        refuse(
            "CONNECT authority",
            req("CONNECT a:443 HTTP/1.1", "Host: a:443\r\n"),
            405,
        ),
        refuse(
            "CONNECT origin form",
            req("CONNECT / HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "CONNECT without a port",
            req("CONNECT a HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "CONNECT absolute form",
            req("CONNECT http://a:443/ HTTP/1.1", "Host: a:443\r\n"),
            400,
        ),
        refuse(
            "CONNECT over HTTP/1.0",
            req("CONNECT a:443 HTTP/1.0", ""),
            405,
        ),
        refuse(
            "authority form for GET",
            req("GET admin.internal HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "authority form with port for GET",
            req("GET admin.internal:80 HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse("'!' as a target", req("GET ! HTTP/1.1", "Host: a\r\n"), 400),
        refuse("no target", req("GET HTTP/1.1", "Host: a\r\n"), 400),
        refuse("two spaces", req("GET  / HTTP/1.1", "Host: a\r\n"), 400),
        refuse(
            "tab for a space",
            req("GET\t/ HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "space after the version",
            req("GET / HTTP/1.1 ", "Host: a\r\n"),
            400,
        ),
        refuse("leading space", req(" GET / HTTP/1.1", "Host: a\r\n"), 400),
        refuse("HTTP/1.2", req("GET / HTTP/1.2", "Host: a\r\n"), 400),
        refuse(
            "HTTP/2.0 in a request line",
            req("GET / HTTP/2.0", "Host: a\r\n"),
            400,
        ),
        refuse("HTTP/1.10", req("GET / HTTP/1.10", "Host: a\r\n"), 400),
        refuse(
            "lower-case version",
            req("GET / http/1.1", "Host: a\r\n"),
            400,
        ),
        refuse("HTTP/0.9", "GET /\r\n\r\n", 400),
        refuse("method with '@'", req("G@T / HTTP/1.1", "Host: a\r\n"), 400),
        refuse(
            "method with '('",
            req("GE(T / HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "bare LF ends the request line",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            400,
        ),
        refuse("bare LF everywhere", "GET / HTTP/1.1\nHost: a\n\n", 400),
        refuse(
            "bare CR in the request line",
            "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
        refuse(
            "NUL in the request line",
            "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
    ];
    // Absolute form: its authority routes and replaces Host.
    v.extend([
        pass(
            "absolute form replaces Host",
            req(
                "GET http://public.example/x HTTP/1.1",
                "Host: admin.internal\r\n",
            ),
            "app",
            get("/x", "public.example"),
        ),
        pass(
            "absolute form routes by its authority",
            req(
                "GET http://admin.internal/x HTTP/1.1",
                "Host: public.example\r\n",
            ),
            "admin",
            get("/x", "admin.internal"),
        ),
        pass(
            "absolute form without a path",
            req("GET http://a HTTP/1.1", "Host: b\r\n"),
            "app",
            get("/", "a"),
        ),
        pass(
            "absolute form with a port",
            req("GET http://a:8080/x?y HTTP/1.1", "Host: a\r\n"),
            "app",
            get("/x?y", "a:8080"),
        ),
        pass(
            "absolute form, IPv6 authority",
            req("GET http://[::1]:80/x HTTP/1.1", "Host: a\r\n"),
            "app",
            get("/x", "[::1]:80"),
        ),
        pass(
            "absolute form, https scheme",
            req("GET https://a/x HTTP/1.1", "Host: a\r\n"),
            "app",
            get("/x", "a"),
        ),
        pass(
            "absolute form is normalized too",
            req("GET http://a/public/../internal HTTP/1.1", "Host: a\r\n"),
            "internal",
            get("/internal", "a"),
        ),
        refuse(
            "absolute form with userinfo",
            req("GET http://user@public.example/x HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "absolute form with userinfo and password",
            req("GET http://u:p@public.example/x HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "ftp scheme",
            req("GET ftp://a/x HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "empty authority",
            req("GET http:///x HTTP/1.1", "Host: a\r\n"),
            400,
        ),
        refuse(
            "absolute form without Host in HTTP/1.1",
            req("GET http://a/x HTTP/1.1", ""),
            400,
        ),
        refuse(
            "absolute form with a bad authority",
            req("GET http://a_b!/x HTTP/1.1", "Host: a\r\n"),
            400,
        ),
    ]);
    v
}

fn targets() -> Vec<Case> {
    let mut v = Vec::new();
    for (what, b) in [
        ("double quote", "\""),
        ("backslash", "\\"),
        ("less-than", "<"),
        ("greater-than", ">"),
        ("caret", "^"),
        ("backtick", "`"),
        ("left brace", "{"),
        ("pipe", "|"),
        ("right brace", "}"),
        ("fragment", "#x"),
        ("DEL", "\x7f"),
        ("bad percent-encoding", "%zz"),
        ("percent-encoding with one hex digit", "%4g"),
        ("lone percent", "%"),
        ("vertical tab", "\x0b"),
        ("form feed", "\x0c"),
        ("escape", "\x1b"),
    ] {
        v.push(refuse(
            format!("target with {what}"),
            req(&format!("GET /a{b}b HTTP/1.1"), "Host: a\r\n"),
            400,
        ));
        v.push(refuse(
            format!("query with {what}"),
            req(&format!("GET /a?q={b} HTTP/1.1"), "Host: a\r\n"),
            400,
        ));
    }
    for (what, bytes) in [
        ("raw UTF-8", &b"\xc3\xa9"[..]),
        ("raw Latin-1", b"\xe9"),
        ("byte 0xff", b"\xff"),
    ] {
        let send = [&b"GET /a"[..], bytes, b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        v.push(refuse(format!("target with {what}"), send, 400));
    }
    v.push(pass(
        "every allowed character",
        req(
            "GET /a-b_c.d~e!$&'()*+,;=:@/f?g=h/i?j HTTP/1.1",
            "Host: a\r\n",
        ),
        "app",
        get("/a-b_c.d~e!$&'()*+,;=:@/f?g=h/i?j", "a"),
    ));
    v
}

fn authority() -> Vec<Case> {
    let mut v = Vec::new();
    for (what, host) in [
        ("space", "a b"),
        ("comma list", "x, y"),
        ("slash", "x/y"),
        ("at sign", "@"),
        ("userinfo", "user@host"),
        ("letters for a port", "h:abc"),
        ("two ports", ":80:80"),
        ("empty host with port", ":80"),
        ("empty port", "h:"),
        ("port past 65535", "h:65536"),
        ("six-digit port", "h:123456"),
        ("open IPv6 bracket", "[::1"),
        ("junk after IPv6", "[::1]x"),
        ("not IPv6 in brackets", "[zz]"),
        ("semicolon", "a;b"),
        ("percent-encoding", "a%41"),
        ("question mark", "a?b"),
        ("hash", "a#b"),
        ("asterisk", "*"),
        ("backslash", "a\\b"),
        ("parenthesis", "a(b)"),
        ("host and path", "a/../b"),
    ] {
        v.push(refuse(
            format!("Host with {what}"),
            req("GET / HTTP/1.1", &format!("Host: {host}\r\n")),
            400,
        ));
    }
    v.push(refuse(
        "non-ASCII Host",
        [&b"GET / HTTP/1.1\r\nHost: h"[..], b"\xc3\xa9", b"\r\n\r\n"].concat(),
        400,
    ));
    v.push(refuse(
        "empty Host",
        req("GET / HTTP/1.1", "Host:\r\n"),
        400,
    ));
    v.push(refuse(
        "no Host in HTTP/1.1",
        req("GET / HTTP/1.1", ""),
        400,
    ));
    v.push(refuse(
        "two Hosts",
        req("GET / HTTP/1.1", "Host: a\r\nHost: b\r\n"),
        400,
    ));
    v.push(refuse(
        "two equal Hosts",
        req("GET / HTTP/1.1", "Host: a\r\nHost: a\r\n"),
        400,
    ));
    v.push(refuse(
        "two Hosts in HTTP/1.0",
        req("GET / HTTP/1.0", "Host: a\r\nHost: b\r\n"),
        400,
    ));
    for (what, host, sent, tag) in [
        (
            "upper-case Host is lower-cased",
            "A.Example",
            "a.example",
            "app",
        ),
        ("Host with a port", "a:80", "a:80", "app"),
        ("IPv4 Host", "127.0.0.1", "127.0.0.1", "app"),
        ("IPv6 Host", "[::1]:8080", "[::1]:8080", "app"),
        ("underscore in Host", "a_b.internal", "a_b.internal", "app"),
        ("Host routes", "admin.internal", "admin.internal", "admin"),
        (
            "Host routes whatever its case and port",
            "ADMIN.internal:99",
            "admin.internal:99",
            "admin",
        ),
        ("Host with a tab around it", "\ta\t", "a", "app"),
    ] {
        v.push(pass(
            what,
            req("GET /x HTTP/1.1", &format!("Host: {host}\r\n")),
            tag,
            get("/x", sent),
        ));
    }
    v.push(pass(
        "HTTP/1.0 without Host gets the server's address",
        req("GET /x HTTP/1.0", ""),
        "app",
        get("/x", "{app}"),
    ));
    v.push(pass(
        "HTTP/1.0 with Host",
        req("GET /x HTTP/1.0", "Host: a\r\n"),
        "app",
        get("/x", "a"),
    ));
    v
}

fn paths() -> Vec<Case> {
    let g = |t: &str| req(&format!("GET {t} HTTP/1.1"), "Host: a\r\n");
    let mut v = Vec::new();
    for (input, tag, sent) in [
        ("/public/../internal", "internal", "/internal"),
        ("/public/%2e%2e/internal", "internal", "/internal"),
        ("/public/%2E%2E/internal", "internal", "/internal"),
        ("/public/.%2e/internal", "internal", "/internal"),
        ("/%69nternal/x", "internal", "/internal/x"),
        ("/./internal", "internal", "/internal"),
        ("/a/b/../../internal/c", "internal", "/internal/c"),
        ("/../internal", "internal", "/internal"),
        ("/internal/../public", "app", "/public"),
        ("/internal/..", "app", "/"),
        ("/a/b/..", "app", "/a/"),
        ("/a/./b/.", "app", "/a/b/"),
        ("/x?y=/../internal", "app", "/x?y=/../internal"),
        ("/a%20b", "app", "/a%20b"),
        ("/a%3fb", "app", "/a%3Fb"),
        ("/..%252finternal", "app", "/..%252finternal"),
        ("/%7Euser", "app", "/~user"),
        ("/a//b", "app", "/a//b"),
        ("/.well-known/x", "app", "/.well-known/x"),
        ("/a..b/c.", "app", "/a..b/c."),
        ("/strip/x?q", "app", "/x?q"),
        ("/strip", "app", "/"),
        ("/strip/../internal", "internal", "/internal"),
        ("/internal", "internal", "/internal"),
    ] {
        v.push(pass(format!("path {input}"), g(input), tag, get(sent, "a")));
    }
    for input in [
        "/public/..%2finternal",
        "/public/..%2Finternal",
        "/a%2fb",
        "/public/..;/internal",
        "/public/.;x/internal",
        "/public/..;jsessionid=1/internal",
        "/public/%5c../internal",
        "/a%5Cb",
        "/a%00b",
    ] {
        v.push(refuse(format!("path {input}"), g(input), 400));
    }
    // Listener `off` routes and forwards paths as sent.
    let mut off =
        |name: &str, send: Vec<u8>, statuses: &[u16], ups: Vec<(&'static str, Vec<u8>)>| {
            let mut c = case(name, send, statuses, ups);
            c.listener = "off";
            v.push(c);
        };
    off(
        "normalization off: dot segments kept",
        g("/public/../internal"),
        &[200],
        vec![("app", get("/public/../internal", "a"))],
    );
    off(
        "normalization off: %2F kept",
        g("/a%2Fb"),
        &[200],
        vec![("app", get("/a%2Fb", "a"))],
    );
    off(
        "normalization off: backslash still refused",
        g("/a\\b"),
        &[400],
        vec![],
    );
    v
}

fn lengths() -> Vec<Case> {
    let p = |fields: &str, body: &str| {
        let mut r = req("POST / HTTP/1.1", &format!("Host: a\r\n{fields}"));
        r.extend_from_slice(body.as_bytes());
        r
    };
    let mut v = vec![
        pass(
            "Content-Length",
            p("Content-Length: 5\r\n", "hello"),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "Content-Length with 20 digits and leading zeros",
            p("Content-Length: 00000000000000000005\r\n", "hello"),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "Content-Length with leading zeros",
            p("Content-Length: 005\r\n", "hello"),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "Content-Length list of equal values",
            p("Content-Length: 5, 5\r\n", "hello"),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "two equal Content-Length fields",
            p("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "two Content-Length fields, equal values with leading zeros",
            p("Content-Length: 5\r\nContent-Length: 0005\r\n", "hello"),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "Content-Length with a tab before it",
            p("Content-Length:\t5\r\n", "hello"),
            "app",
            post("/", "a", "hello"),
        ),
        pass("POST without a body", p("", ""), "app", post("/", "a", "")),
        pass(
            "Content-Length: 0",
            p("Content-Length: 0\r\n", ""),
            "app",
            post("/", "a", ""),
        ),
        pass(
            "GET with Content-Length: 0",
            req("GET / HTTP/1.1", "Host: a\r\nContent-Length: 0\r\n"),
            "app",
            get("/", "a"),
        ),
    ];
    for (what, value) in [
        ("past 2^64", "18446744073709551616"),
        ("far past 2^64", "99999999999999999999999999"),
        ("negative", "-1"),
        ("plus sign", "+5"),
        ("hex", "0x5"),
        ("exponent", "5e0"),
        ("two numbers", "5 5"),
        ("conflicting list", "5, 6"),
        ("empty list element", "5,"),
        ("empty", ""),
        ("letters", "five"),
        ("decimal point", "5.0"),
        ("quoted", "\"5\""),
    ] {
        v.push(refuse(
            format!("Content-Length {what}"),
            p(&format!("Content-Length: {value}\r\n"), "hello"),
            400,
        ));
    }
    v.push(refuse(
        "two conflicting Content-Length fields",
        p("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        400,
    ));
    v
}

fn transfer_encoding() -> Vec<Case> {
    let p = |fields: &str, body: &str| {
        let mut r = req("POST / HTTP/1.1", &format!("Host: a\r\n{fields}"));
        r.extend_from_slice(body.as_bytes());
        r
    };
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let mut v = vec![
        pass(
            "chunked",
            p("Transfer-Encoding: chunked\r\n", body),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "Chunked in capitals",
            p("Transfer-Encoding: Chunked\r\n", body),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "chunked with a tab before it",
            p("Transfer-Encoding:\tchunked\r\n", body),
            "app",
            post("/", "a", "hello"),
        ),
        pass(
            "chunked with trailing space",
            p("Transfer-Encoding: chunked \r\n", body),
            "app",
            post("/", "a", "hello"),
        ),
    ];
    for (what, fields) in [
        (
            "chunked twice in one field",
            "Transfer-Encoding: chunked, chunked\r\n",
        ),
        (
            "chunked in two fields",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "chunked then identity",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n"),
        ("identity", "Transfer-Encoding: identity\r\n"),
        ("xchunked", "Transfer-Encoding: xchunked\r\n"),
        (
            "chunked with a trailing comma",
            "Transfer-Encoding: chunked,\r\n",
        ),
        (
            "chunked with a leading comma",
            "Transfer-Encoding: , chunked\r\n",
        ),
        ("quoted chunked", "Transfer-Encoding: \"chunked\"\r\n"),
        (
            "chunked with a parameter",
            "Transfer-Encoding: chunked;q=1\r\n",
        ),
        (
            "vertical tab before chunked",
            "Transfer-Encoding: \x0bchunked\r\n",
        ),
        ("space before the colon", "Transfer-Encoding : chunked\r\n"),
        (
            "CL then TE (CL.TE)",
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "TE then CL (TE.CL)",
            "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
        ),
        (
            "TE and CL 0",
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        ),
        (
            "obs-fold onto TE",
            "X: y\r\n Transfer-Encoding: chunked\r\n",
        ),
        (
            "TE folded onto the next line",
            "Transfer-Encoding:\r\n chunked\r\n",
        ),
        ("TE with an underscore", "Transfer_Encoding: chunked\r\n"),
        ("CL with an underscore", "Content_Length: 5\r\n"),
    ] {
        v.push(refuse(format!("TE: {what}"), p(fields, body), 400));
    }
    v.push(refuse(
        "Transfer-Encoding in HTTP/1.0",
        [
            &b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body.as_bytes(),
        ]
        .concat(),
        400,
    ));
    v
}

fn chunked() -> Vec<Case> {
    let p = |body: &[u8]| {
        [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat()
    };
    let hello = || post("/", "a", "hello");
    let long_ext = |n: usize| {
        let mut b = b"5;x=".to_vec();
        b.extend(std::iter::repeat_n(b'a', n));
        b.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        b
    };
    let mut v = Vec::new();
    for (what, body) in [
        ("one chunk", &b"5\r\nhello\r\n0\r\n\r\n"[..]),
        ("two chunks", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
        ("extension name", b"5;ext\r\nhello\r\n0\r\n\r\n"),
        ("extension with a value", b"5;a=b\r\nhello\r\n0\r\n\r\n"),
        ("two extensions", b"5;a=b;c\r\nhello\r\n0\r\n\r\n"),
        (
            "quoted extension value",
            b"5;a=\"q s;\"\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "quoted-pair in an extension",
            b"5;a=\"\\\"\"\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "whitespace around ';' and '='",
            b"5 ; a = b\r\nhello\r\n0\r\n\r\n",
        ),
        ("extension on the last chunk", b"5\r\nhello\r\n0;x\r\n\r\n"),
        ("leading zeros", b"0005\r\nhello\r\n0\r\n\r\n"),
        (
            "many leading zeros",
            b"00000000000000000000005\r\nhello\r\n000\r\n\r\n",
        ),
        ("upper-case hex", b"5\r\nhello\r\n0\r\n\r\n"),
        ("a trailer", b"5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n"),
        (
            "two trailers",
            b"5\r\nhello\r\n0\r\nx-t: 1\r\nx-u:2\r\n\r\n",
        ),
        ("empty trailer value", b"5\r\nhello\r\n0\r\nx-t:\r\n\r\n"),
    ] {
        v.push(pass(format!("chunked: {what}"), p(body), "app", hello()));
    }
    v.push(pass(
        "chunked: hex digits A-F",
        p(b"A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0\r\n\r\n"),
        "app",
        post("/", "a", "0123456789abcdefghijk"),
    ));
    v.push(pass(
        "chunked: a 3,000-byte extension",
        p(&long_ext(3000)),
        "app",
        hello(),
    ));
    for (what, body) in [
        ("bare LF after the size", &b"5\nhello\r\n0\r\n\r\n"[..]),
        ("bare LF after an extension", b"5;ext\nhello\r\n0\r\n\r\n"),
        ("bare LF after the last size", b"5\r\nhello\r\n0\n\r\n"),
        ("bare LF ends the trailers", b"5\r\nhello\r\n0\r\n\n"),
        ("bare LF after a trailer", b"5\r\nhello\r\n0\r\nx: y\n\r\n"),
        ("bare CR after the size", b"5\rhello\r\n0\r\n\r\n"),
        ("empty size", b"\r\nhello\r\n0\r\n\r\n"),
        ("whitespace-only size", b" \r\nhello\r\n0\r\n\r\n"),
        ("space after the size", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("tab after the size", b"5\t\r\nhello\r\n0\r\n\r\n"),
        ("space before the size", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("extension alone as a size", b";ext\r\nhello\r\n0\r\n\r\n"),
        ("empty extension name", b"5;\r\nhello\r\n0\r\n\r\n"),
        (
            "empty extension on the last chunk",
            b"5\r\nhello\r\n0;\r\n\r\n",
        ),
        ("NUL in an extension", b"5;a\0b\r\nhello\r\n0\r\n\r\n"),
        ("DEL in an extension", b"5;a\x7fb\r\nhello\r\n0\r\n\r\n"),
        (
            "NUL in a quoted extension",
            b"5;a=\"\0\"\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "unclosed quoted extension",
            b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
        ),
        ("missing extension value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
        ("two extension values", b"5;a=b c\r\nhello\r\n0\r\n\r\n"),
        ("space after an extension", b"5;a=b \r\nhello\r\n0\r\n\r\n"),
        ("negative size", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("plus sign", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("size past 2^64", b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("letters past F", b"5g\r\nhello\r\n0\r\n\r\n"),
        ("data not followed by CRLF", b"5\r\nhelloXX0\r\n\r\n"),
        ("data followed by a bare LF", b"5\r\nhello\n0\r\n\r\n"),
        ("data longer than its size", b"3\r\nhello\r\n0\r\n\r\n"),
        (
            "trailer without a colon",
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
        ),
        (
            "obs-fold in trailers",
            b"5\r\nhello\r\n0\r\nx: y\r\n z\r\n\r\n",
        ),
        (
            "trailer starting with a space",
            b"5\r\nhello\r\n0\r\n x: y\r\n\r\n",
        ),
        (
            "space before a trailer's colon",
            b"5\r\nhello\r\n0\r\nx : y\r\n\r\n",
        ),
        ("NUL in a trailer", b"5\r\nhello\r\n0\r\nx: a\0b\r\n\r\n"),
        (
            "bare CR in a trailer",
            b"5\r\nhello\r\n0\r\nx: a\rb\r\n\r\n",
        ),
        (
            "trailer is a request line",
            b"5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        ),
    ] {
        v.push(refuse(format!("chunked: {what}"), p(body), 400));
    }
    v.push(refuse(
        "chunked: a 5,000-byte extension",
        p(&long_ext(5000)),
        400,
    ));
    v.push(refuse(
        "chunked: trailers over 16 KiB",
        p(&[
            &b"5\r\nhello\r\n0\r\nx: "[..],
            &vec![b'a'; 17 * 1024],
            b"\r\n\r\n",
        ]
        .concat()),
        400,
    ));
    v
}

fn fields() -> Vec<Case> {
    let g = |fields: &[u8]| [&b"GET / HTTP/1.1\r\nHost: a\r\n"[..], fields, b"\r\n"].concat();
    let mut v = Vec::new();
    for (what, f) in [
        ("space before the colon", &b"X : y\r\n"[..]),
        ("tab before the colon", b"X\t: y\r\n"),
        ("empty name", b": y\r\n"),
        ("no colon", b"X\r\n"),
        ("obs-fold", b"X: y\r\n z\r\n"),
        ("non-ASCII name", b"X\xc3\xa9: y\r\n"),
        ("name with a slash", b"X/Y: z\r\n"),
        ("name with brackets", b"X[1]: z\r\n"),
        ("bare CR in a value", b"X: a\rb\r\n"),
        ("bare LF in a value", b"X: a\nb\r\n"),
        ("bare LF ends a field", b"X: y\n"),
        (
            "lower-case TE with an underscore",
            b"transfer_encoding: chunked\r\n",
        ),
    ] {
        v.push(refuse(format!("field: {what}"), g(f), 400));
    }
    for b in (0u8..0x20).filter(|&b| b != b'\t' && b != b'\r' && b != b'\n') {
        v.push(refuse(
            format!("field: control byte {b:#04x} in a value"),
            g(&[&b"X: a"[..], &[b], b"b\r\n"].concat()),
            400,
        ));
    }
    v.push(refuse("field: DEL in a value", g(b"X: a\x7fb\r\n"), 400));
    for (what, f, kept) in [
        ("no space after the colon", &b"X:y\r\n"[..], "x: y\r\n"),
        ("whitespace around the value", b"X: \t y \t\r\n", "x: y\r\n"),
        ("tab inside a value", b"X: a\tb\r\n", "x: a\tb\r\n"),
        ("a name repeated", b"X: 1\r\nX: 2\r\n", "x: 1\r\nx: 2\r\n"),
        (
            "underscore in another name",
            b"X_Custom: 1\r\n",
            "x_custom: 1\r\n",
        ),
        (
            "names are sent in lower case",
            b"X-Mixed-Case: V\r\n",
            "x-mixed-case: V\r\n",
        ),
        ("empty value", b"X:\r\n", "x: \r\n"),
    ] {
        v.push(pass(
            format!("field: {what}"),
            g(f),
            "app",
            up("GET /", "a", kept, "\r\n"),
        ));
    }
    let mut obs = up("GET /", "a", "x: \r\n", "\r\n");
    let at = obs.windows(3).position(|w| w == b"x: ").unwrap() + 3;
    obs.splice(at..at, b"\xe9\xe9".iter().copied());
    v.push(pass(
        "field: obs-text in a value",
        g(b"X: \xe9\xe9\r\n"),
        "app",
        obs,
    ));
    v.push(refuse(
        "field: a head over 64 KiB",
        g(&[&b"X: "[..], &vec![b'a'; 70 * 1024], b"\r\n"].concat()),
        431,
    ));
    let many: Vec<u8> = (0..150)
        .flat_map(|i| format!("X-{i}: 1\r\n").into_bytes())
        .collect();
    v.push(refuse("field: 150 fields", g(&many), 431));
    v
}

fn upgrades() -> Vec<Case> {
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    let ws = |path: &str, extra: &str| {
        req(
            &format!("GET {path} HTTP/1.1"),
            &format!("Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{extra}"),
        )
    };
    let good = format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n");
    let kept_ws =
        format!("upgrade: websocket\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n");
    let kept_sec = format!("sec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n");
    let mut v = vec![
        case(
            "WebSocket upgrade",
            ws("/ws", &good),
            &[101],
            vec![(
                "app",
                up("GET /ws", "a", &kept_ws, "connection: upgrade\r\n\r\n"),
            )],
        ),
        case(
            "WebSocket upgrade, mixed case",
            req(
                "GET /ws HTTP/1.1",
                &format!(
                    "Host: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n{good}"
                ),
            ),
            &[101],
            vec![(
                "app",
                up(
                    "GET /ws",
                    "a",
                    &kept_ws.replace("upgrade: websocket", "upgrade: WebSocket"),
                    "connection: upgrade\r\n\r\n",
                ),
            )],
        ),
        refuse(
            "WebSocket without Sec-WebSocket-Key",
            ws("/ws", "Sec-WebSocket-Version: 13\r\n"),
            400,
        ),
        refuse(
            "WebSocket with a short key",
            ws(
                "/ws",
                "Sec-WebSocket-Key: abc==\r\nSec-WebSocket-Version: 13\r\n",
            ),
            400,
        ),
        refuse(
            "WebSocket with two keys",
            ws("/ws", &format!("Sec-WebSocket-Key: {KEY}\r\n{good}")),
            400,
        ),
        refuse(
            "WebSocket version 8",
            ws(
                "/ws",
                &format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n"),
            ),
            400,
        ),
        refuse(
            "WebSocket without a version",
            ws("/ws", &format!("Sec-WebSocket-Key: {KEY}\r\n")),
            400,
        ),
        refuse(
            "WebSocket by POST",
            req(
                "POST /ws HTTP/1.1",
                &format!("Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{good}"),
            ),
            400,
        ),
    ];
    // Upgrades that are dropped: the request goes on as a plain one.
    for (what, send, kept) in [
        (
            "h2c upgrade",
            req(
                "GET / HTTP/1.1",
                "Host: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
            ),
            String::new(),
        ),
        (
            "h2c upgrade without HTTP2-Settings",
            req("GET / HTTP/1.1", "Host: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"),
            String::new(),
        ),
        (
            "h2c with a version",
            req("GET / HTTP/1.1", "Host: a\r\nConnection: Upgrade\r\nUpgrade: H2C/1\r\n"),
            String::new(),
        ),
        (
            "HTTP2-Settings alone",
            req("GET / HTTP/1.1", "Host: a\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"),
            String::new(),
        ),
        (
            "two protocols offered",
            req(
                "GET / HTTP/1.1",
                &format!("Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n{good}"),
            ),
            kept_sec.clone(),
        ),
        (
            "a protocol the route does not list",
            req("GET / HTTP/1.1", "Host: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"),
            String::new(),
        ),
        (
            "WebSocket on a route that allows no upgrade",
            ws("/noupgrade", &good),
            kept_sec.clone(),
        ),
        (
            "Upgrade without Connection: upgrade",
            req("GET / HTTP/1.1", &format!("Host: a\r\nUpgrade: websocket\r\n{good}")),
            kept_sec.clone(),
        ),
    ] {
        let target = if what.contains("allows no") { "/noupgrade" } else { "/" };
        v.push(pass(
            format!("upgrade dropped: {what}"),
            send,
            "app",
            up(&format!("GET {target}"), "a", &kept, "\r\n"),
        ));
    }
    v.push(pass(
        "upgrade dropped: WebSocket in HTTP/1.0",
        req(
            "GET / HTTP/1.0",
            &format!("Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{good}"),
        ),
        "app",
        up("GET /", "a", &kept_sec, "\r\n"),
    ));
    v
}

fn gateway_fields() -> Vec<Case> {
    let mut v = Vec::new();
    for (what, f) in [
        ("Connection-named field", "Connection: x-a\r\nX-A: 1\r\n"),
        ("Keep-Alive", "Keep-Alive: timeout=5\r\n"),
        ("TE", "TE: trailers\r\n"),
        ("Trailer", "Trailer: x\r\n"),
        ("Proxy-Connection", "Proxy-Connection: keep-alive\r\n"),
        ("Proxy-Authorization", "Proxy-Authorization: Basic eDp5\r\n"),
        ("Forwarded", "Forwarded: for=10.0.0.1;host=evil\r\n"),
        ("X-Real-IP", "X-Real-IP: 10.0.0.1\r\n"),
        ("X-Forwarded-For", "X-Forwarded-For: 10.0.0.1\r\n"),
        ("X-Forwarded-Host", "X-Forwarded-Host: evil\r\n"),
        ("X-Forwarded-Proto", "X-Forwarded-Proto: https\r\n"),
        ("X-Forwarded-Port", "X-Forwarded-Port: 443\r\n"),
        ("X-Forwarded-Prefix", "X-Forwarded-Prefix: /admin\r\n"),
        (
            "Connection: close, named",
            "Connection: close, x-b\r\nX-B: 1\r\n",
        ),
    ] {
        v.push(pass(
            format!("not forwarded: {what}"),
            req("GET / HTTP/1.1", &format!("Host: a\r\n{f}X-Keep: 1\r\n")),
            "app",
            up("GET /", "a", "x-keep: 1\r\n", "\r\n"),
        ));
    }
    v.push(pass(
        "a client's X-Request-Id is passed on",
        req("GET / HTTP/1.1", "Host: a\r\nX-Request-Id: trace-1\r\n"),
        "app",
        get("/", "a"),
    ));
    // W3C trace context: one valid traceparent passes as is, in the
    // gateway's place; anything else is replaced by a new one, once.
    v.push(pass(
        "a valid traceparent is passed on once, unchanged",
        req(
            "GET / HTTP/1.1",
            &format!("Host: a\r\ntraceparent: {TRACE}\r\nX-Keep: 1\r\n"),
        ),
        "app",
        up_traced("GET /", "a", "x-keep: 1\r\n", TRACE, "\r\n"),
    ));
    for (what, f) in [
        (
            "upper-case hex",
            "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01\r\n".to_string(),
        ),
        (
            "an all-zero trace id",
            "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n".to_string(),
        ),
        (
            "two of them",
            format!("traceparent: {TRACE}\r\ntraceparent: {TRACE}\r\n"),
        ),
        ("garbage", "traceparent: hello\r\n".to_string()),
    ] {
        v.push(pass(
            format!("a bad traceparent is replaced: {what}"),
            req("GET / HTTP/1.1", &format!("Host: a\r\n{f}X-Keep: 1\r\n")),
            "app",
            up("GET /", "a", "x-keep: 1\r\n", "\r\n"),
        ));
    }
    v
}

fn connections() -> Vec<Case> {
    let get_a = req("GET /1 HTTP/1.1", "Host: a\r\n");
    let get_b = req("GET /2 HTTP/1.1", "Host: a\r\n");
    vec![
        case(
            "pipelined GETs",
            [get_a.clone(), get_b.clone()].concat(),
            &[200, 200],
            vec![("app", get("/1", "a")), ("app", get("/2", "a"))],
        ),
        case(
            "a bad request behind a good one",
            [get_a.clone(), b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec()].concat(),
            &[200, 400],
            vec![("app", get("/1", "a"))],
        ),
        case(
            "a body, then the next request",
            [
                &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            ]
            .concat(),
            &[200, 200],
            vec![("app", post("/", "a", "hello")), ("app", get("/2", "a"))],
        ),
        case(
            "a chunked body, then the next request",
            [
                &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
                &get_b,
            ]
            .concat(),
            &[200, 200],
            vec![("app", post("/", "a", "hello")), ("app", get("/2", "a"))],
        ),
        case(
            "nothing after Connection: close is served",
            [req("GET /1 HTTP/1.1", "Host: a\r\nConnection: close\r\n"), get_b.clone()].concat(),
            &[200],
            vec![("app", get("/1", "a"))],
        ),
        case(
            "HTTP/1.0 keep-alive",
            [req("GET /1 HTTP/1.0", "Host: a\r\nConnection: keep-alive\r\n"), get_b.clone()].concat(),
            &[200, 200],
            vec![("app", get("/1", "a")), ("app", get("/2", "a"))],
        ),
        case(
            "HTTP/1.0 closes by default",
            [req("GET /1 HTTP/1.0", "Host: a\r\n"), get_b.clone()].concat(),
            &[200],
            vec![("app", get("/1", "a"))],
        ),
        case(
            "a request hidden in a chunk extension stays in the body",
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=\"GET /s HTTP/1.1\"\r\nhello\r\n0\r\n\r\n"[..],
            &[200],
            vec![("app", post("/", "a", "hello"))],
        ),
    ]
}
