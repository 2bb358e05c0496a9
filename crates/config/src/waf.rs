//! `[waf]`: the OWASP Core Rule Set (or the operator's own SecLang) run by
//! `centinela-waf` on every route that does not say `waf = false`. The
//! rule files are loaded here to be checked: a rule the engine cannot run
//! is an error naming its file, line and id.

use std::path::PathBuf;

use crate::diag::Sink;
use crate::read::{array_items, Obj};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waf {
    /// Rule files and `*` patterns, in order (relative to the config
    /// file's directory).
    pub rules: Vec<PathBuf>,
    pub mode: WafMode,
    /// `tx.blocking_paranoia_level` and `tx.detection_paranoia_level`.
    pub paranoia: u8,
    /// `tx.inbound_anomaly_score_threshold`.
    pub anomaly_threshold: u32,
    /// Bodies are inspected up to this many bytes.
    pub inspect_body: u64,
    /// Responses go through the rules' phases 3 and 4 (CRS's data-leak
    /// rules): text bodies are held, up to `inspect_body`, until they are.
    pub inspect_response: bool,
    pub exclusions: Vec<Exclusion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WafMode {
    Block,
    /// Log and count only.
    Detect,
}

/// `[[waf.exclusion]]`: a rule (or one of its targets) off for a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclusion {
    pub rule: u32,
    pub path_prefix: Option<String>,
    /// `ARGS:q`, `REQUEST_COOKIES:/^session/`…; none: the whole rule.
    pub target: Option<String>,
}

pub(crate) fn waf(
    sink: &mut Sink<'_>,
    top: &mut Obj<'_, '_>,
    base_dir: &std::path::Path,
) -> Option<Waf> {
    let mut o = top.sub(sink, "waf")?;
    let (rules, spans) = o.str_list(sink, "rules");
    let rules_span = o.peek("rules").map(|v| v.span());
    let rules: Vec<PathBuf> = rules.iter().map(|r| base_dir.join(r)).collect();
    let mode = match o.str(sink, "mode") {
        None => WafMode::Block,
        Some((m, span)) => match m.as_str() {
            "block" => WafMode::Block,
            "detect" => WafMode::Detect,
            other => {
                sink.error(
                    &span,
                    &o.child_path("mode"),
                    format!("unknown mode {other:?}; expected \"block\" or \"detect\""),
                );
                WafMode::Block
            }
        },
    };
    let paranoia = o.int(sink, "paranoia", 1, 1, 4) as u8;
    let anomaly_threshold = o.int(sink, "anomaly_threshold", 5, 1, 10_000) as u32;
    let inspect_body = o.size(sink, "inspect_body", 128 * 1024);
    let inspect_response = o.bool(sink, "inspect_response", false);
    let mut exclusions = Vec::new();
    if let Some(v) = o.get("exclusion") {
        for (i, item) in array_items(sink, v, "waf.exclusion") {
            let path = format!("waf.exclusion[{i}]");
            let Some(mut e) = Obj::new(sink, item, &path) else {
                continue;
            };
            if e.peek("rule").is_none() {
                crate::read::missing(sink, &item.span(), &path, "rule");
            }
            let rule = e.int(sink, "rule", 0, 1, u64::from(u32::MAX)) as u32;
            let path_prefix = e.str(sink, "path_prefix").map(|p| p.0);
            let target = match e.str(sink, "target") {
                Some((t, span)) => match centinela_waf::rule::parse_targets(&t) {
                    Ok(_) => Some(t),
                    Err(m) => {
                        sink.error(&span, &e.child_path("target"), m);
                        None
                    }
                },
                None => None,
            };
            e.finish(sink);
            exclusions.push(Exclusion {
                rule,
                path_prefix,
                target,
            });
        }
    }
    o.finish(sink);
    let span = rules_span.unwrap_or(0..0);
    if rules.is_empty() {
        sink.error(&span, "waf.rules", "at least one rule file is needed");
        return None;
    }
    let _ = spans;
    // Loaded to be checked: the engine loads them again when it starts.
    match centinela_waf::files(&rules).and_then(|f| centinela_waf::load(&f)) {
        Ok(set) => {
            for x in &exclusions {
                if !set.rules().any(|r| r.id == x.rule) {
                    sink.warn(
                        &span,
                        "waf.exclusion",
                        format!("rule {} is not in the loaded rules", x.rule),
                    );
                }
            }
        }
        Err(e) => sink.error(&span, "waf.rules", e.to_string()),
    }
    Some(Waf {
        rules,
        mode,
        paranoia,
        anomaly_threshold,
        inspect_body,
        inspect_response,
        exclusions,
    })
}
