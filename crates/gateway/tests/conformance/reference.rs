//! A strict reader of HTTP/1.1 requests as RFC 9112 writes them, written
//! apart from centinela's parser (no httparse, no shared code) so that the
//! fuzz test can compare the two on message boundaries.

/// One request read from the client's bytes.
#[derive(Debug, PartialEq)]
pub struct Msg {
    /// Bytes it took, leading empty lines included.
    pub len: usize,
    pub body: Vec<u8>,
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn target_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%[]".contains(&b)
}

/// The line at `at`, ended by CRLF: its end (before CRLF). A bare CR or
/// LF in it is an error; `None`: incomplete.
fn line(buf: &[u8], at: usize) -> Result<Option<usize>, String> {
    let mut i = at;
    while i < buf.len() {
        match buf[i] {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err("bare CR".into()),
                }
            }
            b'\n' => return Err("bare LF".into()),
            _ => i += 1,
        }
    }
    Ok(None)
}

fn ows(b: &[u8]) -> &[u8] {
    let mut s = b;
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Reads one request from the front of `buf`. `Ok(None)`: incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Msg>, String> {
    let mut at = 0;
    // RFC 9112 §2.2: empty lines before a request line may be ignored.
    while buf[at..].starts_with(b"\r\n") {
        at += 2;
    }
    let Some(end) = line(buf, at)? else {
        return Ok(None);
    };
    let rl = &buf[at..end];
    let parts: Vec<&[u8]> = rl.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err("request line".into());
    };
    if method.is_empty() || !method.iter().all(|&b| tchar(b)) {
        return Err("method".into());
    }
    if target.is_empty() || !target.iter().all(|&b| target_char(b)) {
        return Err("target".into());
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err("version".into()),
    };
    at = end + 2;
    let mut length: Option<u64> = None;
    let mut te: Vec<Vec<u8>> = Vec::new();
    loop {
        let Some(end) = line(buf, at)? else {
            return Ok(None);
        };
        let l = &buf[at..end];
        at = end + 2;
        if l.is_empty() {
            break;
        }
        let name_len = l.iter().take_while(|&&b| tchar(b)).count();
        if name_len == 0 || l.get(name_len) != Some(&b':') {
            return Err("field line".into());
        }
        let name = l[..name_len].to_ascii_lowercase();
        let value = ows(&l[name_len + 1..]);
        if !value
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b) || b >= 0x80)
        {
            return Err("field value".into());
        }
        match &name[..] {
            b"content-length" => {
                for part in value.split(|&b| b == b',') {
                    let part = ows(part);
                    if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                        return Err("content-length".into());
                    }
                    let n: u64 = std::str::from_utf8(part)
                        .unwrap()
                        .parse()
                        .map_err(|_| "content-length overflow")?;
                    if length.is_some_and(|l| l != n) {
                        return Err("conflicting content-length".into());
                    }
                    length = Some(n);
                }
            }
            b"transfer-encoding" => {
                for c in value.split(|&b| b == b',') {
                    te.push(ows(c).to_ascii_lowercase());
                }
            }
            _ => {}
        }
    }
    let mut body = Vec::new();
    if !te.is_empty() {
        if http10 || length.is_some() || te != [b"chunked".to_vec()] {
            return Err("transfer-encoding".into());
        }
        loop {
            let Some(end) = line(buf, at)? else {
                return Ok(None);
            };
            let size = chunk_size(&buf[at..end])?;
            at = end + 2;
            if size == 0 {
                loop {
                    let Some(end) = line(buf, at)? else {
                        return Ok(None);
                    };
                    let l = &buf[at..end];
                    at = end + 2;
                    if l.is_empty() {
                        return Ok(Some(Msg { len: at, body }));
                    }
                    let n = l.iter().take_while(|&&b| tchar(b)).count();
                    if n == 0 || l.get(n) != Some(&b':') {
                        return Err("trailer".into());
                    }
                    if !l[n + 1..]
                        .iter()
                        .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b) || b >= 0x80)
                    {
                        return Err("trailer value".into());
                    }
                }
            }
            let size = size as usize;
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Err("chunk data end".into());
            }
            at += size + 2;
        }
    }
    let n = length.unwrap_or(0) as usize;
    if buf.len() < at + n {
        return Ok(None);
    }
    body.extend_from_slice(&buf[at..at + n]);
    Ok(Some(Msg { len: at + n, body }))
}

/// `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`
fn chunk_size(l: &[u8]) -> Result<u64, String> {
    let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size".into());
    }
    let mut size: u64 = 0;
    for &d in &l[..digits] {
        let v = (d as char).to_digit(16).unwrap() as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .ok_or("chunk size overflow")?;
    }
    let mut rest = &l[digits..];
    let skip_ws = |s: &mut &[u8]| {
        while let [b' ' | b'\t', r @ ..] = *s {
            *s = r;
        }
    };
    let token = |s: &mut &[u8]| -> Result<(), String> {
        let n = s.iter().take_while(|&&b| tchar(b)).count();
        if n == 0 {
            return Err("extension token".into());
        }
        *s = &s[n..];
        Ok(())
    };
    while !rest.is_empty() {
        skip_ws(&mut rest);
        let [b';', r @ ..] = rest else {
            return Err("chunk extension".into());
        };
        rest = r;
        skip_ws(&mut rest);
        token(&mut rest)?;
        let mut look = rest;
        skip_ws(&mut look);
        if let [b'=', r @ ..] = look {
            rest = r;
            skip_ws(&mut rest);
            if let [b'"', r @ ..] = rest {
                rest = r;
                loop {
                    match rest {
                        [b'"', r @ ..] => {
                            rest = r;
                            break;
                        }
                        [b'\\', c, r @ ..] if *c == b'\t' || (0x20..0x7f).contains(c) => rest = r,
                        [c, r @ ..]
                            if *c == b'\t'
                                || *c == b' '
                                || (0x21..0x7f).contains(c) && *c != b'\\' =>
                        {
                            rest = r
                        }
                        _ => return Err("quoted extension".into()),
                    }
                }
            } else {
                token(&mut rest)?;
            }
        }
    }
    Ok(size)
}
