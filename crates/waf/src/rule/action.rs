//! Actions: what a rule does when it matches (disruptive actions,
//! `setvar`, `ctl`), and the values of the rest (`phase`, `status`,
//! `severity`, `t:`), each parsed with its error.

use crate::transform::{Named, Transform};

use super::target::{parse_targets, Expand, Target};

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

pub(super) fn push_transform(list: &mut Vec<Transform>, name: Option<&str>) -> Result<(), String> {
    let name = name.unwrap_or("");
    match Transform::named(name) {
        Some(Named::None) => list.clear(),
        Some(Named::Transform(t)) => list.push(t),
        None => return Err(format!("transformation t:{name} is not supported")),
    }
    Ok(())
}

pub(super) fn parse_phase(v: Option<&str>) -> Result<u8, String> {
    match v.unwrap_or("").trim() {
        "1" => Ok(1),
        "2" | "request" => Ok(2),
        "3" => Ok(3),
        "4" | "response" => Ok(4),
        "5" | "logging" => Ok(5),
        p => Err(format!("phase:{p} is not 1 to 5")),
    }
}

pub(super) fn parse_status(v: Option<&str>) -> Result<u16, String> {
    let v = v.unwrap_or("");
    v.trim()
        .parse::<u16>()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("status:{v} is not an HTTP status"))
}

pub(super) fn parse_severity(v: Option<&str>) -> Result<u8, String> {
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

pub(super) fn parse_engine(v: Option<&str>) -> Result<Engine, String> {
    match v.unwrap_or("") {
        "On" | "on" => Ok(Engine::On),
        "Off" | "off" => Ok(Engine::Off),
        "DetectionOnly" => Ok(Engine::DetectionOnly),
        o => Err(format!("{o:?} is not On, Off or DetectionOnly")),
    }
}

pub(super) fn on_off(v: Option<&str>) -> Result<bool, String> {
    match v.unwrap_or("") {
        "On" | "on" => Ok(true),
        "Off" | "off" => Ok(false),
        o => Err(format!("{o:?} is not On or Off")),
    }
}

pub(super) fn parse_setvar(v: &str) -> Result<SetVar, String> {
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
pub(super) fn tx_name(n: &str) -> Result<Expand, String> {
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

pub(super) fn parse_id_ranges(v: &str) -> Result<Vec<IdRange>, String> {
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

pub(super) fn parse_ctl(v: &str) -> Result<Ctl, String> {
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
