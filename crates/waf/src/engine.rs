//! Running the rules over one request, as ModSecurity runs them: phase 1
//! (the head), then the body is read by its processor, then phase 2; rules
//! in load order, `skip`/`skipAfter` jumps, chains, `capture` into
//! `TX:0`–`TX:9`, `setvar` once per matched variable, `ctl` for the rest
//! of the request, and the first disruptive action (`deny`, `drop`) ends
//! it. The response phases (3: headers, 4: body) run in a second call
//! with the state the request's phases left, when `[waf]
//! inspect_response` asks for them; logging (5) is not run: see
//! `docs/waf.md`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::prefilter::{bytes_in, may_match, meets, Bits, ByteSet, Prefilter};
use crate::request::{Pair, Parsed, Request, Response};
use crate::rule::{
    Collection, Ctl, Disruptive, Engine, Entry, Expand, IdRange, OpKind, Operator, Part, Rule,
    RuleSet, Selector, SetOp, Target,
};
use crate::transform::Transform;

/// The id the engine's own refusal of an unreadable body is reported
/// under (ModSecurity's recommended rule for it).
pub const REQBODY_ERROR_RULE: u32 = 200002;

/// How the engine is run (from `[waf]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `detect`: nothing is blocked, every match is reported.
    pub detect_only: bool,
    /// `tx.blocking_paranoia_level` and `tx.detection_paranoia_level`.
    pub paranoia: u8,
    /// `tx.inbound_anomaly_score_threshold`.
    pub anomaly_threshold: u32,
    /// `[[waf.exclusion]]`: rules, or one of their targets, off for paths.
    pub exclusions: Vec<Exclusion>,
    /// Run the response phases (3 and 4) too.
    pub inspect_response: bool,
}

/// A rule (or one target of it) off for requests under a path.
#[derive(Debug, Clone)]
pub struct Exclusion {
    pub rule: u32,
    pub path_prefix: Option<String>,
    pub target: Option<Target>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            detect_only: false,
            paranoia: 1,
            anomaly_threshold: 5,
            exclusions: Vec::new(),
            inspect_response: false,
        }
    }
}

/// A compiled rule set, ready for requests.
pub struct Waf {
    /// Phases 1 to 4, each in load order.
    phases: [Vec<Step>; 4],
    engine: Engine,
    body_access: bool,
    settings: Settings,
    /// Every prefiltered operator's literals, scanned once per value.
    prefilter: Option<Prefilter>,
    /// Per transformation chain (`Rule::transform_id`): the bytes without
    /// which it leaves a value as it is; `None` if it may change any.
    chains: Vec<Option<ByteSet>>,
    /// Per transformation chain, per step: the bytes without which the
    /// step leaves a value as it is (`None`: it may change any).
    steps: Vec<Vec<Option<ByteSet>>>,
    /// `inspect_response`, and there are rules in phase 3 or 4.
    responses: bool,
    /// How many target groups (`Rule::group_id`) the links form.
    groups: usize,
    /// Per phase and step: the step a rule's `skipAfter` goes on from.
    skip_to: [Vec<usize>; 4],
}

/// The key of a link's target group: its transformations and the targets
/// it reads, when the prefilter can tell from their collections' values
/// together that its operator cannot match (`Tx::cannot_match`).
fn group_key(r: &Rule) -> Option<String> {
    let op = &r.operator;
    if op.negated || r.multi_match || (op.bytes.is_none() && r.prefilter_id.is_none()) {
        return None;
    }
    let targets: Vec<&Target> = r.targets.iter().filter(|t| !t.exclude).collect();
    if targets.is_empty()
        || targets
            .iter()
            .any(|t| t.count || !whole_request_value(t.collection))
    {
        return None;
    }
    Some(format!("{}|{targets:?}", r.transform_id))
}

/// The cache key of a value as the request holds it (no transformation
/// changed it).
const AS_IS: u32 = u32::MAX;

enum Step {
    Rule(Arc<Rule>),
    Marker(String),
}

/// One rule that matched.
#[derive(Debug, Clone)]
pub struct Matched {
    pub id: u32,
    /// The variable that matched, e.g. `ARGS:q`.
    pub var: String,
    pub msg: String,
    pub data: String,
    pub severity: Option<u8>,
}

/// What the engine decided for a request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `Some(status)`: the request is refused (not in detect mode).
    pub block: Option<u16>,
    /// The rule whose action refused it (or would have, in detect mode).
    pub disruptive_rule: Option<u32>,
    /// Every rule that matched and logs.
    pub matched: Vec<Matched>,
    /// `tx.blocking_inbound_anomaly_score` at the end.
    pub score: i64,
    /// What the response's phases start from (when they are run).
    pub state: Option<Box<State>>,
}

/// What a request's phases leave for its response's: the `TX`
/// collection and the request's `ctl` changes.
#[derive(Clone)]
pub struct State {
    tx: HashMap<String, (String, Vec<u8>)>,
    removed_ids: Vec<IdRange>,
    removed_tags: Vec<String>,
    removed_targets: Vec<(Removal, Target)>,
    engine: Engine,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("tx", &self.tx.len())
            .finish_non_exhaustive()
    }
}

impl Waf {
    pub fn new(set: RuleSet, settings: Settings) -> Waf {
        let mut phases: [Vec<Step>; 4] = Default::default();
        let mut chains: HashMap<Vec<Transform>, u32> = HashMap::new();
        let mut literals: Vec<Arc<Vec<Vec<u8>>>> = Vec::new();
        let mut groups: HashMap<String, u32> = HashMap::new();
        for e in set.entries {
            match e {
                Entry::Rule(mut r) => {
                    // Rules with the same transformations share cached
                    // results: their chains get one id.
                    let mut link: Option<&mut Rule> = Some(&mut r);
                    while let Some(l) = link {
                        let n = chains.len() as u32;
                        l.transform_id = *chains.entry(l.transforms.clone()).or_insert(n);
                        // A negated operator matches where the literals
                        // are absent; multiMatch runs it on values the
                        // scan does not see.
                        if let (Some(lits), false, false) =
                            (&l.operator.literals, l.operator.negated, l.multi_match)
                        {
                            l.prefilter_id = Some(literals.len() as u32);
                            literals.push(lits.clone());
                        }
                        if let Some(key) = group_key(l) {
                            let n = groups.len() as u32;
                            l.group_id = Some(*groups.entry(key).or_insert(n));
                        }
                        link = l.chain.as_deref_mut();
                    }
                    if (1..=4).contains(&r.phase) {
                        phases[usize::from(r.phase - 1)].push(Step::Rule(Arc::new(*r)));
                    }
                }
                Entry::Marker(m) => {
                    // A marker is a place in every phase.
                    for p in &mut phases {
                        p.push(Step::Marker(m.clone()));
                    }
                }
            }
        }
        let sets: Vec<&[Vec<u8>]> = literals.iter().map(|l| l.as_slice()).collect();
        let mut by_id: Vec<Option<ByteSet>> = vec![None; chains.len()];
        let mut steps: Vec<Vec<Option<ByteSet>>> = vec![Vec::new(); chains.len()];
        for (chain, id) in &chains {
            let each: Vec<Option<ByteSet>> = chain.iter().map(|t| t.triggers()).collect();
            // The chain's: the union of its steps', if each has one.
            by_id[*id as usize] = each.iter().try_fold([0u64; 4], |a, b| {
                b.map(|b| [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]])
            });
            steps[*id as usize] = each;
        }
        // Where each `skipAfter` lands: after its marker, the next one in
        // its phase; ModSecurity skips the rest when there is none.
        let skip_to = phases.each_ref().map(|steps| {
            (0..steps.len())
                .map(|i| match &steps[i] {
                    Step::Rule(r) => r.skip_after.as_ref().map_or(0, |m| {
                        steps[i + 1..]
                            .iter()
                            .position(|s| matches!(s, Step::Marker(n) if n == m))
                            .map_or(steps.len(), |p| i + 1 + p + 1)
                    }),
                    Step::Marker(_) => 0,
                })
                .collect()
        });
        let responses = settings.inspect_response
            && phases[2..]
                .iter()
                .any(|p| p.iter().any(|s| matches!(s, Step::Rule(_))));
        Waf {
            responses,
            skip_to,
            groups: groups.len(),
            chains: by_id,
            steps,
            phases,
            engine: set.engine,
            body_access: set.request_body_access,
            settings,
            prefilter: Prefilter::new(&sets),
        }
    }

    /// Are there response phases to run (`inspect_response`, and rules in
    /// phase 3 or 4)?
    pub fn inspects_responses(&self) -> bool {
        self.responses
    }

    /// Runs phases 3 and 4 over a response, from the state its request's
    /// phases left (`Outcome::state`).
    pub fn inspect_response(
        &self,
        req: &Request<'_>,
        state: &State,
        resp: &Response<'_>,
    ) -> Outcome {
        let mut tx = Tx::new(req, self);
        tx.tx = state.tx.clone();
        tx.removed_ids = state.removed_ids.clone();
        tx.removed_tags = state.removed_tags.clone();
        tx.removed_targets = state.removed_targets.clone();
        tx.engine = state.engine;
        tx.data.response_headers = resp
            .headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        tx.resp = Some(resp);
        if tx.engine == Engine::Off {
            return tx.outcome(None, None, false);
        }
        for phase in 2..4 {
            match self.run(&mut tx, phase) {
                Flow::Continue | Flow::EndPhase => {}
                Flow::Stop => break,
                Flow::Disrupt(id, status) => {
                    let block = !self.detecting(&tx);
                    return tx.outcome(block.then_some(status), Some(id), false);
                }
            }
        }
        tx.outcome(None, None, false)
    }

    /// Inspects a request.
    pub fn inspect(&self, req: &Request<'_>) -> Outcome {
        let mut tx = Tx::new(req, self);
        if self.engine == Engine::Off {
            return tx.outcome(None, None, false);
        }
        let keep = self.inspects_responses();
        let content_type = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
            .map(|(_, v)| *v)
            .unwrap_or(b"");
        for phase in 0..2 {
            if phase == 1 && self.body_access && tx.body_access {
                let processor = tx.data.processor;
                tx.data.body(processor, req.body, content_type);
                // The body's arguments join their collections.
                tx.unions.borrow_mut().clear();
                tx.groups.borrow_mut().fill(None);
                if processor.is_none() && tx.force_body_variable {
                    tx.request_body = true;
                }
            }
            // A body (or query) that could not be read whole is refused
            // before its rules run, as ModSecurity's recommended rule 200002
            // does: rules over a body read in part could be bypassed, and
            // one of too many arguments costs every rule their number.
            if phase == 1 && tx.data.reqbody_error && tx.engine != Engine::Off {
                tx.matched.push(Matched {
                    id: REQBODY_ERROR_RULE,
                    var: "REQBODY_ERROR".into(),
                    msg: format!(
                        "Failed to parse request body: {}",
                        tx.data.reqbody_error_msg
                    ),
                    data: String::new(),
                    severity: Some(2),
                });
                let block = !self.detecting(&tx);
                return tx.outcome(block.then_some(400), Some(REQBODY_ERROR_RULE), keep);
            }
            match self.run(&mut tx, phase) {
                Flow::Continue | Flow::EndPhase => {}
                Flow::Stop => break,
                Flow::Disrupt(id, status) => {
                    let block = !self.detecting(&tx);
                    return tx.outcome(block.then_some(status), Some(id), keep);
                }
            }
        }
        tx.outcome(None, None, keep)
    }

    /// Detect mode, from `[waf] mode` or a rule's `ctl:ruleEngine`.
    fn detecting(&self, tx: &Tx<'_>) -> bool {
        self.settings.detect_only || tx.engine == Engine::DetectionOnly
    }

    fn run(&self, tx: &mut Tx<'_>, phase: usize) -> Flow {
        let steps = &self.phases[phase];
        let mut i = 0;
        while i < steps.len() {
            let Step::Rule(rule) = &steps[i] else {
                i += 1;
                continue;
            };
            i += 1;
            if tx.engine == Engine::Off {
                return Flow::Stop;
            }
            if tx.removed(rule) {
                continue;
            }
            if !tx.rule_matches(rule) {
                continue;
            }
            // Disruptive, then flow.
            let disruptive = match rule.disruptive {
                Disruptive::Block => tx.block_default(rule.phase),
                d => d,
            };
            match disruptive {
                Disruptive::Deny | Disruptive::Drop | Disruptive::Redirect => {
                    return Flow::Disrupt(rule.id, rule.status.unwrap_or(403));
                }
                Disruptive::Allow | Disruptive::AllowRequest => return Flow::Stop,
                Disruptive::AllowPhase => return Flow::EndPhase,
                Disruptive::Pass | Disruptive::Block => {}
            }
            if rule.skip_after.is_some() {
                i = self.skip_to[phase][i - 1];
            } else if rule.skip > 0 {
                let mut left = rule.skip;
                while left > 0 && i < steps.len() {
                    if matches!(steps[i], Step::Rule(_)) {
                        left -= 1;
                    }
                    i += 1;
                }
            }
        }
        Flow::Continue
    }
}

enum Flow {
    Continue,
    EndPhase,
    Stop,
    Disrupt(u32, u16),
}

/// One request's state.
struct Tx<'r> {
    req: &'r Request<'r>,
    /// The response, in phases 3 and 4.
    resp: Option<&'r Response<'r>>,
    prefilter: Option<&'r Prefilter>,
    chains: &'r [Option<ByteSet>],
    steps: &'r [Vec<Option<ByteSet>>],
    data: Parsed,
    tx: HashMap<String, (String, Vec<u8>)>,
    /// The match whose actions run (see `Tx::current_match`).
    matched_var: Option<(String, Vec<u8>)>,
    matched_vars: Vec<(String, Vec<u8>)>,
    removed_ids: Vec<IdRange>,
    removed_tags: Vec<String>,
    removed_targets: Vec<(Removal, Target)>,
    engine: Engine,
    body_access: bool,
    force_body_variable: bool,
    /// `REQUEST_BODY` is set (URL-encoded bodies, or forced).
    request_body: bool,
    matched: Vec<Matched>,
    started: Instant,
    /// Transformed request values: (value's address, length, the rule's
    /// transformation chain) → the result and its prefilter scan, for the
    /// request.
    cache: RefCell<TransformCache>,
    /// What a whole collection's values hold under a transformation
    /// chain: (collection, chain) → their bytes and literal scans, so that
    /// a rule none of whose targets can match is passed over whole.
    unions: RefCell<HashMap<(Collection, u32), Union, BuildKeyHasher>>,
    /// The same per target group (`Rule::group_id`): every link of a
    /// group is passed over from one summary.
    groups: RefCell<Vec<Option<Union>>>,
}

/// The prefilter's view of every value of a collection, together.
#[derive(Clone, Default)]
struct Union {
    present: ByteSet,
    /// The literal scans, OR-ed, once a rule has asked.
    bits: Option<Rc<[u64]>>,
}

type TransformCache = HashMap<(usize, usize, u32), Prepared, BuildKeyHasher>;

/// A request value under one transformation chain.
#[derive(Clone, Default)]
struct Prepared {
    /// `None`: the chain left it as it was.
    changed: Option<Rc<Vec<u8>>>,
    /// The bytes it holds.
    present: ByteSet,
    /// The prefilter's scan of it, once a rule has asked.
    bits: Option<Rc<[u64]>>,
}

/// The cache's keys are three integers made by this process: a
/// multiply-rotate hash is enough (no attacker chooses them).
#[derive(Default, Clone, Copy)]
struct BuildKeyHasher;

impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// A variable an operator matched: its name, its (transformed) value,
/// and the operator's captures when the rule asks for them.
type Hit = (String, Vec<u8>, Option<Vec<Vec<u8>>>);

#[derive(Clone)]
enum Removal {
    Id(Vec<IdRange>),
    Tag(String),
}

impl<'r> Tx<'r> {
    fn new(req: &'r Request<'r>, waf: &'r Waf) -> Tx<'r> {
        let s = &waf.settings;
        let mut tx = Tx {
            req,
            resp: None,
            prefilter: waf.prefilter.as_ref(),
            chains: &waf.chains,
            steps: &waf.steps,
            groups: RefCell::new(vec![None; waf.groups]),
            data: Parsed::head(req),
            // CRS's setup and initialization set about a hundred.
            tx: HashMap::with_capacity(128),
            matched_var: None,
            matched_vars: Vec::new(),
            removed_ids: Vec::new(),
            removed_tags: Vec::new(),
            removed_targets: Vec::new(),
            engine: Engine::On,
            body_access: true,
            force_body_variable: false,
            request_body: false,
            matched: Vec::new(),
            started: Instant::now(),
            cache: RefCell::new(HashMap::with_capacity_and_hasher(256, BuildKeyHasher)),
            unions: RefCell::new(HashMap::with_capacity_and_hasher(64, BuildKeyHasher)),
        };
        let pl = s.paranoia.to_string();
        tx.set_tx("blocking_paranoia_level", pl.clone().into_bytes());
        tx.set_tx("detection_paranoia_level", pl.into_bytes());
        tx.set_tx(
            "inbound_anomaly_score_threshold",
            s.anomaly_threshold.to_string().into_bytes(),
        );
        for x in &s.exclusions {
            let applies = x
                .path_prefix
                .as_ref()
                .is_none_or(|p| tx.data.filename.starts_with(p.as_bytes()));
            if !applies {
                continue;
            }
            let ids = vec![IdRange(x.rule, x.rule)];
            match &x.target {
                Some(t) => tx.removed_targets.push((Removal::Id(ids), t.clone())),
                None => tx.removed_ids.extend(ids),
            }
        }
        tx
    }

    /// The decision; with the state for the response's phases when
    /// `keep`.
    fn outcome(self, block: Option<u16>, rule: Option<u32>, keep: bool) -> Outcome {
        let score = self
            .tx
            .get("blocking_inbound_anomaly_score")
            .map_or(0, |(_, v)| atoi(v));
        let state = keep.then(|| {
            Box::new(State {
                tx: self.tx,
                removed_ids: self.removed_ids,
                removed_tags: self.removed_tags,
                removed_targets: self.removed_targets,
                engine: self.engine,
            })
        });
        Outcome {
            block,
            disruptive_rule: rule,
            matched: self.matched,
            score,
            state,
        }
    }

    fn set_tx(&mut self, name: &str, v: Vec<u8>) {
        // A variable set again keeps its entry (no new key, no new name).
        if !name.bytes().any(|c| c.is_ascii_uppercase()) {
            if let Some(e) = self.tx.get_mut(name) {
                e.1 = v;
                return;
            }
        }
        self.tx
            .insert(name.to_ascii_lowercase(), (name.to_string(), v));
    }

    fn block_default(&self, _phase: u8) -> Disruptive {
        // CRS's setup says `pass` for every phase's default: detection
        // rules add to the score, 949110 decides.
        Disruptive::Pass
    }

    fn removed(&self, r: &Rule) -> bool {
        self.removed_ids.iter().any(|x| x.contains(r.id))
            || self
                .removed_tags
                .iter()
                .any(|t| r.tags.iter().any(|rt| rt == t))
    }

    /// Does a rule (and its chain) match? Each link's non-disruptive
    /// actions (setvar, ctl) run as that link matches, once per matched
    /// variable, as ModSecurity runs them: a chained rule reads what the
    /// link before it set. The chain is logged when all of it matched.
    fn rule_matches(&mut self, rule: &Rule) -> bool {
        self.matched_vars.clear();
        self.matched_var = None;
        let mut link = Some(rule);
        while let Some(r) = link {
            let m = self.eval(rule.id, r);
            if m.is_empty() {
                return false;
            }
            // Each match's captures are TX:0-9, and it is MATCHED_VAR,
            // while its actions run; then the link's matches are
            // MATCHED_VARS (and the last, MATCHED_VAR) for the next link.
            let mut list = Vec::with_capacity(m.len());
            for (name, value, caps) in m {
                if let Some(caps) = caps {
                    for (i, c) in caps.into_iter().enumerate().take(10) {
                        const DIGITS: [&str; 10] =
                            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
                        self.set_tx(DIGITS[i], c);
                    }
                }
                self.matched_var = Some((name, value));
                self.actions(r);
                list.extend(self.matched_var.take());
            }
            self.matched_vars = list;
            link = r.chain.as_deref();
        }
        if rule.log {
            let var = self
                .current_match()
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            let msg = rule
                .msg
                .as_ref()
                .map(|m| self.expand_str(m))
                .unwrap_or_default();
            let data = rule
                .logdata
                .as_ref()
                .map(|m| self.expand_str(m))
                .unwrap_or_default();
            self.matched.push(Matched {
                id: rule.id,
                var,
                msg,
                data,
                severity: rule.severity,
            });
        }
        true
    }

    /// `MATCHED_VAR`: the match whose actions run, else the last match
    /// of the link before.
    fn current_match(&self) -> Option<&(String, Vec<u8>)> {
        self.matched_var.as_ref().or(self.matched_vars.last())
    }

    fn actions(&mut self, r: &Rule) {
        for sv in &r.setvars {
            let expanded = self.expand(&sv.name);
            let name = String::from_utf8_lossy(&expanded);
            let name: Cow<'_, str> = if name.bytes().any(|c| c.is_ascii_uppercase()) {
                Cow::Owned(name.to_ascii_lowercase())
            } else {
                name
            };
            match &sv.op {
                SetOp::Unset => {
                    self.tx.remove(&*name);
                }
                SetOp::Set(v) => {
                    let v = self.expand(v).into_owned();
                    self.set_tx(&name, v);
                }
                SetOp::Add(v) | SetOp::Sub(v) => {
                    let d = atoi(&self.expand(v));
                    let cur = self.tx.get(&*name).map_or(0, |(_, v)| atoi(v));
                    let n = if matches!(sv.op, SetOp::Add(_)) {
                        cur.saturating_add(d)
                    } else {
                        cur.saturating_sub(d)
                    };
                    // The number is written over the old one, in place.
                    match self.tx.get_mut(&*name) {
                        Some((_, v)) => {
                            v.clear();
                            let _ = write!(v, "{n}");
                        }
                        None => self.set_tx(&name, n.to_string().into_bytes()),
                    }
                }
            }
        }
        for c in &r.ctls {
            match c {
                Ctl::RuleRemoveById(ids) => self.removed_ids.extend(ids.iter().copied()),
                Ctl::RuleRemoveByTag(t) => self.removed_tags.push(t.clone()),
                Ctl::RuleRemoveTargetById(ids, ts) => {
                    for t in ts {
                        self.removed_targets
                            .push((Removal::Id(ids.clone()), t.clone()));
                    }
                }
                Ctl::RuleRemoveTargetByTag(tag, ts) => {
                    for t in ts {
                        self.removed_targets
                            .push((Removal::Tag(tag.clone()), t.clone()));
                    }
                }
                Ctl::RuleEngine(e) => self.engine = *e,
                Ctl::RequestBodyProcessor(p) => {
                    self.data.processor = match p.as_str() {
                        "URLENCODED" => Some("URLENCODED"),
                        "MULTIPART" => Some("MULTIPART"),
                        "JSON" => Some("JSON"),
                        _ => Some("XML"),
                    }
                }
                Ctl::RequestBodyAccess(on) => self.body_access = *on,
                Ctl::ForceRequestBodyVariable(on) => self.force_body_variable = *on,
                Ctl::NoOp => {}
            }
        }
    }

    /// The variables of a rule link that its operator matches. Values are
    /// borrowed from the request; only matches are copied.
    fn eval(&self, head_id: u32, r: &Rule) -> Vec<Hit> {
        if r.targets.is_empty() {
            // SecAction: matches, once.
            return vec![(String::new(), Vec::new(), None)];
        }
        let want = r.capture;
        if self.cannot_match(r) {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.each_value(head_id, r, &mut |v| {
            let value: &[u8] = &v.value;
            let mut hit = None;
            if r.multi_match {
                if let Some(c) = self.op(&r.operator, value, want) {
                    hit = Some((value.to_vec(), c));
                }
                let mut cur = value.to_vec();
                for t in &r.transforms {
                    let next = t.apply(&cur).into_owned();
                    if next != cur {
                        cur = next;
                        if hit.is_none() {
                            if let Some(c) = self.op(&r.operator, &cur, want) {
                                hit = Some((cur.clone(), c));
                            }
                        }
                    }
                }
            } else if v.stable
                && (r.prefilter_id.is_some()
                    || r.operator.bytes.is_some()
                    || !r.transforms.is_empty())
            {
                // The request's own values: each transformation chain is
                // computed and scanned once per value and request.
                let Some(p) = self.prepare(value, r) else {
                    return;
                };
                let t = p.changed.as_deref().map_or(value, Vec::as_slice);
                {
                    if let Some(c) = self.op(&r.operator, t, want) {
                        hit = Some((t.to_vec(), c));
                    }
                }
            } else if r.transforms.is_empty() {
                if let Some(c) = self.op(&r.operator, value, want) {
                    hit = Some((value.to_vec(), c));
                }
            } else {
                // A value that changes as rules run (TX, MATCHED_*): the
                // same chain, not kept.
                let t = self
                    .apply_chain(value, bytes_in(value), r)
                    .map_or(Cow::Borrowed(value), |(t, _)| Cow::Owned(t));
                if let Some(c) = self.op(&r.operator, &t, want) {
                    hit = Some((t.into_owned(), c));
                }
            }
            if let Some((val, captures)) = hit {
                out.push((v.name(), val, captures));
            }
        });
        out
    }

    /// A request value under a rule's transformations, each chain once
    /// per value and request; `None` when the prefilter shows that the
    /// rule's operator cannot match it (its bytes first, then its
    /// literals, scanned once per value the first time a rule asks).
    fn prepare(&self, value: &[u8], r: &Rule) -> Option<Prepared> {
        let (key, mut p) = self.transform(value, r);
        if let Some(need) = &r.operator.bytes {
            if !r.operator.negated && !meets(need, &p.present) {
                return None;
            }
        }
        if let Some(id) = r.prefilter_id {
            let bits = self.scan(key, &mut p, value);
            if !may_match(&bits, id) {
                return None;
            }
        }
        Some(p)
    }

    /// A request value under a rule's transformations (cached).
    /// A value that holds none of the bytes a chain acts on is shared, as
    /// it is, by every such chain (with its scan).
    fn transform(&self, value: &[u8], r: &Rule) -> ((usize, usize, u32), Prepared) {
        let as_is = (value.as_ptr() as usize, value.len(), AS_IS);
        let base = self.cache.borrow().get(&as_is).cloned();
        let base = base.unwrap_or_else(|| {
            let p = Prepared {
                present: bytes_in(value),
                changed: None,
                bits: None,
            };
            self.cache.borrow_mut().insert(as_is, p.clone());
            p
        });
        let acts = match self.chains.get(r.transform_id as usize) {
            Some(Some(triggers)) => meets(triggers, &base.present),
            _ => true,
        };
        if !acts {
            return (as_is, base);
        }
        let key = (value.as_ptr() as usize, value.len(), r.transform_id);
        if let Some(p) = self.cache.borrow().get(&key) {
            return (key, p.clone());
        }
        let p = match self.apply_chain(value, base.present, r) {
            None => base,
            Some((t, present)) => Prepared {
                present,
                changed: Some(Rc::new(t)),
                bits: None,
            },
        };
        self.cache.borrow_mut().insert(key, p.clone());
        (key, p)
    }

    /// A rule's transformations over a value that holds the bytes
    /// `present`: a step is passed over, without reading the value, when
    /// the value holds none of the bytes it acts on. `None`: nothing
    /// changed; else the result and its bytes.
    fn apply_chain(
        &self,
        value: &[u8],
        mut present: ByteSet,
        r: &Rule,
    ) -> Option<(Vec<u8>, ByteSet)> {
        let triggers = self.steps.get(r.transform_id as usize);
        let mut cur: Option<Vec<u8>> = None;
        for (i, t) in r.transforms.iter().enumerate() {
            if let Some(Some(trigger)) = triggers.and_then(|s| s.get(i)) {
                if !meets(trigger, &present) {
                    continue;
                }
            }
            let v = cur.as_deref().unwrap_or(value);
            let next = match t.apply(v) {
                Cow::Borrowed(same) if same.len() == v.len() => continue,
                next => next.into_owned(),
            };
            present = bytes_in(&next);
            cur = Some(next);
        }
        cur.map(|c| (c, present))
    }

    /// The prefilter's literal scan of a prepared value (cached).
    fn scan(&self, key: (usize, usize, u32), p: &mut Prepared, value: &[u8]) -> Rc<[u64]> {
        if let Some(b) = &p.bits {
            return b.clone();
        }
        let bits: Rc<[u64]> = match self.prefilter {
            // On the stack first: one allocation, the shared one.
            Some(pf) if pf.words() <= 32 => {
                let mut buf = [0u64; 32];
                pf.scan_into(
                    p.changed.as_deref().map_or(value, Vec::as_slice),
                    &mut buf[..pf.words()],
                );
                Rc::from(&buf[..pf.words()])
            }
            Some(pf) => Rc::from(pf.scan(p.changed.as_deref().map_or(value, Vec::as_slice))),
            None => Rc::from([]),
        };
        p.bits = Some(bits.clone());
        self.cache.borrow_mut().insert(key, p.clone());
        bits
    }

    /// Whether the prefilter shows that no target of a rule link can
    /// match, from what its target group's collections hold together (a
    /// superset of the values the rule reads).
    fn cannot_match(&self, r: &Rule) -> bool {
        let Some(g) = r.group_id else {
            return false;
        };
        if let Some(need) = &r.operator.bytes {
            if !meets(need, &self.group_union(g, r, false).present) {
                return true;
            }
        }
        if let Some(id) = r.prefilter_id {
            let u = self.group_union(g, r, true);
            return !u.bits.is_some_and(|b| may_match(&b, id));
        }
        false
    }

    /// What a target group's values hold together, kept for the request
    /// (until the body's arguments join); with their literal scans when
    /// `bits`.
    fn group_union(&self, g: u32, r: &Rule, bits: bool) -> Union {
        if let Some(Some(u)) = self.groups.borrow().get(g as usize) {
            if u.bits.is_some() || !bits {
                return u.clone();
            }
        }
        let mut u = Union::default();
        let mut acc: Option<Bits> = None;
        for t in r.targets.iter().filter(|t| !t.exclude) {
            let x = self.target_union(t, r, bits);
            for (p, y) in u.present.iter_mut().zip(x.present) {
                *p |= y;
            }
            if let Some(b) = &x.bits {
                match &mut acc {
                    None => acc = Some(b.to_vec().into_boxed_slice()),
                    Some(a) => a.iter_mut().zip(b.iter()).for_each(|(a, b)| *a |= b),
                }
            }
        }
        if bits {
            u.bits = Some(Rc::from(acc.unwrap_or_default()));
        }
        if let Some(slot) = self.groups.borrow_mut().get_mut(g as usize) {
            *slot = Some(u.clone());
        }
        u
    }

    /// What a target's values hold together: a whole collection's union
    /// is kept for the request; a selector's few values are read again
    /// (each one's transformation is cached).
    fn target_union(&self, t: &Target, r: &Rule, bits: bool) -> Union {
        if matches!(t.selector, Selector::All | Selector::XPath(_)) {
            return self.union(t.collection, r, bits);
        }
        self.union_of(t, r, bits)
    }

    /// A collection's values under a rule's transformations, together;
    /// with their literal scans when `bits`.
    fn union(&self, c: Collection, r: &Rule, bits: bool) -> Union {
        let key = (c, r.transform_id);
        if let Some(u) = self.unions.borrow().get(&key) {
            if u.bits.is_some() || !bits {
                return u.clone();
            }
        }
        let all = Target {
            collection: c,
            selector: Selector::All,
            count: false,
            exclude: false,
        };
        let u = self.union_of(&all, r, bits);
        self.unions.borrow_mut().insert(key, u.clone());
        u
    }

    fn union_of(&self, t: &Target, r: &Rule, bits: bool) -> Union {
        let mut u = Union::default();
        let mut acc: Option<Bits> = bits.then(|| {
            let words = self.prefilter.map_or(0, Prefilter::words);
            vec![0u64; words].into_boxed_slice()
        });
        self.each(t, &mut |v| {
            let (k, mut p) = self.transform(&v.value, r);
            for (x, y) in u.present.iter_mut().zip(p.present) {
                *x |= y;
            }
            if let Some(acc) = &mut acc {
                for (x, y) in acc.iter_mut().zip(self.scan(k, &mut p, &v.value).iter()) {
                    *x |= y;
                }
            }
        });
        u.bits = acc.map(Rc::from);
        u
    }

    /// Runs an operator: `Some(captures)` when it matches (the captures of
    /// `@rx` and `@pm` only when `want`).
    fn op(&self, op: &Operator, v: &[u8], want: bool) -> Option<Option<Vec<Vec<u8>>>> {
        let (m, caps) = match &op.kind {
            // The fast match first: captures only for a value that matches
            // (most do not, and the capturing engine is the slow one).
            OpKind::Rx(re) => {
                if !re.is_match(v) {
                    (false, None)
                } else if !want {
                    (true, None)
                } else {
                    let caps = re.captures(v);
                    (caps.is_some(), caps)
                }
            }
            OpKind::Pm(ac) => match ac.find(v) {
                Some(m) => (true, want.then(|| vec![v[m.start()..m.end()].to_vec()])),
                None => (false, None),
            },
            OpKind::StrEq(e) => (*self.expand(e) == *v, None),
            OpKind::BeginsWith(e) => (v.starts_with(&self.expand(e)), None),
            OpKind::EndsWith(e) => (v.ends_with(&self.expand(e)), None),
            OpKind::Contains(e) => {
                let p = self.expand(e);
                (p.is_empty() || memchr::memmem::find(v, &p).is_some(), None)
            }
            OpKind::ContainsWord(e) => (contains_word(v, &self.expand(e)), None),
            OpKind::Within(e) => {
                let p = self.expand(e);
                (v.is_empty() || memchr::memmem::find(&p, v).is_some(), None)
            }
            OpKind::Eq(e) => (atoi(v) == atoi(&self.expand(e)), None),
            OpKind::Ge(e) => (atoi(v) >= atoi(&self.expand(e)), None),
            OpKind::Gt(e) => (atoi(v) > atoi(&self.expand(e)), None),
            OpKind::Le(e) => (atoi(v) <= atoi(&self.expand(e)), None),
            OpKind::Lt(e) => (atoi(v) < atoi(&self.expand(e)), None),
            OpKind::IpMatch(nets) => {
                let ip = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse::<IpAddr>().ok());
                (
                    ip.is_some_and(|ip| nets.iter().any(|n| in_net(ip, *n))),
                    None,
                )
            }
            OpKind::ValidateByteRange(ok) => (v.iter().any(|&c| !ok[usize::from(c)]), None),
            OpKind::ValidateUrlEncoding => (!valid_url_encoding(v), None),
            OpKind::ValidateUtf8Encoding => (std::str::from_utf8(v).is_err(), None),
            OpKind::UnconditionalMatch => (true, None),
            OpKind::NoMatch => (false, None),
            OpKind::DetectSqli => (crate::detect::sqli(v), None),
            OpKind::DetectXss => (crate::detect::xss(v), None),
        };
        (m != op.negated).then_some(if op.negated { None } else { caps })
    }

    /// A macro text, expanded; borrowed when it has no macros.
    fn expand<'e>(&self, e: &'e Expand) -> Cow<'e, [u8]> {
        if let Some(t) = e.text() {
            return Cow::Borrowed(t.as_bytes());
        }
        let mut out = Vec::new();
        for p in &e.parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var(c, key) => {
                    let t = Target {
                        collection: *c,
                        selector: key.clone().map_or(Selector::All, Selector::Key),
                        count: false,
                        exclude: false,
                    };
                    let mut first = true;
                    self.each(&t, &mut |v| {
                        if std::mem::take(&mut first) {
                            out.extend_from_slice(&v.value);
                        }
                    });
                }
            }
        }
        Cow::Owned(out)
    }

    fn expand_str(&self, e: &Expand) -> String {
        String::from_utf8_lossy(&self.expand(e)).into_owned()
    }

    /// Each value a rule link reads, after its exclusions and the
    /// request's `ctl:ruleRemoveTarget*`.
    fn each_value<'s>(&'s self, head_id: u32, r: &Rule, f: &mut dyn FnMut(Var<'s>)) {
        let excluded: Vec<&Target> = r
            .targets
            .iter()
            .filter(|t| t.exclude)
            .chain(self.removed_targets.iter().filter_map(|(w, t)| {
                let applies = match w {
                    Removal::Id(ids) => ids.iter().any(|x| x.contains(head_id)),
                    Removal::Tag(tag) => r.tags.iter().any(|rt| rt == tag),
                };
                applies.then_some(t)
            }))
            .collect();
        for t in r.targets.iter().filter(|t| !t.exclude) {
            if t.count {
                let mut n = 0usize;
                self.each(t, &mut |_| n += 1);
                f(Var {
                    col: collection_name(t.collection),
                    key: None,
                    value: Cow::Owned(n.to_string().into_bytes()),
                    stable: false,
                });
            } else if excluded.is_empty() {
                self.each(t, f);
            } else {
                self.each(t, &mut |v| {
                    let key = v.key.unwrap_or(b"");
                    let gone = excluded.iter().any(|x| {
                        same_source(x.collection, t.collection)
                            && match &x.selector {
                                Selector::All => true,
                                Selector::Key(k) => key.eq_ignore_ascii_case(k.as_bytes()),
                                Selector::Regex(re) => re.is_match(key),
                                Selector::XPath(_) => false,
                            }
                    });
                    if !gone {
                        f(v);
                    }
                });
            }
        }
    }

    /// The request's name-value collections: their name, their pairs, and
    /// whether the names are the values.
    fn pairs_of(&self, c: Collection) -> Option<(&'static str, [&[Pair]; 2], bool)> {
        use Collection::*;
        let d = &self.data;
        Some(match c {
            Args => ("ARGS", [&d.args_get, &d.args_post], false),
            ArgsGet => ("ARGS_GET", [&d.args_get, &[]], false),
            ArgsPost => ("ARGS_POST", [&d.args_post, &[]], false),
            ArgsNames => ("ARGS_NAMES", [&d.args_get, &d.args_post], true),
            ArgsGetNames => ("ARGS_GET_NAMES", [&d.args_get, &[]], true),
            ArgsPostNames => ("ARGS_POST_NAMES", [&d.args_post, &[]], true),
            RequestHeaders => ("REQUEST_HEADERS", [&d.headers, &[]], false),
            RequestHeadersNames => ("REQUEST_HEADERS_NAMES", [&d.headers, &[]], true),
            RequestCookies => ("REQUEST_COOKIES", [&d.cookies, &[]], false),
            RequestCookiesNames => ("REQUEST_COOKIES_NAMES", [&d.cookies, &[]], true),
            _ => return None,
        })
    }

    /// Each of a target's members, in order, borrowed from the request
    /// where they can be.
    fn each<'s>(&'s self, t: &Target, f: &mut dyn FnMut(Var<'s>)) {
        use Collection::*;
        let d = &self.data;
        if let Some((col, pairs, names)) = self.pairs_of(t.collection) {
            return keyed_each(t, col, &pairs, names, f);
        }
        let named = |col: &'static str, key: &'s [u8], value: &'s [u8]| Var {
            col,
            key: Some(key),
            value: Cow::Borrowed(value),
            stable: false,
        };
        match t.collection {
            Files => keyed_each(t, "FILES", &[&d.files], false, f),
            FilesNames => keyed_each(t, "FILES_NAMES", &[&d.files], true, f),
            MultipartPartHeaders => keyed_each(
                t,
                "MULTIPART_PART_HEADERS",
                &[&d.multipart_part_headers],
                false,
                f,
            ),
            ResponseHeaders => keyed_each(t, "RESPONSE_HEADERS", &[&d.response_headers], false, f),
            ResponseHeadersNames => {
                keyed_each(t, "RESPONSE_HEADERS_NAMES", &[&d.response_headers], true, f)
            }
            Xml => {
                for v in &d.xml {
                    f(Var {
                        col: "XML",
                        key: None,
                        value: Cow::Borrowed(v.as_slice()),
                        stable: true,
                    });
                }
            }
            // TX changes as rules run: never cached (`stable: false`).
            Tx => match &t.selector {
                Selector::Key(sel) => {
                    if let Some((orig, v)) = self.tx.get(sel.as_str()) {
                        f(named("TX", orig.as_bytes(), v));
                    }
                }
                sel => {
                    let mut all: Vec<&(String, Vec<u8>)> = self
                        .tx
                        .iter()
                        .filter(|(k, _)| match sel {
                            Selector::Regex(re) => re.is_match(k.as_bytes()),
                            _ => true,
                        })
                        .map(|(_, e)| e)
                        .collect();
                    all.sort_by(|a, b| a.0.cmp(&b.0));
                    for (orig, v) in all {
                        f(named("TX", orig.as_bytes(), v));
                    }
                }
            },
            // Named as the variables they hold.
            MatchedVars => {
                for (n, v) in &self.matched_vars {
                    f(named("", n.as_bytes(), v));
                }
            }
            MatchedVarsNames => {
                for (n, _) in &self.matched_vars {
                    f(named("", n.as_bytes(), n.as_bytes()));
                }
            }
            c => {
                if let Some(v) = self.single(c) {
                    f(v);
                }
            }
        }
    }

    /// A collection of (at most) one member, borrowed from the request
    /// where it can be.
    fn single(&self, c: Collection) -> Option<Var<'_>> {
        use Collection::*;
        let d = &self.data;
        fn scalar<'a>(col: &'static str, v: &'a [u8]) -> Option<Var<'a>> {
            Some(Var {
                col,
                key: None,
                value: Cow::Borrowed(v),
                stable: true,
            })
        }
        fn owned(col: &'static str, v: Vec<u8>) -> Option<Var<'static>> {
            Some(Var {
                col,
                key: None,
                value: Cow::Owned(v),
                stable: false,
            })
        }
        fn flag(col: &'static str, on: bool) -> Option<Var<'static>> {
            Some(Var {
                col,
                key: None,
                value: Cow::Borrowed(if on { &b"1"[..] } else { &b"0"[..] }),
                stable: false,
            })
        }
        fn count(col: &'static str, n: usize) -> Option<Var<'static>> {
            owned(col, n.to_string().into_bytes())
        }
        match c {
            ArgsCombinedSize => {
                let n: usize = d
                    .args_get
                    .iter()
                    .chain(&d.args_post)
                    .map(|(k, v)| k.len() + v.len())
                    .sum();
                count("ARGS_COMBINED_SIZE", n)
            }
            RequestFilename => scalar("REQUEST_FILENAME", &d.filename),
            RequestBasename => scalar("REQUEST_BASENAME", &d.basename),
            RequestUri => scalar("REQUEST_URI", &d.uri),
            RequestUriRaw => scalar("REQUEST_URI_RAW", self.req.target),
            RequestLine => scalar("REQUEST_LINE", &d.line),
            RequestMethod => scalar("REQUEST_METHOD", self.req.method),
            RequestProtocol => scalar("REQUEST_PROTOCOL", self.req.protocol),
            QueryString => scalar("QUERY_STRING", &d.query),
            RequestBody => {
                if d.processor == Some("URLENCODED") || self.request_body {
                    scalar("REQUEST_BODY", self.req.body)
                } else {
                    None
                }
            }
            RequestBodyLength => count("REQUEST_BODY_LENGTH", self.req.body.len()),
            ReqbodyError => flag("REQBODY_ERROR", d.reqbody_error),
            ReqbodyErrorMsg => scalar("REQBODY_ERROR_MSG", d.reqbody_error_msg.as_bytes()),
            // Empty, not absent, without a processor: CRS's 901340 tests it
            // with a negated operator.
            ReqbodyProcessor => owned(
                "REQBODY_PROCESSOR",
                d.processor.unwrap_or("").as_bytes().to_vec(),
            ),
            FilesCombinedSize | FilesSizes => flag("FILES_COMBINED_SIZE", false),
            MultipartStrictError => flag("MULTIPART_STRICT_ERROR", d.multipart_strict_error),
            MultipartUnmatchedBoundary => flag(
                "MULTIPART_UNMATCHED_BOUNDARY",
                d.multipart_unmatched_boundary,
            ),
            MultipartBoundaryQuoted
            | MultipartBoundaryWhitespace
            | MultipartDataAfter
            | MultipartDataBefore
            | MultipartHeaderFolding
            | MultipartInvalidHeaderFolding
            | MultipartInvalidPart
            | MultipartInvalidQuoting
            | MultipartLfLine
            | MultipartMissingSemicolon
            | MultipartCrlfLfLines => flag(collection_name(c), false),
            MatchedVar => self.current_match().map(|(_, v)| Var {
                col: "MATCHED_VAR",
                key: None,
                value: Cow::Borrowed(v.as_slice()),
                stable: false,
            }),
            MatchedVarName => self.current_match().map(|(n, _)| Var {
                col: "MATCHED_VAR_NAME",
                key: None,
                value: Cow::Borrowed(n.as_bytes()),
                stable: false,
            }),
            RemoteAddr => owned("REMOTE_ADDR", self.req.remote_addr.to_string().into_bytes()),
            UniqueId => scalar("UNIQUE_ID", self.req.unique_id.as_bytes()),
            Duration => owned(
                "DURATION",
                self.started.elapsed().as_micros().to_string().into_bytes(),
            ),
            ResponseBody => self.resp.and_then(|r| scalar("RESPONSE_BODY", r.body)),
            ResponseStatus => self
                .resp
                .and_then(|r| owned("RESPONSE_STATUS", r.status.to_string().into_bytes())),
            ResponseProtocol => self
                .resp
                .and_then(|r| scalar("RESPONSE_PROTOCOL", r.protocol)),
            ResponseContentType => d
                .response_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
                .and_then(|(_, v)| scalar("RESPONSE_CONTENT_TYPE", v)),
            ResponseContentLength => self
                .resp
                .and_then(|r| count("RESPONSE_CONTENT_LENGTH", r.body.len())),
            // The name-value collections are read by `each`; these are
            // never set (documented in docs/waf.md).
            Args | ArgsGet | ArgsPost | ArgsNames | ArgsGetNames | ArgsPostNames
            | RequestHeaders | RequestHeadersNames | RequestCookies | RequestCookiesNames
            | Files | FilesNames | MultipartPartHeaders | ResponseHeaders
            | ResponseHeadersNames | Xml | Tx | MatchedVars | MatchedVarsNames
            | MultipartFilename | MultipartName | Env | FullRequest | FullRequestLength
            | RemotePort => None,
        }
    }
}

/// A name-value collection's members that a target's selector takes.
fn keyed_each<'a>(
    t: &Target,
    col: &'static str,
    pairs: &[&'a [Pair]],
    names: bool,
    f: &mut dyn FnMut(Var<'a>),
) {
    for ps in pairs {
        for (k, v) in ps.iter() {
            let ok = match &t.selector {
                Selector::All | Selector::XPath(_) => true,
                Selector::Key(sel) => k.eq_ignore_ascii_case(sel.as_bytes()),
                Selector::Regex(re) => re.is_match(k),
            };
            if ok {
                f(Var {
                    col,
                    key: Some(k),
                    value: Cow::Borrowed(if names { k } else { v }),
                    stable: true,
                });
            }
        }
    }
}

/// Collections whose values are the request's own, fixed once its body
/// is read: their transformations and scans can be kept for the request.
fn whole_request_value(c: Collection) -> bool {
    use Collection::*;
    matches!(
        c,
        Args | ArgsGet
            | ArgsPost
            | ArgsNames
            | ArgsGetNames
            | ArgsPostNames
            | RequestHeaders
            | RequestHeadersNames
            | RequestCookies
            | RequestCookiesNames
            | RequestFilename
            | RequestBasename
            | RequestUri
            | RequestUriRaw
            | RequestLine
            | RequestMethod
            | RequestProtocol
            | QueryString
            | Files
            | FilesNames
            | Xml
            | MultipartPartHeaders
            | ResponseBody
            | ResponseHeaders
            | ResponseHeadersNames
            | ResponseProtocol
    )
}

/// A variable as a rule reads it.
struct Var<'a> {
    /// The collection's name (empty for `MATCHED_VARS`, whose keys are
    /// whole names).
    col: &'static str,
    key: Option<&'a [u8]>,
    value: Cow<'a, [u8]>,
    /// Part of the request (not `TX` or `MATCHED_*`, which change as rules
    /// run): its transformations may be cached for the request.
    stable: bool,
}

impl Var<'_> {
    /// `ARGS:q`, `REQUEST_URI`.
    fn name(&self) -> String {
        let Some(key) = self.key else {
            return self.col.to_string();
        };
        let key = String::from_utf8_lossy(key);
        if self.col.is_empty() {
            return key.into_owned();
        }
        let mut name = String::with_capacity(self.col.len() + 1 + key.len());
        name.push_str(self.col);
        name.push(':');
        name.push_str(&key);
        name
    }
}

/// `ARGS` and its parts are one source for exclusions.
fn same_source(a: Collection, b: Collection) -> bool {
    use Collection::*;
    a == b
        || matches!(
            (a, b),
            (Args, ArgsGet | ArgsPost) | (ArgsNames, ArgsGetNames | ArgsPostNames)
        )
}

fn collection_name(c: Collection) -> &'static str {
    use Collection::*;
    match c {
        Args => "ARGS",
        ArgsGet => "ARGS_GET",
        ArgsPost => "ARGS_POST",
        ArgsNames => "ARGS_NAMES",
        RequestHeaders => "REQUEST_HEADERS",
        RequestCookies => "REQUEST_COOKIES",
        Files => "FILES",
        Tx => "TX",
        Xml => "XML",
        MultipartBoundaryQuoted => "MULTIPART_BOUNDARY_QUOTED",
        MultipartBoundaryWhitespace => "MULTIPART_BOUNDARY_WHITESPACE",
        MultipartDataAfter => "MULTIPART_DATA_AFTER",
        MultipartDataBefore => "MULTIPART_DATA_BEFORE",
        MultipartHeaderFolding => "MULTIPART_HEADER_FOLDING",
        MultipartInvalidHeaderFolding => "MULTIPART_INVALID_HEADER_FOLDING",
        MultipartInvalidPart => "MULTIPART_INVALID_PART",
        MultipartInvalidQuoting => "MULTIPART_INVALID_QUOTING",
        MultipartLfLine => "MULTIPART_LF_LINE",
        MultipartMissingSemicolon => "MULTIPART_MISSING_SEMICOLON",
        MultipartCrlfLfLines => "MULTIPART_CRLF_LF_LINES",
        _ => "VAR",
    }
}

/// C's `atoi`: optional sign, leading digits, else 0.
fn atoi(v: &[u8]) -> i64 {
    let s = v.trim_ascii_start();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for &c in digits.iter().take_while(|c| c.is_ascii_digit()) {
        n = n.saturating_mul(10).saturating_add(i64::from(c - b'0'));
    }
    if neg {
        -n
    } else {
        n
    }
}

fn contains_word(v: &[u8], w: &[u8]) -> bool {
    if w.is_empty() {
        return true;
    }
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i + w.len() <= v.len() {
        if &v[i..i + w.len()] == w
            && (i == 0 || !word(v[i - 1]))
            && (i + w.len() == v.len() || !word(v[i + w.len()]))
        {
            return true;
        }
        i += 1;
    }
    false
}

fn valid_url_encoding(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            if i + 2 >= v.len() || !v[i + 1].is_ascii_hexdigit() || !v[i + 2].is_ascii_hexdigit() {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fn in_net(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let (a, b, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (
            u128::from(u32::from(a)) << 96,
            u128::from(u32::from(b)) << 96,
            len,
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), len),
        (IpAddr::V4(a), IpAddr::V6(b)) => (u128::from(a.to_ipv6_mapped()), u128::from(b), len),
        (IpAddr::V6(a), IpAddr::V4(b)) => (u128::from(a), u128::from(b.to_ipv6_mapped()), len + 96),
    };
    if bits == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(bits.min(128)));
    a & mask == b & mask
}
