//! What a rule reads: collections, selectors, `!` exclusions and `&`
//! counts (`ARGS|!ARGS:x|&TX:y`), and the `%{…}` macros of text.

use regex::bytes::{Regex, RegexBuilder};

/// A variable's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    Args,
    ArgsGet,
    ArgsPost,
    ArgsNames,
    ArgsGetNames,
    ArgsPostNames,
    ArgsCombinedSize,
    RequestHeaders,
    RequestHeadersNames,
    RequestCookies,
    RequestCookiesNames,
    RequestFilename,
    RequestBasename,
    RequestUri,
    RequestUriRaw,
    RequestLine,
    RequestMethod,
    RequestProtocol,
    QueryString,
    RequestBody,
    RequestBodyLength,
    ReqbodyError,
    ReqbodyErrorMsg,
    ReqbodyProcessor,
    Files,
    FilesNames,
    FilesCombinedSize,
    FilesSizes,
    MultipartPartHeaders,
    MultipartStrictError,
    MultipartUnmatchedBoundary,
    MultipartBoundaryQuoted,
    MultipartBoundaryWhitespace,
    MultipartDataAfter,
    MultipartDataBefore,
    MultipartHeaderFolding,
    MultipartInvalidHeaderFolding,
    MultipartInvalidPart,
    MultipartInvalidQuoting,
    MultipartLfLine,
    MultipartMissingSemicolon,
    MultipartCrlfLfLines,
    MultipartFilename,
    MultipartName,
    Xml,
    Tx,
    Env,
    MatchedVar,
    MatchedVars,
    MatchedVarName,
    MatchedVarsNames,
    RemoteAddr,
    RemotePort,
    UniqueId,
    Duration,
    FullRequest,
    FullRequestLength,
    /// Response variables: read, never inspected (no response phase; see
    /// `docs/waf.md`).
    ResponseBody,
    ResponseHeaders,
    ResponseHeadersNames,
    ResponseStatus,
    ResponseProtocol,
    ResponseContentType,
    ResponseContentLength,
}

impl Collection {
    pub fn named(name: &str) -> Option<Collection> {
        use Collection::*;
        Some(match name.to_ascii_uppercase().as_str() {
            "ARGS" => Args,
            "ARGS_GET" => ArgsGet,
            "ARGS_POST" => ArgsPost,
            "ARGS_NAMES" => ArgsNames,
            "ARGS_GET_NAMES" => ArgsGetNames,
            "ARGS_POST_NAMES" => ArgsPostNames,
            "ARGS_COMBINED_SIZE" => ArgsCombinedSize,
            "REQUEST_HEADERS" => RequestHeaders,
            "REQUEST_HEADERS_NAMES" => RequestHeadersNames,
            "REQUEST_COOKIES" => RequestCookies,
            "REQUEST_COOKIES_NAMES" => RequestCookiesNames,
            "REQUEST_FILENAME" => RequestFilename,
            "REQUEST_BASENAME" => RequestBasename,
            "REQUEST_URI" => RequestUri,
            "REQUEST_URI_RAW" => RequestUriRaw,
            "REQUEST_LINE" => RequestLine,
            "REQUEST_METHOD" => RequestMethod,
            "REQUEST_PROTOCOL" => RequestProtocol,
            "QUERY_STRING" => QueryString,
            "REQUEST_BODY" => RequestBody,
            "REQUEST_BODY_LENGTH" => RequestBodyLength,
            "REQBODY_ERROR" => ReqbodyError,
            "REQBODY_ERROR_MSG" => ReqbodyErrorMsg,
            "REQBODY_PROCESSOR" => ReqbodyProcessor,
            "FILES" => Files,
            "FILES_NAMES" => FilesNames,
            "FILES_COMBINED_SIZE" => FilesCombinedSize,
            "FILES_SIZES" => FilesSizes,
            "MULTIPART_PART_HEADERS" => MultipartPartHeaders,
            "MULTIPART_STRICT_ERROR" => MultipartStrictError,
            "MULTIPART_UNMATCHED_BOUNDARY" => MultipartUnmatchedBoundary,
            "MULTIPART_BOUNDARY_QUOTED" => MultipartBoundaryQuoted,
            "MULTIPART_BOUNDARY_WHITESPACE" => MultipartBoundaryWhitespace,
            "MULTIPART_DATA_AFTER" => MultipartDataAfter,
            "MULTIPART_DATA_BEFORE" => MultipartDataBefore,
            "MULTIPART_HEADER_FOLDING" => MultipartHeaderFolding,
            "MULTIPART_INVALID_HEADER_FOLDING" => MultipartInvalidHeaderFolding,
            "MULTIPART_INVALID_PART" => MultipartInvalidPart,
            "MULTIPART_INVALID_QUOTING" => MultipartInvalidQuoting,
            "MULTIPART_LF_LINE" => MultipartLfLine,
            "MULTIPART_MISSING_SEMICOLON" => MultipartMissingSemicolon,
            "MULTIPART_CRLF_LF_LINES" => MultipartCrlfLfLines,
            "MULTIPART_FILENAME" => MultipartFilename,
            "MULTIPART_NAME" => MultipartName,
            "XML" => Xml,
            "TX" => Tx,
            "ENV" => Env,
            "MATCHED_VAR" => MatchedVar,
            "MATCHED_VARS" => MatchedVars,
            "MATCHED_VAR_NAME" => MatchedVarName,
            "MATCHED_VARS_NAMES" => MatchedVarsNames,
            "REMOTE_ADDR" => RemoteAddr,
            "REMOTE_PORT" => RemotePort,
            "UNIQUE_ID" => UniqueId,
            "DURATION" => Duration,
            "FULL_REQUEST" => FullRequest,
            "FULL_REQUEST_LENGTH" => FullRequestLength,
            "RESPONSE_BODY" => ResponseBody,
            "RESPONSE_HEADERS" => ResponseHeaders,
            "RESPONSE_HEADERS_NAMES" => ResponseHeadersNames,
            "RESPONSE_STATUS" => ResponseStatus,
            "RESPONSE_PROTOCOL" => ResponseProtocol,
            "RESPONSE_CONTENT_TYPE" => ResponseContentType,
            "RESPONSE_CONTENT_LENGTH" => ResponseContentLength,
            _ => return None,
        })
    }

    /// Read only after a response: never inspected by this engine.
    pub fn is_response(self) -> bool {
        use Collection::*;
        matches!(
            self,
            ResponseBody
                | ResponseHeaders
                | ResponseHeadersNames
                | ResponseStatus
                | ResponseProtocol
                | ResponseContentType
                | ResponseContentLength
        )
    }
}

/// Which members of a collection a target names.
#[derive(Debug, Clone)]
pub enum Selector {
    All,
    /// By name (compared without regard to case, as ModSecurity does).
    Key(String),
    Regex(Regex),
    /// `XML:/xpath`.
    XPath(String),
}

/// One entry of a rule's variable list.
#[derive(Debug, Clone)]
pub struct Target {
    pub collection: Collection,
    pub selector: Selector,
    /// `&ARGS`: the number of members, not their values.
    pub count: bool,
    /// `!ARGS:x`: removed from the other entries.
    pub exclude: bool,
}

/// Text with `%{COLLECTION.key}` macros, expanded per request.
#[derive(Debug, Clone, PartialEq)]
pub struct Expand {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Var(Collection, Option<String>),
}

impl Expand {
    pub fn parse(s: &str) -> Result<Expand, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find("%{") {
            let Some(len) = rest[at + 2..].find('}') else {
                break;
            };
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_string()));
            }
            let name = &rest[at + 2..at + 2 + len];
            let (col, key) = match name.split_once('.') {
                Some((c, k)) => (c, Some(k.to_ascii_lowercase())),
                None => (name, None),
            };
            let col = Collection::named(col)
                .ok_or_else(|| format!("unknown variable {col:?} in macro %{{{name}}}"))?;
            parts.push(Part::Var(col, key));
            rest = &rest[at + 3 + len..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Expand { parts })
    }

    /// The text, when it has no macros, borrowed.
    pub fn text(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The text, when it has no macros.
    pub fn literal(&self) -> Option<String> {
        match self.parts.as_slice() {
            [] => Some(String::new()),
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }
}

/// A rule's variable list: `ARGS|!ARGS:foo|&TX:x|REQUEST_HEADERS:/^x-/|XML:/*`.
pub fn parse_targets(s: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let mut exclude = false;
        let mut count = false;
        loop {
            match b.get(i) {
                Some(b'!') => exclude = true,
                Some(b'&') => count = true,
                _ => break,
            }
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b':' && b[i] != b'|' {
            i += 1;
        }
        let name = &s[start..i];
        let collection =
            Collection::named(name).ok_or_else(|| format!("variable {name:?} is not supported"))?;
        let mut selector = Selector::All;
        if b.get(i) == Some(&b':') {
            i += 1;
            if collection == Collection::Xml {
                let start = i;
                while i < b.len() && b[i] != b'|' {
                    i += 1;
                }
                selector = Selector::XPath(s[start..i].to_string());
            } else if b.get(i) == Some(&b'/') {
                // A regular expression, to its closing unescaped slash.
                i += 1;
                let start = i;
                while i < b.len() && !(b[i] == b'/' && b[i - 1] != b'\\') {
                    i += 1;
                }
                if i >= b.len() {
                    return Err(format!("the selector of {name} has no closing /"));
                }
                let re = RegexBuilder::new(&s[start..i])
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("the selector of {name}: {e}"))?;
                selector = Selector::Regex(re);
                i += 1;
            } else {
                let start = i;
                while i < b.len() && b[i] != b'|' {
                    i += 1;
                }
                let key = s[start..i].trim_matches('\'');
                selector = Selector::Key(key.to_ascii_lowercase());
            }
        }
        if i < b.len() && b[i] != b'|' {
            return Err(format!("unexpected {:?} in the variable list", &s[i..]));
        }
        i += 1;
        out.push(Target {
            collection,
            selector,
            count,
            exclude,
        });
    }
    if out.is_empty() {
        return Err("the rule names no variable".into());
    }
    Ok(out)
}
