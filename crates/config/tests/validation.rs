use centinela_config::{parse, Balance, HashKey, RetryOn};
use std::time::Duration;

const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[[listener]]
name = "web"
listen = "127.0.0.1:8080"

[[route]]
host = "API.example.com:8080"
path_prefix = "/api"
strip_prefix = true
upstream = "products"

[upstream.products]
balance = "hash"
hash_key = "header:X-User-Id"
servers = [ { address = "127.0.0.1:8001", weight = 3 }, "127.0.0.1:8002" ]
health = { path = "/health", interval = "2s", timeout = "1s", rise = 2, fall = 3, expect_status = "200-399" }
retry = { attempts = 3, on = ["connect", "503"] }
"#;

#[test]
fn good_config_builds_typed_values() {
    let cfg = parse(GOOD, "good.toml").unwrap().config;
    assert_eq!(cfg.listeners[0].listen.port(), 8080);
    let r = &cfg.routes[0];
    assert_eq!(r.host.as_deref(), Some("api.example.com"));
    assert!(r.strip_prefix);
    let u = cfg.upstream("products").unwrap();
    assert_eq!(u.balance, Balance::Hash);
    assert_eq!(u.hash_key, Some(HashKey::Header("x-user-id".into())));
    assert_eq!(u.servers.len(), 2);
    assert_eq!((u.servers[0].weight, u.servers[1].weight), (3, 1));
    let h = u.health.as_ref().unwrap();
    assert_eq!((h.rise, h.fall, h.interval), (2, 3, Duration::from_secs(2)));
    assert_eq!(u.retry.on, vec![RetryOn::Connect, RetryOn::Status(503)]);
    // Defaults fill what is not written.
    assert_eq!(u.limits.max_in_flight, 1000);
    assert_eq!(u.timeouts.response, Duration::from_secs(30));
    assert_eq!(u.retry.buffer_body, 65536);
    assert_eq!(cfg.runtime.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(cfg.listeners[0].header_timeout, Duration::from_secs(30));
}

#[test]
fn listener_header_timeout_is_a_positive_duration() {
    let with = |v: &str| {
        GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\nheader_timeout = {v}"),
        )
    };
    let cfg = parse(&with("\"5s\""), "t.toml").unwrap().config;
    assert_eq!(cfg.listeners[0].header_timeout, Duration::from_secs(5));
    for (v, why) in [
        ("\"0s\"", "must be at least 1ms"),
        ("\"soon\"", "invalid duration"),
    ] {
        let err = parse(&with(v), "t.toml").unwrap_err();
        let line = err.errors[0].to_string();
        assert!(
            line.starts_with("t.toml:8:18: listener[0].header_timeout: ") && line.contains(why),
            "{line}"
        );
    }
}

/// A config with many mistakes: each is reported, with its own line:column.
#[test]
fn every_error_is_reported_at_once_with_line_and_column() {
    let src = r#"[admin]
listen = "not-an-address"

[[listener]]
name = "web"
listen = "127.0.0.1:8080"
colour = "blue"

[[route]]
upstream = "nope"

[upstream.products]
balance = "hash"
servers = [ { address = "127.0.0.1:8001", weight = 0 }, { address = "127.0.0.1:8001" }, "300.1.1.1:80" ]
health = { interval = "2 parsecs", rise = 0, fall = 0 }
timeouts = { connect = "10" }
"#;
    let err = parse(src, "bad.toml").unwrap_err();
    let lines: Vec<String> = err.errors.iter().map(|d| d.to_string()).collect();
    let expect = [
        "bad.toml:2:10: admin.listen: invalid address \"not-an-address\"",
        "bad.toml:7:1: listener[0].colour: unknown key `colour`",
        "bad.toml:10:12: route[0].upstream: unknown upstream \"nope\"; defined upstreams: products",
        "bad.toml:12:1: upstream.products.hash_key: balance = \"hash\" requires hash_key",
        "bad.toml:14:52: upstream.products.servers[0].weight: must be at least 1, found 0",
        "bad.toml:14:69: upstream.products.servers[1]: duplicate server 127.0.0.1:8001",
        "bad.toml:14:89: upstream.products.servers[2]: invalid address \"300.1.1.1:80\"",
        "bad.toml:15:23: upstream.products.health.interval: invalid duration \"2 parsecs\"",
        "bad.toml:15:43: upstream.products.health.rise: must be at least 1, found 0",
        "bad.toml:15:53: upstream.products.health.fall: must be at least 1, found 0",
        "bad.toml:16:24: upstream.products.timeouts.connect: invalid duration \"10\": missing unit",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "missing diagnostic {e:?} in:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(
        lines.len(),
        expect.len(),
        "unexpected extra diagnostics:\n{}",
        lines.join("\n")
    );
    // Display names the count and lists them all.
    assert!(err
        .to_string()
        .starts_with("invalid configuration: 11 errors"));
}

#[test]
fn syntax_errors_have_positions() {
    let err = parse("[[listener]]\nname = \"web\nlisten = 1\n", "x.toml").unwrap_err();
    let first = err.errors[0].to_string();
    assert!(first.starts_with("x.toml:2:"), "{first}");
    assert!(first.contains("TOML syntax error"), "{first}");
}

#[test]
fn duplicate_listeners_and_routes_and_unknown_listener() {
    let src = r#"
[[listener]]
name = "a"
listen = "127.0.0.1:1"
[[listener]]
name = "a"
listen = "127.0.0.1:1"
[[route]]
upstream = "u"
[[route]]
upstream = "u"
listener = "zzz"
[[route]]
upstream = "u"
[upstream.u]
servers = ["127.0.0.1:2"]
"#;
    let err = parse(src, "d.toml").unwrap_err().to_string();
    assert!(err.contains("duplicate listener name \"a\""), "{err}");
    assert!(
        err.contains("address 127.0.0.1:1 is already used by listener[0]"),
        "{err}"
    );
    assert!(
        err.contains("route[1].listener: unknown listener \"zzz\""),
        "{err}"
    );
    assert!(err.contains("route[2]: duplicate route"), "{err}");
}

#[test]
fn wrong_types_and_ranges() {
    let src = r#"
[[listener]]
name = 5
listen = "127.0.0.1:1"
[[route]]
upstream = "u"
path_prefix = "api"
[upstream.u]
balance = "fastest"
servers = []
breaker = { error_ratio = 1.5 }
retry = { on = ["connect", "teapot"], budget_percent = 101 }
[runtime]
log_format = "xml"
"#;
    let err = parse(src, "t.toml").unwrap_err().to_string();
    for needle in [
        "listener[0].name: expected a string, found an integer",
        "route[0].path_prefix: must start with '/'",
        "upstream.u.balance: unknown balance \"fastest\"",
        "upstream.u.servers: an upstream needs at least one server",
        "upstream.u.breaker.error_ratio: must be a number greater than 0 and at most 1",
        "upstream.u.retry.on[1]: unknown retry condition \"teapot\"",
        "upstream.u.retry.budget_percent: must be at most 100, found 101",
        "runtime.log_format: unknown log format \"xml\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn missing_listener_is_an_error_and_hash_key_without_hash_warns() {
    let err = parse("[upstream.u]\nservers=[\"127.0.0.1:1\"]\n", "m.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at least one [[listener]] is required"),
        "{err}"
    );

    let src = "[[listener]]\nname=\"w\"\nlisten=\"127.0.0.1:1\"\n[upstream.u]\nhash_key=\"client_ip\"\nservers=[\"127.0.0.1:2\"]\n";
    let loaded = parse(src, "w.toml").unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0]
        .to_string()
        .contains("ignored: balance is not \"hash\""));
}

/// The example in docs/config.md is the documentation: it must load.
#[test]
fn documented_example_config_loads() {
    let doc = include_str!("../../../docs/config.md");
    let start = doc
        .find("```toml\n")
        .expect("docs/config.md has a ```toml block")
        + 8;
    let end = start + doc[start..].find("```").unwrap();
    let loaded = parse(&doc[start..end], "docs/config.md").unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let u = loaded.config.upstream("products").unwrap();
    assert_eq!(u.balance, Balance::RoundRobin);
    assert_eq!(u.servers.len(), 2);
}

/// Also the quickstart config that ships in the repository.
#[test]
fn shipped_example_configs_load() {
    let (name, src) = (
        "examples/gateway.toml",
        include_str!("../../../examples/gateway.toml"),
    );
    let loaded = parse(src, name).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.config.upstreams[0].servers.len(), 3);
}
