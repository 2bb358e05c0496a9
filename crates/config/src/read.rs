//! The walker: reads a spanned TOML table key by key, checks each value's
//! type and range, and reports what is wrong with `file:line:column`. Every
//! section module reads its table through [`Obj`].

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::Sink;
use crate::units::{parse_duration, parse_size};

pub(crate) type SV<'i> = Spanned<DeValue<'i>>;

pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table being read: remembers which keys were consumed so that the rest can
/// be reported as unknown.
pub(crate) struct Obj<'t, 'i> {
    pub(crate) table: &'t DeTable<'i>,
    pub(crate) path: String,
    pub(crate) known: Vec<&'static str>,
}

impl<'t, 'i> Obj<'t, 'i> {
    pub(crate) fn new(sink: &mut Sink<'_>, v: &'t SV<'i>, path: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::Table(table) => Some(Obj {
                table,
                path: path.to_string(),
                known: Vec::new(),
            }),
            other => {
                sink.error(
                    &v.span(),
                    path,
                    format!("expected a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'t SV<'i>> {
        self.known.push(key);
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    /// The value of `key`, if present, without reading it.
    pub(crate) fn peek(&self, key: &str) -> Option<&'t SV<'i>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn finish(self, sink: &mut Sink<'_>) {
        for (k, _) in self.table.iter() {
            let name: &str = k.get_ref().as_ref();
            if !self.known.contains(&name) {
                let mut known = self.known.clone();
                known.sort_unstable();
                sink.error(
                    &k.span(),
                    &self.child_path(name),
                    format!(
                        "unknown key `{name}`; expected one of: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    pub(crate) fn str(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
    ) -> Option<(String, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                sink.error(
                    &v.span(),
                    &self.child_path(key),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, sink: &mut Sink<'_>, key: &'static str, default: bool) -> bool {
        let Some(v) = self.get(key) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                sink.error(
                    &v.span(),
                    &self.child_path(key),
                    format!("expected true or false, found {}", type_name(other)),
                );
                default
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn int(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let path = self.child_path(key);
        match v.get_ref() {
            DeValue::Integer(i) => {
                match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                    Ok(n) if n >= 0 && (n as u64) >= min && (n as u64) <= max => n as u64,
                    Ok(n) if n < min as i64 => {
                        sink.error(
                            &v.span(),
                            &path,
                            format!("must be at least {min}, found {n}"),
                        );
                        default
                    }
                    Ok(n) => {
                        sink.error(
                            &v.span(),
                            &path,
                            format!("must be at most {max}, found {n}"),
                        );
                        default
                    }
                    Err(_) => {
                        sink.error(&v.span(), &path, "integer out of range");
                        default
                    }
                }
            }
            other => {
                sink.error(
                    &v.span(),
                    &path,
                    format!("expected an integer, found {}", type_name(other)),
                );
                default
            }
        }
    }

    pub(crate) fn float(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: f64,
        min_excl: f64,
        max: f64,
    ) -> f64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let path = self.child_path(key);
        let parsed = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            other => {
                sink.error(
                    &v.span(),
                    &path,
                    format!("expected a number, found {}", type_name(other)),
                );
                return default;
            }
        };
        match parsed {
            Some(f) if f > min_excl && f <= max => f,
            _ => {
                sink.error(
                    &v.span(),
                    &path,
                    format!("must be a number greater than {min_excl} and at most {max}"),
                );
                default
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: Duration,
    ) -> Duration {
        self.duration_min(sink, key, default, Duration::ZERO)
    }

    pub(crate) fn duration_min(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some((s, span)) = self.str(sink, key) else {
            return default;
        };
        match parse_duration(&s) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                sink.error(
                    &span,
                    &self.child_path(key),
                    format!("must be at least {}", crate::units::format_duration(min)),
                );
                default
            }
            Err(e) => {
                sink.error(&span, &self.child_path(key), e);
                default
            }
        }
    }

    pub(crate) fn size(&mut self, sink: &mut Sink<'_>, key: &'static str, default: u64) -> u64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Integer(i) => {
                i.as_str()
                    .replace('_', "")
                    .parse::<u64>()
                    .unwrap_or_else(|_| {
                        sink.error(&v.span(), &self.child_path(key), "size out of range");
                        default
                    })
            }
            DeValue::String(s) => parse_size(s).unwrap_or_else(|e| {
                sink.error(&v.span(), &self.child_path(key), e);
                default
            }),
            other => {
                sink.error(
                    &v.span(),
                    &self.child_path(key),
                    format!(
                        "expected a size such as \"64KiB\", found {}",
                        type_name(other)
                    ),
                );
                default
            }
        }
    }

    pub(crate) fn addr(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
    ) -> Option<(SocketAddr, Range<usize>)> {
        let (s, span) = self.str(sink, key)?;
        match parse_addr(&s) {
            Ok(a) => Some((a, span)),
            Err(e) => {
                sink.error(&span, &self.child_path(key), e);
                None
            }
        }
    }

    pub(crate) fn sub(&mut self, sink: &mut Sink<'_>, key: &'static str) -> Option<Obj<'t, 'i>> {
        let path = self.child_path(key);
        let v = self.get(key)?;
        Obj::new(sink, v, &path)
    }
}

pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid address {s:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""
        )
    })
}

pub(crate) fn missing(sink: &mut Sink<'_>, span: &Range<usize>, path: &str, key: &str) {
    sink.error(span, path, format!("missing required key `{key}`"));
}

pub(crate) fn array_items<'t, 'i>(
    sink: &mut Sink<'_>,
    v: &'t SV<'i>,
    path: &str,
) -> Vec<(usize, &'t SV<'i>)> {
    match v.get_ref() {
        DeValue::Array(items) => items.iter().enumerate().collect(),
        other => {
            sink.error(
                &v.span(),
                path,
                format!(
                    "expected an array (write [[{path}]]), found {}",
                    type_name(other)
                ),
            );
            Vec::new()
        }
    }
}

/// An array of strings, each with its span. A value that is not an array
/// or an item that is not a string is an error, and left out.
pub(crate) fn string_items(
    sink: &mut Sink<'_>,
    v: &SV<'_>,
    path: &str,
) -> Vec<(String, Range<usize>)> {
    let DeValue::Array(items) = v.get_ref() else {
        sink.error(
            &v.span(),
            path,
            format!(
                "expected an array of strings, found {}",
                type_name(v.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.get_ref() {
            DeValue::String(s) => out.push((s.to_string(), item.span())),
            other => sink.error(
                &item.span(),
                &format!("{path}[{i}]"),
                format!("expected a string, found {}", type_name(other)),
            ),
        }
    }
    out
}

/// A name of something in the file (alert, probe): letters, digits, `-`,
/// `_` and `.`, at most 128 bytes; safe as a metric label and in a URL path.
pub(crate) fn is_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Obj<'_, '_> {
    /// The required `name` of an item of an array of tables (`what`: alert,
    /// probe, SLO): a valid name, not one `taken` already. `item` is the
    /// table's span, for the error when the key is missing. An invalid or
    /// repeated name is an error and still returned, so that the item's
    /// other keys are checked too.
    pub(crate) fn item_name(
        &mut self,
        sink: &mut Sink<'_>,
        item: &Range<usize>,
        what: &str,
        taken: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let Some((n, span)) = self.str(sink, "name") else {
            missing(sink, item, &self.path, "name");
            return None;
        };
        if !is_name(&n) {
            sink.error(
                &span,
                &self.child_path("name"),
                format!("{n:?} is not a valid {what} name: use letters, digits, '-', '_' and '.'"),
            );
        } else if taken(&n) {
            sink.error(
                &span,
                &self.child_path("name"),
                format!("{what} {n:?} is defined twice"),
            );
        }
        Some(n)
    }

    /// An optional array of strings under `key`: the strings and their spans.
    pub(crate) fn str_list(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
    ) -> (Vec<String>, Vec<Range<usize>>) {
        let path = self.child_path(key);
        match self.get(key) {
            Some(v) => string_items(sink, v, &path).into_iter().unzip(),
            None => (Vec::new(), Vec::new()),
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2): header names, protocol names.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
