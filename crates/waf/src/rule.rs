//! Directives into compiled rules. Everything is checked here, once, at
//! load: an unknown directive, variable, operator, transformation or
//! action is an error naming its file, line and rule id, unless it is one
//! of the documented no-ops ([`NO_OP_DIRECTIVES`], [`NO_OP_ACTIONS`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex::bytes::{Regex, RegexBuilder};

use crate::parse::{self, Directive};
use crate::transform::{Named, Transform};
use crate::LoadError;

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

/// Actions read and ignored: metadata this engine does not use, audit log
/// controls, and `expirevar` (there are no persistent collections: `TX`
/// lives for one request).
pub const NO_OP_ACTIONS: &[&str] = &[
    "accuracy",
    "auditlog",
    "expirevar",
    "maturity",
    "noauditlog",
    "rev",
    "sanitiseArg",
    "sanitiseMatched",
    "sanitiseMatchedBytes",
    "sanitiseRequestHeader",
    "sanitiseResponseHeader",
    "setenv",
];

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

    /// The text, when it has no macros.
    pub fn literal(&self) -> Option<String> {
        match self.parts.as_slice() {
            [] => Some(String::new()),
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }
}

/// An operator's kind, compiled.
#[derive(Debug, Clone)]
pub enum OpKind {
    Rx(Regex),
    /// `@pm` and `@pmFromFile`: phrases, matched without regard to case.
    Pm(Arc<AhoCorasick>),
    StrEq(Expand),
    BeginsWith(Expand),
    EndsWith(Expand),
    Contains(Expand),
    ContainsWord(Expand),
    Within(Expand),
    Eq(Expand),
    Ge(Expand),
    Gt(Expand),
    Le(Expand),
    Lt(Expand),
    IpMatch(Vec<(IpAddr, u8)>),
    ValidateByteRange(Box<[bool; 256]>),
    ValidateUrlEncoding,
    ValidateUtf8Encoding,
    UnconditionalMatch,
    NoMatch,
    DetectSqli,
    DetectXss,
}

#[derive(Debug, Clone)]
pub struct Operator {
    pub negated: bool,
    pub kind: OpKind,
    /// As written, for logs.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruptive {
    Pass,
    /// What `SecDefaultAction` says; in CRS, the anomaly score decides.
    Block,
    Deny,
    Drop,
    Redirect,
    /// `allow`: the rest of the request's rules are skipped.
    Allow,
    /// `allow:phase`: the rest of this phase's rules are skipped.
    AllowPhase,
    /// `allow:request`: the rest of the request phases' rules are skipped.
    AllowRequest,
}

/// `setvar`: on `tx`, a name (which may hold macros) and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SetVar {
    pub name: Expand,
    pub op: SetOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SetOp {
    Set(Expand),
    Add(Expand),
    Sub(Expand),
    Unset,
}

/// A range of rule ids, as `ctl:ruleRemoveById` and friends take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange(pub u32, pub u32);

impl IdRange {
    pub fn contains(self, id: u32) -> bool {
        self.0 <= id && id <= self.1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    On,
    Off,
    DetectionOnly,
}

#[derive(Debug, Clone)]
pub enum Ctl {
    RuleRemoveById(Vec<IdRange>),
    RuleRemoveByTag(String),
    RuleRemoveTargetById(Vec<IdRange>, Vec<Target>),
    RuleRemoveTargetByTag(String, Vec<Target>),
    RuleEngine(Engine),
    RequestBodyProcessor(String),
    RequestBodyAccess(bool),
    ForceRequestBodyVariable(bool),
    /// `ctl:auditEngine`, `ctl:auditLogParts`: no audit log here.
    NoOp,
}

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
    data: HashMap<PathBuf, Arc<AhoCorasick>>,
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
                self.operator(op, dir).map_err(&e)?,
            ),
            None => (
                Vec::new(),
                Operator {
                    negated: false,
                    kind: OpKind::UnconditionalMatch,
                    text: "@unconditionalMatch".into(),
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

    fn operator(&mut self, text: &str, dir: &Path) -> Result<Operator, String> {
        let (negated, rest) = match text.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (name, arg) = match rest.strip_prefix('@') {
            Some(r) => match r.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((n, a)) => (n, a),
                None => (r, ""),
            },
            // No operator named: a regular expression.
            None => ("rx", rest),
        };
        let expand = |a: &str| Expand::parse(a);
        let kind = match name {
            "rx" => OpKind::Rx(compile_rx(arg)?),
            "pm" => {
                let words: Vec<&str> = arg.split_ascii_whitespace().collect();
                if words.is_empty() {
                    return Err("@pm needs at least one phrase".into());
                }
                OpKind::Pm(Arc::new(phrases(&words)?))
            }
            "pmFromFile" | "pmf" => {
                let mut all = Vec::new();
                for f in arg.split_ascii_whitespace() {
                    let path = dir.join(f);
                    if let Some(ac) = self.data.get(&path) {
                        if arg.split_ascii_whitespace().count() == 1 {
                            return Ok(Operator {
                                negated,
                                kind: OpKind::Pm(ac.clone()),
                                text: text.to_string(),
                            });
                        }
                    }
                    let body = std::fs::read_to_string(&path)
                        .map_err(|e| format!("@pmFromFile: cannot read {}: {e}", path.display()))?;
                    let words: Vec<String> = body
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    if arg.split_ascii_whitespace().count() == 1 {
                        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
                        let ac = Arc::new(phrases(&refs)?);
                        self.data.insert(path, ac.clone());
                        return Ok(Operator {
                            negated,
                            kind: OpKind::Pm(ac),
                            text: text.to_string(),
                        });
                    }
                    all.extend(words);
                }
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                OpKind::Pm(Arc::new(phrases(&refs)?))
            }
            "streq" => OpKind::StrEq(expand(arg)?),
            "beginsWith" => OpKind::BeginsWith(expand(arg)?),
            "endsWith" => OpKind::EndsWith(expand(arg)?),
            "contains" => OpKind::Contains(expand(arg)?),
            "containsWord" => OpKind::ContainsWord(expand(arg)?),
            "within" => OpKind::Within(expand(arg)?),
            "eq" => OpKind::Eq(expand(arg)?),
            "ge" => OpKind::Ge(expand(arg)?),
            "gt" => OpKind::Gt(expand(arg)?),
            "le" => OpKind::Le(expand(arg)?),
            "lt" => OpKind::Lt(expand(arg)?),
            "ipMatch" => OpKind::IpMatch(parse_networks(arg)?),
            "validateByteRange" => OpKind::ValidateByteRange(parse_byte_ranges(arg)?),
            "validateUrlEncoding" => OpKind::ValidateUrlEncoding,
            "validateUtf8Encoding" => OpKind::ValidateUtf8Encoding,
            "unconditionalMatch" => OpKind::UnconditionalMatch,
            "noMatch" => OpKind::NoMatch,
            "detectSQLi" => OpKind::DetectSqli,
            "detectXSS" => OpKind::DetectXss,
            n => return Err(format!("operator @{n} is not supported")),
        };
        Ok(Operator {
            negated,
            kind,
            text: text.to_string(),
        })
    }
}

/// A regular expression with PCRE's byte semantics where it can (`.`
/// and classes over bytes, `(?i)` over ASCII), else with Unicode's (a
/// pattern that names code points above U+00FF).
pub fn compile_rx(pattern: &str) -> Result<Regex, String> {
    let build = |unicode: bool| {
        RegexBuilder::new(pattern)
            .unicode(unicode)
            .size_limit(256 << 20)
            .dfa_size_limit(64 << 20)
            .build()
    };
    build(false)
        .or_else(|_| build(true))
        .map_err(|e| format!("@rx: {e}"))
}

fn phrases(words: &[&str]) -> Result<AhoCorasick, String> {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(words)
        .map_err(|e| format!("phrase list: {e}"))
}

fn push_transform(list: &mut Vec<Transform>, name: Option<&str>) -> Result<(), String> {
    let name = name.unwrap_or("");
    match Transform::named(name) {
        Some(Named::None) => list.clear(),
        Some(Named::Transform(t)) => list.push(t),
        None => return Err(format!("transformation t:{name} is not supported")),
    }
    Ok(())
}

fn parse_phase(v: Option<&str>) -> Result<u8, String> {
    match v.unwrap_or("").trim() {
        "1" => Ok(1),
        "2" | "request" => Ok(2),
        "3" => Ok(3),
        "4" | "response" => Ok(4),
        "5" | "logging" => Ok(5),
        p => Err(format!("phase:{p} is not 1 to 5")),
    }
}

fn parse_status(v: Option<&str>) -> Result<u16, String> {
    let v = v.unwrap_or("");
    v.trim()
        .parse::<u16>()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("status:{v} is not an HTTP status"))
}

fn parse_severity(v: Option<&str>) -> Result<u8, String> {
    let v = v.unwrap_or("").trim();
    Ok(match v.to_ascii_uppercase().as_str() {
        "EMERGENCY" | "0" => 0,
        "ALERT" | "1" => 1,
        "CRITICAL" | "2" => 2,
        "ERROR" | "3" => 3,
        "WARNING" | "4" => 4,
        "NOTICE" | "5" => 5,
        "INFO" | "6" => 6,
        "DEBUG" | "7" => 7,
        _ => return Err(format!("severity:{v} is not a severity")),
    })
}

fn parse_engine(v: Option<&str>) -> Result<Engine, String> {
    match v.unwrap_or("") {
        "On" | "on" => Ok(Engine::On),
        "Off" | "off" => Ok(Engine::Off),
        "DetectionOnly" => Ok(Engine::DetectionOnly),
        o => Err(format!("{o:?} is not On, Off or DetectionOnly")),
    }
}

fn on_off(v: Option<&str>) -> Result<bool, String> {
    match v.unwrap_or("") {
        "On" | "on" => Ok(true),
        "Off" | "off" => Ok(false),
        o => Err(format!("{o:?} is not On or Off")),
    }
}

fn parse_setvar(v: &str) -> Result<SetVar, String> {
    let v = v.trim();
    if let Some(name) = v.strip_prefix('!') {
        return Ok(SetVar {
            name: tx_name(name)?,
            op: SetOp::Unset,
        });
    }
    let (name, value) = v.split_once('=').unwrap_or((v, ""));
    let name = tx_name(name)?;
    let op = if let Some(x) = value.strip_prefix('+') {
        SetOp::Add(Expand::parse(x)?)
    } else if let Some(x) = value.strip_prefix('-') {
        SetOp::Sub(Expand::parse(x)?)
    } else {
        SetOp::Set(Expand::parse(value)?)
    };
    Ok(SetVar { name, op })
}

/// `tx.NAME` (the only collection rules write here; `ip.` and `global.`
/// have no store, see `docs/waf.md`); the name may hold macros, and is
/// lowercased when expanded, as ModSecurity keys it.
fn tx_name(n: &str) -> Result<Expand, String> {
    let (col, key) = n
        .split_once('.')
        .ok_or_else(|| format!("setvar:{n} names no collection"))?;
    match col.to_ascii_lowercase().as_str() {
        "tx" => Expand::parse(key),
        c => Err(format!(
            "setvar on collection {c:?} is not supported (only tx)"
        )),
    }
}

fn parse_id_ranges(v: &str) -> Result<Vec<IdRange>, String> {
    v.split([' ', ','])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let num = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{p:?} is not a rule id or id range"))
            };
            match p.split_once('-') {
                Some((a, b)) => Ok(IdRange(num(a)?, num(b)?)),
                None => {
                    let n = num(p)?;
                    Ok(IdRange(n, n))
                }
            }
        })
        .collect()
}

fn parse_ctl(v: &str) -> Result<Ctl, String> {
    let (name, value) = v
        .split_once('=')
        .ok_or_else(|| format!("ctl:{v} has no value"))?;
    Ok(match name {
        "ruleRemoveById" => Ctl::RuleRemoveById(parse_id_ranges(value)?),
        "ruleRemoveByTag" => Ctl::RuleRemoveByTag(value.to_string()),
        "ruleRemoveTargetById" => {
            let (ids, targets) = value
                .split_once(';')
                .ok_or_else(|| format!("ctl:{v}: ID;TARGET expected"))?;
            Ctl::RuleRemoveTargetById(parse_id_ranges(ids)?, parse_targets(targets)?)
        }
        "ruleRemoveTargetByTag" => {
            let (tag, targets) = value
                .split_once(';')
                .ok_or_else(|| format!("ctl:{v}: TAG;TARGET expected"))?;
            Ctl::RuleRemoveTargetByTag(tag.to_string(), parse_targets(targets)?)
        }
        "ruleEngine" => Ctl::RuleEngine(parse_engine(Some(value))?),
        "requestBodyProcessor" => match value.to_ascii_uppercase().as_str() {
            p @ ("URLENCODED" | "MULTIPART" | "JSON" | "XML") => {
                Ctl::RequestBodyProcessor(p.to_string())
            }
            _ => {
                return Err(format!(
                    "ctl:requestBodyProcessor={value} is not URLENCODED, MULTIPART, JSON or XML"
                ))
            }
        },
        "requestBodyAccess" => Ctl::RequestBodyAccess(on_off(Some(value))?),
        "forceRequestBodyVariable" => Ctl::ForceRequestBodyVariable(on_off(Some(value))?),
        "auditEngine" | "auditLogParts" => Ctl::NoOp,
        n => return Err(format!("ctl:{n} is not supported")),
    })
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

fn parse_networks(s: &str) -> Result<Vec<(IpAddr, u8)>, String> {
    s.split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (ip, len) = match p.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (p, None),
            };
            let ip: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| format!("@ipMatch: {p:?} is not an address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|&l| l <= max)
                    .ok_or_else(|| format!("@ipMatch: {p:?} has an invalid prefix length"))?,
                None => max,
            };
            Ok((ip, len))
        })
        .collect()
}

fn parse_byte_ranges(s: &str) -> Result<Box<[bool; 256]>, String> {
    let mut ok = Box::new([false; 256]);
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<u8>()
                .map_err(|_| format!("@validateByteRange: {p:?} is not a byte or range of bytes"))
        };
        let (a, b) = match p.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(p)?;
                (n, n)
            }
        };
        if a > b {
            return Err(format!("@validateByteRange: {p:?} runs backwards"));
        }
        for c in a..=b {
            ok[usize::from(c)] = true;
        }
    }
    Ok(ok)
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
