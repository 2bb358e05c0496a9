//! The real OWASP Core Rule Set v4 (`../shared/testdata/waf-crs-rules/`)
//! loads whole: every directive, variable, operator, transformation and
//! action it uses is understood, none skipped.

use std::path::PathBuf;

use centinela_waf::rule::{Collection, Entry, OpKind};

fn crs_files() -> Vec<PathBuf> {
    let dir = centinela_testkit::testdata("waf-crs-rules");
    let mut files = vec![dir.join("crs-setup.conf.example")];
    let mut rules: Vec<PathBuf> = std::fs::read_dir(dir.join("rules"))
        .expect("the CRS rules in the shared test data")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    rules.sort();
    files.extend(rules);
    files
}

#[test]
fn the_core_rule_set_loads_whole() {
    let files = crs_files();
    let set = centinela_waf::load(&files).unwrap_or_else(|e| panic!("{e}"));
    let rules: Vec<_> = set.rules().collect();
    let markers = set
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Marker(_)))
        .count();
    let chained = rules.iter().filter(|r| r.chain.is_some()).count();
    println!(
        "CRS: {} files, {} rules ({} chained), {} markers",
        files.len(),
        rules.len(),
        chained,
        markers
    );
    // What CRS 4.28 holds (counted from its files: SecRule and SecAction
    // with an id, and SecMarker).
    let ids = |text: &str| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter(|l| l.trim_start().starts_with("\"id:") || l.contains(" \"id:"))
            .count()
    };
    let expected: usize = files
        .iter()
        .map(|f| ids(&std::fs::read_to_string(f).unwrap()))
        .sum();
    assert_eq!(rules.len(), expected, "every rule with an id is loaded");
    assert!(rules.len() > 500, "{}", rules.len());
    assert!(markers >= 30, "{markers}");
    // The anomaly decision and the setup's version are there.
    let by_id = |id: u32| rules.iter().find(|r| r.id == id).copied();
    let r949110 = by_id(949110).expect("rule 949110 decides on the inbound score");
    assert!(r949110
        .targets
        .iter()
        .any(|t| t.collection == Collection::Tx));
    let r900990 = by_id(900990).expect("crs-setup's version rule");
    assert_eq!(r900990.phase, 1);
    // Word lists are compiled once per file and shared.
    let pm = rules
        .iter()
        .filter(|r| matches!(r.operator.kind, OpKind::Pm(_)))
        .count();
    assert!(pm >= 20, "{pm}");
}

fn crs(settings: centinela_waf::Settings) -> centinela_waf::Waf {
    let set = centinela_waf::load(&crs_files()).unwrap_or_else(|e| panic!("{e}"));
    centinela_waf::Waf::new(set, settings)
}

fn get<'a>(target: &'a str, headers: Vec<(&'a [u8], &'a [u8])>) -> centinela_waf::Request<'a> {
    centinela_waf::Request {
        method: b"GET",
        target: target.as_bytes(),
        protocol: b"HTTP/1.1",
        headers,
        body: b"",
        body_truncated: false,
        remote_addr: "127.0.0.1".parse().unwrap(),
        unique_id: "test",
    }
}

const BROWSER: [(&[u8], &[u8]); 3] = [
    (b"Host", b"localhost"),
    (
        b"User-Agent",
        b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
    ),
    (b"Accept", b"text/html,application/json"),
];

#[test]
fn attacks_are_blocked_and_plain_requests_pass() {
    let waf = crs(Default::default());
    let ok = waf.inspect(&get("/products?q=red+shoes&page=2", BROWSER.to_vec()));
    assert_eq!(ok.block, None, "{:?}", ok.matched);
    assert_eq!(ok.score, 0, "{:?}", ok.matched);

    let sqli = waf.inspect(&get(
        "/products?q=1%27%20OR%20%271%27%3D%271",
        BROWSER.to_vec(),
    ));
    assert_eq!(sqli.block, Some(403), "{:?}", sqli.matched);
    assert_eq!(sqli.disruptive_rule, Some(949110));
    assert!(
        sqli.matched.iter().any(|m| m.id == 942100),
        "{:?}",
        sqli.matched
    );
    assert!(sqli.score >= 5);
    let m = sqli.matched.iter().find(|m| m.id == 942100).unwrap();
    assert_eq!(m.var, "ARGS:q");

    let xss = waf.inspect(&get(
        "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        BROWSER.to_vec(),
    ));
    assert_eq!(xss.block, Some(403), "{:?}", xss.matched);
    assert!(xss.matched.iter().any(|m| (941000..942000).contains(&m.id)));

    // A scanner's User-Agent (913100) and a path traversal (930100).
    let mut scanner = BROWSER.to_vec();
    scanner[1] = (b"User-Agent", b"sqlmap/1.7");
    assert_eq!(waf.inspect(&get("/", scanner)).block, Some(403));
    let lfi = waf.inspect(&get(
        "/files?name=..%2f..%2f..%2fetc%2fpasswd",
        BROWSER.to_vec(),
    ));
    assert_eq!(lfi.block, Some(403), "{:?}", lfi.matched);
}

#[test]
fn detect_mode_blocks_nothing_and_reports_everything() {
    let waf = crs(centinela_waf::Settings {
        detect_only: true,
        ..Default::default()
    });
    let o = waf.inspect(&get(
        "/products?q=1%27%20OR%20%271%27%3D%271",
        BROWSER.to_vec(),
    ));
    assert_eq!(o.block, None);
    assert_eq!(o.disruptive_rule, Some(949110));
    assert!(o.matched.iter().any(|m| m.id == 942100));
}

#[test]
fn json_bodies_are_inspected() {
    let waf = crs(Default::default());
    let mut headers = BROWSER.to_vec();
    headers.push((b"Content-Type", b"application/json"));
    let body = br#"{"product":{"name":"x","filter":"1' UNION SELECT password FROM users--"}}"#;
    let req = centinela_waf::Request {
        method: b"POST",
        body,
        ..get("/api/products", headers.clone())
    };
    let o = waf.inspect(&req);
    assert_eq!(o.block, Some(403), "{:?}", o.matched);
    assert!(
        o.matched
            .iter()
            .any(|m| m.var == "ARGS:json.product.filter"),
        "{:?}",
        o.matched
    );
    let benign =
        r#"{"product":{"name":"Camiseta \"clásica\" de algodón","price":12.5}}"#.as_bytes();
    let req = centinela_waf::Request {
        method: b"POST",
        body: benign,
        ..get("/api/products", headers)
    };
    let o = waf.inspect(&req);
    assert_eq!(o.block, None, "{:?}", o.matched);
}

#[test]
fn bodies_that_cannot_be_read_whole_are_refused_with_400() {
    let waf = crs(Default::default());
    let mut headers = BROWSER.to_vec();
    headers.push((b"Content-Type", b"application/json"));
    let broken = centinela_waf::Request {
        method: b"POST",
        body: br#"{"q": "1' OR '1'='1"#,
        ..get("/api/products", headers)
    };
    let o = waf.inspect(&broken);
    assert_eq!(o.block, Some(400), "{:?}", o.matched);
    assert_eq!(
        o.disruptive_rule,
        Some(centinela_waf::engine::REQBODY_ERROR_RULE)
    );
    let why = |o: &centinela_waf::Outcome, text: &str| {
        o.matched
            .iter()
            .any(|m| m.id == centinela_waf::engine::REQBODY_ERROR_RULE && m.msg.contains(text))
    };
    assert!(why(&o, "JSON parsing error"), "{:?}", o.matched);

    let many = "a=1&".repeat(1500);
    let mut form = BROWSER.to_vec();
    form.push((b"Content-Type", b"application/x-www-form-urlencoded"));
    let o = waf.inspect(&centinela_waf::Request {
        method: b"POST",
        body: many.as_bytes(),
        ..get("/api/products", form)
    });
    assert_eq!(o.block, Some(400));
    assert!(why(&o, "more than 1000 arguments"), "{:?}", o.matched);
}

/// The worst cases of 128 KiB bodies at PL2, timed and printed (not
/// asserted: test machines are noisy; `cargo bench -p centinela-waf` is
/// the measure).
#[test]
fn pathological_bodies_at_pl2_are_timed() {
    let waf = crs(centinela_waf::Settings {
        paranoia: 2,
        ..Default::default()
    });
    let mut form = BROWSER.to_vec();
    form.push((b"Content-Type", b"application/x-www-form-urlencoded"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("32,768 arguments", "a=1&".repeat(32_768).into_bytes()),
        ("one 128 KiB value of quotes and parentheses", {
            let mut b = b"q=".to_vec();
            b.extend(std::iter::repeat_n(b"'(".as_slice(), 65_535).flatten());
            b
        }),
        ("one 128 KiB value of SQL keywords", {
            let mut b = b"q=".to_vec();
            while b.len() < 131_072 {
                b.extend_from_slice(b"select+union+or+and+");
            }
            b
        }),
    ];
    for (name, body) in &cases {
        let t = std::time::Instant::now();
        let o = waf.inspect(&centinela_waf::Request {
            method: b"POST",
            body,
            ..get("/api/products", form.clone())
        });
        println!(
            "PL2, {name} ({} bytes): {:.1} ms, {}",
            body.len(),
            t.elapsed().as_secs_f64() * 1e3,
            o.block
                .map_or("passed".to_string(), |s| format!("refused {s}"))
        );
        // Each is refused: too many arguments, or attack-shaped input.
        assert!(o.block.is_some(), "{name}: {:?}", o.matched);
    }
}

/// The prefilter only ever saves work: for every CRS `@rx` and `@pm`
/// operator, on every attack and benign line of libinjection's data (each
/// also URL-decoded and lower-cased, as CRS's transformations would give
/// it), whenever the operator matches, one of its literals is there.
#[test]
fn the_prefilter_never_hides_a_match_of_a_crs_operator() {
    let set = centinela_waf::load(&crs_files()).unwrap_or_else(|e| panic!("{e}"));
    let dir = centinela_testkit::testdata("waf-libinjection/data");
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read(&f).unwrap();
        // A sample of each file: every 12th line.
        for l in text.split(|&c| c == b'\n').step_by(12) {
            lines.push(l.to_vec());
            let decoded = centinela_waf::transform::Transform::UrlDecodeUni.apply(l);
            lines.push(decoded.to_ascii_lowercase());
        }
    }
    let mut links = Vec::new();
    for r in set.rules() {
        let mut l = Some(r);
        while let Some(x) = l {
            links.push(x);
            l = x.chain.as_deref();
        }
    }
    let (mut checked, mut with_literals) = (0, 0);
    for r in links {
        let Some(lits) = &r.operator.literals else {
            continue;
        };
        with_literals += 1;
        let ac = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(lits.iter())
            .unwrap();
        for line in &lines {
            let matched = match &r.operator.kind {
                OpKind::Rx(re) => re.is_match(line),
                OpKind::Pm(pm) => pm.is_match(line.as_slice()),
                _ => continue,
            };
            if matched {
                checked += 1;
                assert!(
                    ac.is_match(line.as_slice()),
                    "rule {}: {:?} matched {:?} without any of its literals {:?}",
                    r.id,
                    r.operator.text,
                    String::from_utf8_lossy(line),
                    lits.iter()
                        .map(|l| String::from_utf8_lossy(l))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
    println!(
        "{with_literals} operators prefiltered; {checked} matches over {} lines checked",
        lines.len()
    );
    assert!(
        with_literals > 150 && checked > 1000,
        "{with_literals} {checked}"
    );
}

/// Phases 3 and 4: with `inspect_response`, the request's state carries
/// over and a response body leaking a SQL error is refused by CRS's
/// outbound score (959100); a plain one passes. Without it, no state.
#[test]
fn response_phases_refuse_a_leak() {
    let set = centinela_waf::load(&crs_files()).unwrap_or_else(|e| panic!("{e}"));
    let waf = centinela_waf::Waf::new(
        set.clone(),
        centinela_waf::Settings {
            inspect_response: true,
            ..Default::default()
        },
    );
    assert!(waf.inspects_responses());
    let req = get("/orders?id=7", BROWSER.to_vec());
    let out = waf.inspect(&req);
    assert_eq!(out.block, None, "{:?}", out.matched);
    let state = out.state.expect("state for the response phases");
    let resp = |body: &'static [u8]| centinela_waf::Response {
        status: 200,
        protocol: b"HTTP/1.1",
        headers: vec![(b"Content-Type", b"text/html")],
        body,
    };
    let leak = waf.inspect_response(
        &req,
        &state,
        &resp(b"<p>You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near ''7'' at line 1</p>"),
    );
    assert_eq!(leak.block, Some(403), "{:?}", leak.matched);
    assert!(
        leak.matched.iter().any(|m| m.id / 1000 == 951),
        "{:?}",
        leak.matched
    );
    let plain = waf.inspect_response(&req, &state, &resp(b"<p>Order 7: 2 items</p>"));
    assert_eq!(plain.block, None, "{:?}", plain.matched);

    let off = centinela_waf::Waf::new(set, Default::default());
    assert!(!off.inspects_responses());
    assert!(off.inspect(&req).state.is_none());
}
