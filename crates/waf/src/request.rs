//! What the engine inspects of a request, parsed once per request: the
//! arguments of the query and of the body (URL-encoded or JSON), headers,
//! cookies, and the request line's parts, named as ModSecurity names them.

use std::net::IpAddr;

use crate::transform::Transform;

/// A request as the gateway hands it to the engine.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The request target as the client sent it.
    pub target: &'a [u8],
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// The body, or its first `inspect_body` bytes.
    pub body: &'a [u8],
    /// The body was longer than what `body` holds.
    pub body_truncated: bool,
    pub remote_addr: IpAddr,
    pub unique_id: &'a str,
}

/// A response as the gateway hands it to the engine (phases 3 and 4).
#[derive(Debug, Clone)]
pub struct Response<'a> {
    pub status: u16,
    /// `HTTP/1.1`.
    pub protocol: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// The body, or its first `inspect_body` bytes; empty when it is not
    /// inspected (not a text type).
    pub body: &'a [u8],
}

/// A name and a value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Arguments read at most (query and body together), as ModSecurity's
/// `SecArgumentsLimit 1000`: past it the body is an error (`REQBODY_ERROR`,
/// refused with 400), not a list that costs every rule its length.
pub const MAX_ARGS: usize = 1000;

/// The request's variables.
#[derive(Debug, Default)]
pub struct Parsed {
    pub args_get: Vec<Pair>,
    pub args_post: Vec<Pair>,
    pub headers: Vec<Pair>,
    pub cookies: Vec<Pair>,
    /// Multipart parts with a file: the field's name, the file's name.
    pub files: Vec<Pair>,
    pub multipart_part_headers: Vec<Pair>,
    pub filename: Vec<u8>,
    pub basename: Vec<u8>,
    pub uri: Vec<u8>,
    pub query: Vec<u8>,
    pub line: Vec<u8>,
    /// Which body processor read the body (`URLENCODED`, `JSON`,
    /// `MULTIPART`, `XML`), if any.
    pub processor: Option<&'static str>,
    pub reqbody_error: bool,
    pub reqbody_error_msg: String,
    /// Text nodes of an XML body (`XML:/*`).
    pub xml: Vec<Vec<u8>>,
    pub multipart_strict_error: bool,
    pub multipart_unmatched_boundary: bool,
    /// The response's headers (phases 3 and 4).
    pub response_headers: Vec<Pair>,
}

/// `application/x-www-form-urlencoded` pairs, each name and value
/// URL-decoded (`+` is a space), as ModSecurity parses arguments.
pub fn urlencoded(s: &[u8]) -> Vec<Pair> {
    s.split(|&c| c == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.iter().position(|&c| c == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &b""[..]),
            };
            (
                Transform::UrlDecode.apply(k).into_owned(),
                Transform::UrlDecode.apply(v).into_owned(),
            )
        })
        .collect()
}

/// `%XX` decoded (not `+`): how the path reaches `REQUEST_FILENAME`.
fn uri_decode(s: &[u8]) -> Vec<u8> {
    if !s.contains(&b'%') {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            let (a, b) = (s[i + 1], s[i + 2]);
            if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() {
                let h = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(h(a) << 4 | h(b));
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Cookies of `Cookie` headers: `name=value` pairs split at `;`, values
/// as sent.
fn cookies(headers: &[(&[u8], &[u8])]) -> Vec<Pair> {
    let mut out = Vec::new();
    for (n, v) in headers {
        if !n.eq_ignore_ascii_case(b"cookie") {
            continue;
        }
        for part in v.split(|&c| c == b';') {
            let part = trim(part);
            if part.is_empty() {
                continue;
            }
            match part.iter().position(|&c| c == b'=') {
                Some(i) => out.push((part[..i].to_vec(), part[i + 1..].to_vec())),
                None => out.push((part.to_vec(), Vec::new())),
            }
        }
    }
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The body processor a `Content-Type` calls for.
pub fn processor_for(content_type: &[u8]) -> Option<&'static str> {
    let ct = content_type.to_ascii_lowercase();
    let mime = trim(ct.split(|&c| c == b';').next().unwrap_or(b""));
    if mime == b"application/x-www-form-urlencoded" {
        Some("URLENCODED")
    } else if mime == b"multipart/form-data" {
        Some("MULTIPART")
    } else if mime == b"application/json" || mime.ends_with(b"+json") {
        Some("JSON")
    } else if mime == b"text/xml" || mime == b"application/xml" || mime.ends_with(b"+xml") {
        Some("XML")
    } else {
        None
    }
}

impl Parsed {
    /// The request line, path, query and headers (phase 1's variables).
    pub fn head(req: &Request<'_>) -> Parsed {
        let target = req.target;
        let (path, query) = match target.iter().position(|&c| c == b'?') {
            Some(i) => (&target[..i], &target[i + 1..]),
            None => (target, &b""[..]),
        };
        // An absolute-form target's path.
        let path = match path.windows(3).position(|w| w == b"://") {
            Some(i) if path[..i].iter().all(u8::is_ascii_alphabetic) => {
                let rest = &path[i + 3..];
                rest.iter()
                    .position(|&c| c == b'/')
                    .map_or(&b"/"[..], |j| &rest[j..])
            }
            _ => path,
        };
        let filename = uri_decode(path);
        let basename = match filename.iter().rposition(|&c| c == b'/') {
            Some(i) => filename[i + 1..].to_vec(),
            None => filename.clone(),
        };
        // The processor is known from the head (REQBODY_PROCESSOR in
        // phase 1), as ModSecurity's is; `ctl:requestBodyProcessor` may
        // change it before the body is read.
        let processor = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
            .and_then(|(_, v)| processor_for(v));
        let mut line = req.method.to_vec();
        line.push(b' ');
        line.extend_from_slice(target);
        line.push(b' ');
        line.extend_from_slice(req.protocol);
        let mut args_get = urlencoded(query);
        let too_many = args_get.len() > MAX_ARGS;
        args_get.truncate(MAX_ARGS);
        let mut p = Parsed {
            args_get,
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            cookies: cookies(&req.headers),
            filename,
            basename,
            uri: uri_decode(target),
            query: query.to_vec(),
            line,
            processor,
            ..Parsed::default()
        };
        if too_many {
            p.fail(format!("more than {MAX_ARGS} arguments"));
        }
        p
    }

    /// Reads the body with a processor (phase 2's variables).
    pub fn body(&mut self, processor: Option<&'static str>, body: &[u8], content_type: &[u8]) {
        self.processor = processor;
        match processor {
            Some("URLENCODED") => self.args_post = urlencoded(body),
            Some("JSON") => match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(v) => json_args(&v, &mut b"json".to_vec(), &mut self.args_post),
                Err(e) => self.fail(format!("JSON parsing error: {e}")),
            },
            Some("MULTIPART") => crate::multipart::parse(self, body, content_type),
            Some("XML") => crate::xml::parse(self, body),
            _ => {}
        }
        if self.args_get.len() + self.args_post.len() > MAX_ARGS {
            self.args_post
                .truncate(MAX_ARGS.saturating_sub(self.args_get.len()));
            self.fail(format!("more than {MAX_ARGS} arguments"));
        }
    }

    pub fn fail(&mut self, msg: String) {
        self.reqbody_error = true;
        self.reqbody_error_msg = msg;
    }
}

/// JSON values as arguments named by their path: `{"a":{"b":1}}` gives
/// `json.a.b = 1`; array members are numbered (`json.a.0`).
/// A JSON value's leaves as arguments named by their path (`json.a.0`),
/// the path built in one buffer.
fn json_args(v: &serde_json::Value, name: &mut Vec<u8>, out: &mut Vec<Pair>) {
    use serde_json::Value;
    let mut nested = |key: &[u8], v: &serde_json::Value, name: &mut Vec<u8>| {
        let len = name.len();
        name.push(b'.');
        name.extend_from_slice(key);
        json_args(v, name, out);
        name.truncate(len);
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                nested(k.as_bytes(), v, name);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                nested(i.to_string().as_bytes(), v, name);
            }
        }
        Value::String(s) => out.push((name.clone(), s.as_bytes().to_vec())),
        Value::Null => out.push((name.clone(), Vec::new())),
        other => out.push((name.clone(), other.to_string().into_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(target: &'a [u8], headers: Vec<(&'a [u8], &'a [u8])>) -> Request<'a> {
        Request {
            method: b"GET",
            target,
            protocol: b"HTTP/1.1",
            headers,
            body: b"",
            body_truncated: false,
            remote_addr: "127.0.0.1".parse().unwrap(),
            unique_id: "u",
        }
    }

    #[test]
    fn head_variables() {
        let r = req(
            b"/a/b%20c.php?x=1+2&y=%27&z",
            vec![(b"Host", b"h"), (b"Cookie", b"s=1; t=a=b ;u")],
        );
        let p = Parsed::head(&r);
        assert_eq!(p.filename, b"/a/b c.php");
        assert_eq!(p.basename, b"b c.php");
        assert_eq!(p.query, b"x=1+2&y=%27&z");
        assert_eq!(p.line, b"GET /a/b%20c.php?x=1+2&y=%27&z HTTP/1.1");
        let args: Vec<(&[u8], &[u8])> = p
            .args_get
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(args, [(&b"x"[..], &b"1 2"[..]), (b"y", b"'"), (b"z", b"")]);
        assert_eq!(p.cookies.len(), 3);
        assert_eq!(p.cookies[1], (b"t".to_vec(), b"a=b".to_vec()));
        let p = Parsed::head(&req(b"http://example.com/x?y=1", vec![]));
        assert_eq!(p.filename, b"/x");
    }

    #[test]
    fn json_bodies() {
        let mut p = Parsed::default();
        p.body(
            Some("JSON"),
            br#"{"a":{"b":1,"c":[true,"x"]},"d":null}"#,
            b"application/json",
        );
        let names: Vec<String> = p
            .args_post
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        assert_eq!(
            names,
            ["json.a.b=1", "json.a.c.0=true", "json.a.c.1=x", "json.d="]
        );
        let mut p = Parsed::default();
        p.body(Some("JSON"), b"{nope", b"application/json");
        assert!(p.reqbody_error);
    }

    #[test]
    fn processors() {
        assert_eq!(
            processor_for(b"application/json; charset=utf-8"),
            Some("JSON")
        );
        assert_eq!(processor_for(b"application/vnd.api+json"), Some("JSON"));
        assert_eq!(
            processor_for(b"Application/X-WWW-Form-Urlencoded"),
            Some("URLENCODED")
        );
        assert_eq!(
            processor_for(b"multipart/form-data; boundary=x"),
            Some("MULTIPART")
        );
        assert_eq!(processor_for(b"text/plain"), None);
    }
}
