//! XML bodies, as far as `XML:/*` reads them: the text of every node
//! (character data and attribute values), entities as written. Not a
//! validating parser: markup that does not close sets `REQBODY_ERROR`.

use crate::request::Parsed;

pub fn parse(p: &mut Parsed, body: &[u8]) {
    let mut i = 0;
    let mut text = Vec::new();
    while i < body.len() {
        if body[i] == b'<' {
            let t = String::from_utf8_lossy(&text);
            if !t.trim().is_empty() {
                p.xml.push(t.trim().as_bytes().to_vec());
            }
            text.clear();
            let Some(end) = body[i..].iter().position(|&c| c == b'>') else {
                p.fail("XML parsing error: a tag does not close".into());
                return;
            };
            // Attribute values are text too.
            let tag = &body[i + 1..i + end];
            let mut q = None;
            let mut val = Vec::new();
            for &c in tag {
                match q {
                    None if c == b'"' || c == b'\'' => q = Some(c),
                    Some(open) if c == open => {
                        p.xml.push(std::mem::take(&mut val));
                        q = None;
                    }
                    Some(_) => val.push(c),
                    None => {}
                }
            }
            i += end + 1;
        } else {
            text.push(body[i]);
            i += 1;
        }
    }
    let t = String::from_utf8_lossy(&text);
    if !t.trim().is_empty() {
        p.xml.push(t.trim().as_bytes().to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_nodes_and_attributes() {
        let mut p = Parsed::default();
        parse(
            &mut p,
            br#"<?xml version="1.0"?><a x='1 OR 1=1'><b>hi</b> <c>there</c></a>"#,
        );
        let texts: Vec<&[u8]> = p.xml.iter().map(Vec::as_slice).collect();
        assert_eq!(texts, [&b"1.0"[..], b"1 OR 1=1", b"hi", b"there"]);
        let mut p = Parsed::default();
        parse(&mut p, b"<a");
        assert!(p.reqbody_error);
    }
}
