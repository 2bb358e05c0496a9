//! Runs rule files over one raw HTTP/1 request read from standard input
//! and prints what matched: for tuning rules and exclusions.
//!
//!     cargo run -p centinela-waf --example inspect -- PARANOIA RULES... < request

use std::io::Read;

fn main() {
    let mut args = std::env::args().skip(1);
    let paranoia: u8 = args.next().and_then(|p| p.parse().ok()).unwrap_or(1);
    let patterns: Vec<std::path::PathBuf> = args.map(Into::into).collect();
    let files = centinela_waf::files(&patterns).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let set = centinela_waf::load(&files).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let waf = centinela_waf::Waf::new(
        set,
        centinela_waf::Settings {
            paranoia,
            ..Default::default()
        },
    );
    let mut raw = Vec::new();
    std::io::stdin().read_to_end(&mut raw).unwrap_or_default();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    let (head, body) = raw.split_at(split);
    let mut lines = head
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(3, |&c| c == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let protocol = parts.next().unwrap_or(b"HTTP/1.1");
    let headers: Vec<(&[u8], &[u8])> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let i = l.iter().position(|&c| c == b':')?;
            Some((&l[..i], l[i + 1..].trim_ascii()))
        })
        .collect();
    let out = waf.inspect(&centinela_waf::Request {
        method,
        target,
        protocol,
        headers,
        body,
        body_truncated: false,
        remote_addr: "127.0.0.1".parse().expect("an address"),
        unique_id: "inspect",
    });
    for m in &out.matched {
        println!("{} {} {:?} [{}]", m.id, m.var, m.msg, m.data);
    }
    println!(
        "score {} decided by {:?}: {}",
        out.score,
        out.disruptive_rule,
        out.block
            .map_or("pass".to_string(), |s| format!("block {s}"))
    );
}
