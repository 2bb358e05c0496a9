//! `@detectSQLi` and `@detectXSS`: libinjection's algorithms, through
//! `libinjectionrs`, a pure-Rust port (no C to build; its lints forbid
//! panics). Its detection and false-positive rates on libinjection's own
//! data are measured by `tests/libinjection.rs`.

/// Is this SQL injection, by libinjection's fingerprints?
pub fn sqli(v: &[u8]) -> bool {
    // The state alone: `detect_sqli` would fingerprint the input a second
    // time for a result nobody reads.
    libinjectionrs::SqliState::new(v, libinjectionrs::SqliFlags::FLAG_NONE).detect()
}

/// The fingerprint libinjection gives an input (for logs and tests).
pub fn sqli_fingerprint(v: &[u8]) -> String {
    libinjectionrs::detect_sqli(v)
        .fingerprint
        .map(|f| f.to_string())
        .unwrap_or_default()
}

/// Is this cross-site scripting, by libinjection's HTML5 tokenizer?
pub fn xss(v: &[u8]) -> bool {
    libinjectionrs::detect_xss(v).is_injection()
}
