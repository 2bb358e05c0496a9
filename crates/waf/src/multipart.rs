//! `multipart/form-data` bodies: each part's headers, its field name and
//! file name; fields become `ARGS_POST`, files `FILES`/`FILES_NAMES`.
//! Anything malformed sets `MULTIPART_STRICT_ERROR` (and
//! `REQBODY_ERROR`), as CRS's rules expect of ModSecurity.

use crate::request::Parsed;

fn boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    let ct = String::from_utf8_lossy(content_type);
    for param in ct.split(';').skip(1) {
        let (k, v) = param.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            if v.is_empty() {
                return None;
            }
            return Some(v.as_bytes().to_vec());
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// A `name="value"` parameter of a `Content-Disposition` header.
fn param(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let h = String::from_utf8_lossy(header);
    for p in h.split(';').skip(1) {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(name) {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            return Some(v.as_bytes().to_vec());
        }
    }
    None
}

pub fn parse(p: &mut Parsed, body: &[u8], content_type: &[u8]) {
    let Some(b) = boundary(content_type) else {
        p.multipart_strict_error = true;
        p.fail("multipart: no boundary in Content-Type".into());
        return;
    };
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(&b);
    let Some(first) = find(body, &delim, 0) else {
        p.multipart_strict_error = true;
        p.multipart_unmatched_boundary = true;
        p.fail("multipart: the boundary never appears".into());
        return;
    };
    let mut at = first + delim.len();
    loop {
        if body[at..].starts_with(b"--") {
            return;
        }
        let Some(nl) = find(body, b"\n", at) else {
            break;
        };
        let head_start = nl + 1;
        let Some(head_end) = find(body, b"\r\n\r\n", head_start)
            .map(|e| (e, 4))
            .or_else(|| find(body, b"\n\n", head_start).map(|e| (e, 2)))
        else {
            break;
        };
        let headers = &body[head_start..head_end.0];
        let data_start = head_end.0 + head_end.1;
        let mut next_delim = b"\r\n".to_vec();
        next_delim.extend_from_slice(&delim);
        let Some(data_end) = find(body, &next_delim, data_start) else {
            break;
        };
        let data = &body[data_start..data_end];
        let mut name = None;
        let mut filename = None;
        for line in headers.split(|&c| c == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&c| c == b':') else {
                p.multipart_strict_error = true;
                continue;
            };
            let (hn, hv) = (&line[..colon], &line[colon + 1..]);
            p.multipart_part_headers.push((hn.to_vec(), line.to_vec()));
            if hn.eq_ignore_ascii_case(b"content-disposition") {
                name = param(hv, "name");
                filename = param(hv, "filename");
            }
        }
        let name = name.unwrap_or_default();
        match filename {
            Some(f) => p.files.push((name, f)),
            None => p.args_post.push((name, data.to_vec())),
        }
        at = data_end + next_delim.len();
    }
    p.multipart_strict_error = true;
    p.fail("multipart: a part is malformed or the body ends early".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_files() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1 OR 1=1\r\n--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\r\n--XX--\r\n";
        let mut p = Parsed::default();
        parse(&mut p, body, b"multipart/form-data; boundary=XX");
        assert!(!p.multipart_strict_error);
        assert_eq!(p.args_post, [(b"a".to_vec(), b"1 OR 1=1".to_vec())]);
        assert_eq!(p.files, [(b"f".to_vec(), b"x.php".to_vec())]);
        assert_eq!(p.multipart_part_headers.len(), 3);
        let mut p = Parsed::default();
        parse(
            &mut p,
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ncut",
            b"multipart/form-data; boundary=XX",
        );
        assert!(p.multipart_strict_error && p.reqbody_error);
        let mut p = Parsed::default();
        parse(&mut p, b"x", b"multipart/form-data");
        assert!(p.multipart_strict_error);
    }
}
