//! `@detectSQLi` and `@detectXSS` (libinjectionrs) on libinjection's own
//! data (`../shared/testdata/waf-libinjection/data/`): one URL-encoded
//! input per line. Prints detection and false-positive rates, and holds
//! them to what was measured (README).

use centinela_waf::detect;
use centinela_waf::transform::Transform;

fn lines(prefix: &str) -> Vec<Vec<u8>> {
    let dir = centinela_testkit::testdata("waf-libinjection/data");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for l in std::fs::read(&f).unwrap().split(|&c| c == b'\n') {
            if l.is_empty() || l.starts_with(b"#") {
                continue;
            }
            out.push(Transform::UrlDecode.apply(l).into_owned());
        }
    }
    out
}

fn rate(inputs: &[Vec<u8>], f: fn(&[u8]) -> bool) -> (usize, f64) {
    let hits = inputs.iter().filter(|i| f(i)).count();
    (hits, 100.0 * hits as f64 / inputs.len() as f64)
}

#[test]
fn detection_and_false_positives_on_libinjections_data() {
    let sqli = lines("sqli-");
    let xss = lines("xss-");
    let benign = lines("false_positives");
    let (s, sr) = rate(&sqli, detect::sqli);
    let (x, xr) = rate(&xss, detect::xss);
    let (f, fr) = rate(&benign, detect::sqli);
    println!(
        "detectSQLi: {s} of {} SQL injections ({sr:.1}%)",
        sqli.len()
    );
    println!("detectXSS: {x} of {} XSS ({xr:.1}%)", xss.len());
    println!(
        "detectSQLi false positives: {f} of {} benign lines ({fr:.1}%)",
        benign.len()
    );
    assert!(sqli.len() > 17_000 && xss.len() > 1_600 && benign.len() > 400);
    assert!(sr >= 99.5, "{sr}");
    assert!(xr >= 99.0, "{xr}");
    assert!(fr <= 6.0, "{fr}");
}
