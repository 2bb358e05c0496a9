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
