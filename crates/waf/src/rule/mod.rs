//! Directives into compiled rules. Everything is checked here, once, at
//! load: an unknown directive, variable, operator, transformation or
//! action is an error naming its file, line and rule id, unless it is one
//! of the documented no-ops ([`NO_OP_DIRECTIVES`], [`NO_OP_ACTIONS`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::bytes::Regex;

use crate::parse::{self, Directive};
use crate::transform::Transform;
use crate::LoadError;

mod action;
mod operator;
mod target;

pub use action::*;
pub use operator::*;
pub use target::*;

/// Directives read and ignored: audit logging, debug logging, response
/// bodies, storage and limits this engine sets elsewhere (`[waf]`).
pub const NO_OP_DIRECTIVES: &[&str] = &[
    "SecAuditEngine",
    "SecAuditLog",
    "SecAuditLog2",
    "SecAuditLogDirMode",
    "SecAuditLogFileMode",
    "SecAuditLogFormat",
    "SecAuditLogParts",
    "SecAuditLogRelevantStatus",
    "SecAuditLogStorageDir",
    "SecAuditLogType",
    "SecCollectionTimeout",
    "SecDataDir",
    "SecDebugLog",
    "SecDebugLogLevel",
    "SecPcreMatchLimit",
    "SecPcreMatchLimitRecursion",
    "SecRequestBodyInMemoryLimit",
    "SecRequestBodyLimit",
    "SecRequestBodyLimitAction",
    "SecRequestBodyNoFilesLimit",
    "SecRequestBodyJsonDepthLimit",
    "SecArgumentsLimit",
    "SecResponseBodyAccess",
    "SecResponseBodyLimit",
    "SecResponseBodyLimitAction",
    "SecResponseBodyMimeType",
    "SecResponseBodyMimeTypesClear",
    "SecStatusEngine",
    "SecTmpDir",
    "SecTmpSaveUploadedFiles",
    "SecUnicodeMapFile",
    "SecUploadDir",
    "SecUploadFileLimit",
    "SecUploadFileMode",
    "SecUploadKeepFiles",
];

/// One compiled rule (or a link of a chain).
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: u32,
    pub phase: u8,
    pub file: Arc<str>,
    pub line: usize,
    pub targets: Vec<Target>,
    pub operator: Operator,
    pub transforms: Vec<Transform>,
    /// The same for every rule with the same `transforms` (set by the
    /// engine, for its cache of transformed values).
    pub transform_id: u32,
    /// This link's bit in the engine's prefilter, when its operator has
    /// literals to scan for (set by the engine).
    pub prefilter_id: Option<u32>,
    /// The same for every link that reads the same targets through the
    /// same transformations, when the prefilter can pass over them whole
    /// (set by the engine, for its per-request summaries of them).
    pub group_id: Option<u32>,
    pub disruptive: Disruptive,
    pub status: Option<u16>,
    pub capture: bool,
    pub multi_match: bool,
    pub log: bool,
    pub msg: Option<Expand>,
    pub logdata: Option<Expand>,
    pub tags: Vec<String>,
    pub severity: Option<u8>,
    pub setvars: Vec<SetVar>,
    pub ctls: Vec<Ctl>,
    pub skip: u32,
    pub skip_after: Option<String>,
    pub chain: Option<Box<Rule>>,
}

/// A rule list entry, in load order.
#[derive(Debug, Clone)]
pub enum Entry {
    Rule(Box<Rule>),
    Marker(String),
}

/// Every rule of the loaded files, in order, with the engine's settings.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub entries: Vec<Entry>,
    pub engine: Engine,
    pub request_body_access: bool,
    pub component_signatures: Vec<String>,
}

impl RuleSet {
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Rule(r) => Some(&**r),
            Entry::Marker(_) => None,
        })
    }
}

/// The defaults `SecDefaultAction` gives a phase's rules.
#[derive(Debug, Clone)]
struct Defaults {
    disruptive: Disruptive,
    status: Option<u16>,
    log: bool,
    transforms: Vec<Transform>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            disruptive: Disruptive::Pass,
            status: None,
            log: true,
            transforms: Vec::new(),
        }
    }
}

/// Loads rule files in order (each already expanded from globs by the
/// caller).
pub fn load(files: &[PathBuf]) -> Result<RuleSet, LoadError> {
    let mut loader = Loader {
        set: RuleSet {
            entries: Vec::new(),
            engine: Engine::On,
            request_body_access: true,
            component_signatures: Vec::new(),
        },
        defaults: HashMap::new(),
        pending_chain: None,
        ids: HashMap::new(),
        data: HashMap::new(),
    };
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| LoadError {
            file: f.display().to_string(),
            line: 0,
            rule: None,
            message: format!("cannot read: {e}"),
        })?;
        let name: Arc<str> = Arc::from(f.display().to_string());
        let dir = f.parent().unwrap_or(Path::new(".")).to_path_buf();
        for d in parse::directives(&text, &name)? {
            loader.directive(&d, &dir)?;
        }
    }
    if let Some((rule, _)) = loader.pending_chain {
        return Err(LoadError {
            file: rule.file.to_string(),
            line: rule.line,
            rule: Some(rule.id),
            message: "the rule says `chain` but no rule follows it".into(),
        });
    }
    Ok(loader.set)
}

struct Loader {
    set: RuleSet,
    defaults: HashMap<u8, Defaults>,
    /// A chain being built: its head, and the path to its last link.
    pending_chain: Option<(Rule, usize)>,
    ids: HashMap<u32, (Arc<str>, usize)>,
    /// `@pmFromFile` files read so far, by path.
    data: HashMap<PathBuf, operator::Phrases>,
}

fn err(d: &Directive, id: Option<u32>, message: impl Into<String>) -> LoadError {
    LoadError {
        file: d.file.to_string(),
        line: d.line,
        rule: id,
        message: message.into(),
    }
}

impl Loader {
    fn directive(&mut self, d: &Directive, dir: &Path) -> Result<(), LoadError> {
        let name = d.name.as_str();
        if self.pending_chain.is_some() && name != "SecRule" {
            let id = self.pending_chain.as_ref().map(|(r, _)| r.id);
            return Err(err(
                d,
                id,
                format!("{name} follows a rule that says `chain`: a SecRule must"),
            ));
        }
        match name {
            "SecRule" => {
                let [vars, op, rest @ ..] = d.args.as_slice() else {
                    return Err(err(
                        d,
                        None,
                        "SecRule takes VARIABLES \"OPERATOR\" [\"ACTIONS\"]",
                    ));
                };
                if rest.len() > 1 {
                    return Err(err(d, None, "SecRule has more than three arguments"));
                }
                let actions = rest.first().map(String::as_str).unwrap_or("");
                self.rule(d, dir, Some((vars, op)), actions)
            }
            "SecAction" => {
                let [actions] = d.args.as_slice() else {
                    return Err(err(d, None, "SecAction takes one argument, its actions"));
                };
                self.rule(d, dir, None, actions)
            }
            "SecMarker" => {
                let [m] = d.args.as_slice() else {
                    return Err(err(d, None, "SecMarker takes one argument"));
                };
                self.set.entries.push(Entry::Marker(m.clone()));
                Ok(())
            }
            "SecDefaultAction" => {
                let [a] = d.args.as_slice() else {
                    return Err(err(d, None, "SecDefaultAction takes one argument"));
                };
                let acts = parse::actions(a).map_err(|m| err(d, None, m))?;
                let mut phase = None;
                let mut def = Defaults::default();
                for (name, value) in &acts {
                    match name.as_str() {
                        "phase" => {
                            phase =
                                Some(parse_phase(value.as_deref()).map_err(|m| err(d, None, m))?)
                        }
                        "t" => push_transform(&mut def.transforms, value.as_deref())
                            .map_err(|m| err(d, None, m))?,
                        "log" => def.log = true,
                        "nolog" => def.log = false,
                        "status" => {
                            def.status =
                                Some(parse_status(value.as_deref()).map_err(|m| err(d, None, m))?)
                        }
                        "pass" => def.disruptive = Disruptive::Pass,
                        "deny" => def.disruptive = Disruptive::Deny,
                        "drop" => def.disruptive = Disruptive::Drop,
                        "block" => return Err(err(d, None, "SecDefaultAction cannot say `block`")),
                        n if NO_OP_ACTIONS.contains(&n) || matches!(n, "tag" | "ver" | "msg") => {}
                        n => {
                            return Err(err(
                                d,
                                None,
                                format!("action {n:?} is not supported in SecDefaultAction"),
                            ))
                        }
                    }
                }
                let phase =
                    phase.ok_or_else(|| err(d, None, "SecDefaultAction must name a phase"))?;
                self.defaults.insert(phase, def);
                Ok(())
            }
            "SecRuleEngine" => {
                self.set.engine = parse_engine(d.args.first().map(String::as_str))
                    .map_err(|m| err(d, None, m))?;
                Ok(())
            }
            "SecRequestBodyAccess" => {
                self.set.request_body_access =
                    on_off(d.args.first().map(String::as_str)).map_err(|m| err(d, None, m))?;
                Ok(())
            }
            "SecComponentSignature" => {
                self.set.component_signatures.extend(d.args.iter().cloned());
                Ok(())
            }
            "SecArgumentSeparator" => match d.args.as_slice() {
                [s] if s == "&" => Ok(()),
                _ => Err(err(d, None, "only SecArgumentSeparator & is supported")),
            },
            "SecRuleRemoveById" => {
                let ranges = d
                    .args
                    .iter()
                    .map(|a| parse_id_ranges(a))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| err(d, None, m))?
                    .concat();
                self.remove(|r| ranges.iter().any(|x| x.contains(r.id)));
                Ok(())
            }
            "SecRuleRemoveByTag" => {
                let [tag] = d.args.as_slice() else {
                    return Err(err(d, None, "SecRuleRemoveByTag takes one argument"));
                };
                let re = Regex::new(tag)
                    .map_err(|e| err(d, None, format!("invalid tag pattern: {e}")))?;
                self.remove(|r| r.tags.iter().any(|t| re.is_match(t.as_bytes())));
                Ok(())
            }
            "SecRuleRemoveByMsg" => {
                let [msg] = d.args.as_slice() else {
                    return Err(err(d, None, "SecRuleRemoveByMsg takes one argument"));
                };
                let re =
                    Regex::new(msg).map_err(|e| err(d, None, format!("invalid pattern: {e}")))?;
                self.remove(|r| {
                    r.msg
                        .as_ref()
                        .and_then(Expand::literal)
                        .is_some_and(|m| re.is_match(m.as_bytes()))
                });
                Ok(())
            }
            "SecRuleUpdateTargetById" | "SecRuleUpdateTargetByTag" => {
                let [which, vars, rest @ ..] = d.args.as_slice() else {
                    return Err(err(d, None, format!("{name} takes ID|TAG VARIABLES")));
                };
                if !rest.is_empty() {
                    return Err(err(
                        d,
                        None,
                        format!("{name} with a replacement is not supported"),
                    ));
                }
                let targets = parse_targets(vars).map_err(|m| err(d, None, m))?;
                let matches: Box<dyn Fn(&Rule) -> bool> = if name == "SecRuleUpdateTargetById" {
                    let ranges = parse_id_ranges(which).map_err(|m| err(d, None, m))?;
                    Box::new(move |r: &Rule| ranges.iter().any(|x| x.contains(r.id)))
                } else {
                    let re = Regex::new(which)
                        .map_err(|e| err(d, None, format!("invalid tag pattern: {e}")))?;
                    Box::new(move |r: &Rule| r.tags.iter().any(|t| re.is_match(t.as_bytes())))
                };
                for e in &mut self.set.entries {
                    if let Entry::Rule(r) = e {
                        if matches(r) {
                            r.targets.extend(targets.iter().cloned());
                        }
                    }
                }
                Ok(())
            }
            n if NO_OP_DIRECTIVES.contains(&n) => Ok(()),
            n => Err(err(d, None, format!("directive {n:?} is not supported"))),
        }
    }

    fn remove(&mut self, f: impl Fn(&Rule) -> bool) {
        self.set.entries.retain(|e| match e {
            Entry::Rule(r) => !f(r),
            Entry::Marker(_) => true,
        });
    }

    fn rule(
        &mut self,
        d: &Directive,
        dir: &Path,
        rule: Option<(&String, &String)>,
        actions: &str,
    ) -> Result<(), LoadError> {
        let acts = parse::actions(actions).map_err(|m| err(d, None, m))?;
        let id = acts
            .iter()
            .find(|(n, _)| n == "id")
            .map(|(_, v)| {
                v.as_deref()
                    .unwrap_or("")
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| {
                        err(
                            d,
                            None,
                            format!("invalid id {:?}", v.as_deref().unwrap_or("")),
                        )
                    })
            })
            .transpose()?;
        let in_chain = self.pending_chain.is_some();
        let head_id = self.pending_chain.as_ref().map(|(r, _)| r.id);
        let rid = id.or(head_id);
        let e = |m: String| err(d, rid, m);
        if in_chain && id.is_some() {
            return Err(e("a chained rule cannot have an id".into()));
        }
        if !in_chain && id.is_none() {
            return Err(e("the rule has no id".into()));
        }
        let (targets, operator) = match rule {
            Some((vars, op)) => (
                parse_targets(vars).map_err(&e)?,
                operator::operator(op, dir, &mut self.data).map_err(&e)?,
            ),
            None => (
                Vec::new(),
                Operator {
                    negated: false,
                    kind: OpKind::UnconditionalMatch,
                    text: "@unconditionalMatch".into(),
                    literals: None,
                    bytes: None,
                },
            ),
        };
        let phase_given = acts
            .iter()
            .find(|(n, _)| n == "phase")
            .map(|(_, v)| parse_phase(v.as_deref()))
            .transpose()
            .map_err(&e)?;
        let phase = match (&self.pending_chain, phase_given) {
            (Some((head, _)), _) => head.phase,
            (None, p) => p.unwrap_or(2),
        };
        let def = self.defaults.get(&phase).cloned().unwrap_or_default();
        let mut r = Rule {
            id: rid.unwrap_or(0),
            phase,
            file: d.file.clone(),
            line: d.line,
            targets,
            operator,
            transforms: def.transforms.clone(),
            transform_id: 0,
            prefilter_id: None,
            group_id: None,
            disruptive: def.disruptive,
            status: def.status,
            capture: false,
            multi_match: false,
            log: def.log,
            msg: None,
            logdata: None,
            tags: Vec::new(),
            severity: None,
            setvars: Vec::new(),
            ctls: Vec::new(),
            skip: 0,
            skip_after: None,
            chain: None,
        };
        let mut chained = false;
        let mut disruptive_given = false;
        for (name, value) in &acts {
            let v = value.as_deref();
            match name.as_str() {
                "id" | "phase" => {}
                "t" => push_transform(&mut r.transforms, v).map_err(&e)?,
                "pass" | "block" | "deny" | "drop" | "redirect" | "allow" => {
                    if in_chain {
                        return Err(e(format!(
                            "a chained rule cannot say `{name}`: the chain's first rule decides"
                        )));
                    }
                    disruptive_given = true;
                    r.disruptive = match (name.as_str(), v) {
                        ("pass", _) => Disruptive::Pass,
                        ("block", _) => Disruptive::Block,
                        ("deny", _) => Disruptive::Deny,
                        ("drop", _) => Disruptive::Drop,
                        ("redirect", _) => Disruptive::Redirect,
                        ("allow", None) => Disruptive::Allow,
                        ("allow", Some("phase")) => Disruptive::AllowPhase,
                        ("allow", Some("request")) => Disruptive::AllowRequest,
                        (_, v) => {
                            return Err(e(format!(
                                "allow:{} is not allow, allow:phase or allow:request",
                                v.unwrap_or("")
                            )))
                        }
                    };
                }
                "status" => r.status = Some(parse_status(v).map_err(&e)?),
                "capture" => r.capture = true,
                "multiMatch" => r.multi_match = true,
                "log" => r.log = true,
                "nolog" => r.log = false,
                "msg" => r.msg = Some(Expand::parse(v.unwrap_or("")).map_err(&e)?),
                "logdata" => r.logdata = Some(Expand::parse(v.unwrap_or("")).map_err(&e)?),
                "tag" => r.tags.push(v.unwrap_or("").to_string()),
                "ver" => {}
                "severity" => r.severity = Some(parse_severity(v).map_err(&e)?),
                "setvar" => r.setvars.push(parse_setvar(v.unwrap_or("")).map_err(&e)?),
                "ctl" => r.ctls.push(parse_ctl(v.unwrap_or("")).map_err(&e)?),
                "chain" => chained = true,
                "skip" => {
                    r.skip = v
                        .unwrap_or("")
                        .parse()
                        .map_err(|_| e(format!("skip:{} is not a count", v.unwrap_or(""))))?
                }
                "skipAfter" => r.skip_after = Some(v.unwrap_or("").to_string()),
                "initcol" => {
                    // CRS's optional persistent collections (IP, GLOBAL):
                    // there are none here; a rule reading them sees them
                    // empty.
                }
                n if NO_OP_ACTIONS.contains(&n) => {}
                n => return Err(e(format!("action {n:?} is not supported"))),
            }
        }
        let _ = disruptive_given;
        if let Some(id) = id {
            if let Some((file, line)) = self.ids.insert(id, (d.file.clone(), d.line)) {
                return Err(e(format!("the id {id} is already used at {file}:{line}")));
            }
        }
        match self.pending_chain.take() {
            None if chained => self.pending_chain = Some((r, 0)),
            None => self.set.entries.push(Entry::Rule(Box::new(r))),
            Some((mut head, depth)) => {
                let mut last = &mut head;
                for _ in 0..depth {
                    last = last.chain.as_mut().expect("chain depth follows its links");
                }
                last.chain = Some(Box::new(r));
                if chained {
                    self.pending_chain = Some((head, depth + 1));
                } else {
                    self.set.entries.push(Entry::Rule(Box::new(head)));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn targets() {
        let t = parse_targets(
            "REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|&ARGS|ARGS:foo|XML:/*|TX:/^a|b$/",
        )
        .unwrap();
        assert_eq!(t.len(), 6);
        assert!(t[1].exclude);
        assert!(matches!(&t[1].selector, Selector::Regex(r) if r.is_match(b"x__UTMy")));
        assert!(t[2].count);
        assert!(matches!(&t[3].selector, Selector::Key(k) if k == "foo"));
        assert!(matches!(&t[4].selector, Selector::XPath(x) if x == "/*"));
        // A `|` inside a regular expression does not split the list.
        assert!(matches!(&t[5].selector, Selector::Regex(r) if r.is_match(b"b")));
        assert!(parse_targets("ARGS|NOPE").unwrap_err().contains("NOPE"));
    }

    #[test]
    fn macros() {
        let e = Expand::parse("score %{tx.critical_anomaly_score} at %{MATCHED_VAR_NAME}").unwrap();
        assert_eq!(
            e.parts,
            [
                Part::Text("score ".into()),
                Part::Var(Collection::Tx, Some("critical_anomaly_score".into())),
                Part::Text(" at ".into()),
                Part::Var(Collection::MatchedVarName, None),
            ]
        );
        assert!(Expand::parse("%{NOPE.x}").is_err());
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_rule() {
        let dir = centinela_testkit::TempDir::new("waf-errors");
        let d = dir.0.as_path();
        let f = write(
            d,
            "own.conf",
            "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass\"\n\n# ok so far\nSecRule ARGS \\\n  \"@frobnicate x\" \"id:2,phase:2,pass\"\n",
        );
        let e = load(&[f]).unwrap_err();
        assert_eq!((e.line, e.rule), (4, Some(2)));
        assert!(
            e.to_string()
                .contains("own.conf:4: rule 2: operator @frobnicate is not supported"),
            "{e}"
        );
        let f = write(d, "t.conf", "SecRule ARGS \"@rx a\" \"id:3,t:rot13\"\n");
        assert!(load(&[f]).unwrap_err().message.contains("t:rot13"));
        let f = write(d, "a.conf", "SecRule ARGS \"@rx a\" \"id:3,frob\"\n");
        assert!(load(&[f]).unwrap_err().message.contains("\"frob\""));
        let f = write(d, "d.conf", "SecFrobnicate On\n");
        assert!(load(&[f]).unwrap_err().message.contains("SecFrobnicate"));
        let f = write(d, "x.conf", "SecRule ARGS \"@rx (\" \"id:4\"\n");
        assert_eq!(load(&[f]).unwrap_err().rule, Some(4));
        let f = write(d, "c.conf", "SecRule ARGS \"@rx a\" \"id:5,chain\"\n");
        assert!(load(&[f]).unwrap_err().message.contains("chain"));
        let f = write(d, "dup.conf", "SecAction \"id:6\"\nSecAction \"id:6\"\n");
        assert!(load(&[f]).unwrap_err().message.contains("already used"));
        // No-ops are read and ignored.
        let f = write(
            d,
            "n.conf",
            "SecAuditEngine RelevantOnly\nSecResponseBodyAccess On\n",
        );
        assert!(load(&[f]).unwrap().entries.is_empty());
    }

    #[test]
    fn chains_defaults_and_updates() {
        let dir = centinela_testkit::TempDir::new("waf-chains");
        let d = dir.0.as_path();
        let f = write(
            d,
            "r.conf",
            r#"SecDefaultAction "phase:2,log,auditlog,pass,t:lowercase"
SecRule ARGS "@rx a" "id:10,phase:2,block,t:urlDecodeUni,chain"
    SecRule MATCHED_VAR "@pm x y" "t:none,setvar:tx.a=+1,chain"
        SecRule TX:a "@eq 1" "setvar:'tx.b=%{tx.a}'"
SecRule REQUEST_URI "!@beginsWith /x" "id:11,phase:2,pass,nolog,ctl:ruleRemoveTargetById=10;ARGS:q"
SecMarker "END"
SecRuleUpdateTargetById 10 "!ARGS:z"
"#,
        );
        let set = load(&[f]).unwrap();
        let rules: Vec<&Rule> = set.rules().collect();
        assert_eq!(rules.len(), 2);
        let r = rules[0];
        assert_eq!((r.id, r.phase, r.disruptive), (10, 2, Disruptive::Block));
        assert_eq!(
            r.transforms,
            [Transform::Lowercase, Transform::UrlDecodeUni]
        );
        assert_eq!(r.targets.len(), 2, "the update added !ARGS:z");
        let c = r.chain.as_ref().unwrap();
        assert!(c.transforms.is_empty(), "t:none cleared the defaults");
        assert_eq!(c.chain.as_ref().unwrap().setvars.len(), 1);
        assert!(rules[1].operator.negated);
        assert!(!rules[1].log);
        assert!(matches!(set.entries[2], Entry::Marker(ref m) if m == "END"));
    }
}
