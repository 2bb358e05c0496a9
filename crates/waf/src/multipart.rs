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

/// A `name="value"` parameter of a `Content-Disposition` header. Quoted
/// values may hold `;` and backslash escapes (`\"`, `\\`), as
/// ModSecurity's multipart parser reads them.
fn param(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut i = 0;
    let h = header;
    // Past the disposition type (`form-data`).
    while i < h.len() && h[i] != b';' {
        i += 1;
    }
    while i < h.len() {
        // At a `;`: the next parameter.
        i += 1;
        while i < h.len() && h[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < h.len() && h[i] != b'=' && h[i] != b';' {
            i += 1;
        }
        let key = h[start..i].trim_ascii();
        if i >= h.len() || h[i] == b';' {
            continue;
        }
        i += 1;
        while i < h.len() && h[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if h.get(i) == Some(&b'"') {
            i += 1;
            while i < h.len() && h[i] != b'"' {
                if h[i] == b'\\' && matches!(h.get(i + 1), Some(b'"') | Some(b'\\')) {
                    i += 1;
                }
                value.push(h[i]);
                i += 1;
            }
            // The closing quote, then anything up to the next `;`.
            while i < h.len() && h[i] != b';' {
                i += 1;
            }
        } else {
            while i < h.len() && h[i] != b';' {
                value.push(h[i]);
                i += 1;
            }
            let t = value.trim_ascii().len();
            value.truncate(t);
        }
        if key.eq_ignore_ascii_case(name.as_bytes()) {
            return Some(value);
        }
    }
    None
}

/// The end of the line starting at `at` (the index after its `\n`), and
/// the line without its `\r\n` or `\n`.
fn line(body: &[u8], at: usize) -> Option<(usize, &[u8])> {
    let nl = find(body, b"\n", at)?;
    let l = &body[at..nl];
    Some((nl + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}

pub fn parse(p: &mut Parsed, body: &[u8], content_type: &[u8]) {
    let Some(b) = boundary(content_type) else {
        p.multipart_strict_error = true;
        p.fail("multipart: no boundary in Content-Type".into());
        return;
    };
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(&b);
    // Lines may end in CRLF or, leniently, LF (as ModSecurity reads them).
    let mut next_delim = b"\n".to_vec();
    next_delim.extend_from_slice(&delim);
    let first = if body.starts_with(&delim) {
        Some(0)
    } else {
        find(body, &next_delim, 0).map(|i| i + 1)
    };
    let Some(first) = first else {
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
        // The rest of the boundary line.
        let Some((mut pos, _)) = line(body, at) else {
            break;
        };
        let mut name = None;
        let mut filename = None;
        let mut ended = false;
        while let Some((next, l)) = line(body, pos) {
            pos = next;
            if l.is_empty() {
                ended = true;
                break;
            }
            let Some(colon) = l.iter().position(|&c| c == b':') else {
                p.multipart_strict_error = true;
                continue;
            };
            let (hn, hv) = (&l[..colon], &l[colon + 1..]);
            p.multipart_part_headers.push((hn.to_vec(), l.to_vec()));
            if hn.eq_ignore_ascii_case(b"content-disposition") {
                name = param(hv, "name");
                filename = param(hv, "filename");
            }
        }
        if !ended {
            break;
        }
        let Some(end) = find(body, &next_delim, pos) else {
            break;
        };
        let data = &body[pos..end];
        let data = data.strip_suffix(b"\r").unwrap_or(data);
        let name = name.unwrap_or_default();
        match filename {
            Some(f) => p.files.push((name, f)),
            None => p.args_post.push((name, data.to_vec())),
        }
        at = end + next_delim.len();
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
        assert_eq!(
            param(b"form-data; name=\"fi;le\"; filename=\"a\\\"b\"", "name").unwrap(),
            b"fi;le"
        );
        assert_eq!(
            param(
                b"form-data; name=\"fi;le\"; filename=\"a\\\"b\"",
                "filename"
            )
            .unwrap(),
            b"a\"b"
        );
        assert_eq!(
            param(b"form-data; name=x ; filename=y", "name").unwrap(),
            b"x"
        );
        // LF-only lines are read too.
        let mut p = Parsed::default();
        parse(
            &mut p,
            b"--XX\nContent-Disposition: form-data; name=\"a\"\n\nv\n--XX--\n",
            b"multipart/form-data; boundary=XX",
        );
        assert_eq!(p.args_post, [(b"a".to_vec(), b"v".to_vec())]);
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
