//! `[notify.NAME]`: where alerts are sent. Each notifier has exactly one
//! of `webhook`, `slack` or `email`. URLs and passwords are secrets
//! (`env:`/`file:` references or literals) and never printed.

use std::path::Path;

use crate::diag::Sink;
use crate::read::{missing, Obj, SV};
use crate::secret::Secret;

#[derive(Clone, Debug, PartialEq)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifyKind,
    /// The PEM file of the CA certificates to trust for this notifier's
    /// TLS (https://, STARTTLS) instead of the system's roots.
    pub ca: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NotifyKind {
    /// POST of Alertmanager's webhook JSON (version "4").
    Webhook(Secret),
    /// POST of `{"text": …}` to a Slack-compatible incoming webhook.
    Slack(Secret),
    Email(Email),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Email {
    pub to: Vec<String>,
    pub from: String,
    /// `host:port` of the SMTP server.
    pub smtp: String,
    pub starttls: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

pub(crate) fn notifiers(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>, base: &Path) -> Vec<Notifier> {
    let mut out = Vec::new();
    let Some(all) = top.sub(sink, "notify") else {
        return out;
    };
    for (k, v) in all.table.iter() {
        let name: &str = k.get_ref().as_ref();
        if let Some(n) = notifier(sink, v, name, base) {
            out.push(n);
        }
    }
    out
}

fn notifier(sink: &mut Sink<'_>, v: &SV<'_>, name: &str, base: &Path) -> Option<Notifier> {
    let path = format!("notify.{name}");
    let mut o = Obj::new(sink, v, &path)?;
    let mut kinds = Vec::new();
    if let Some(s) = url(sink, &mut o, "webhook", base) {
        kinds.push(NotifyKind::Webhook(s));
    }
    if let Some(s) = url(sink, &mut o, "slack", base) {
        kinds.push(NotifyKind::Slack(s));
    }
    let present = |o: &Obj<'_, '_>, k: &str| o.table.iter().any(|(n, _)| n.get_ref().as_ref() == k);
    let any_written = ["webhook", "slack", "email"]
        .iter()
        .filter(|k| present(&o, k))
        .count();
    let ca = crate::tls::ca_file(sink, &mut o, "ca", base).map(|(p, _)| p);
    if let Some(ev) = o.get("email") {
        let epath = o.child_path("email");
        if let Some(mut e) = Obj::new(sink, ev, &epath) {
            let m = email(sink, &mut e, &ev.span(), base);
            e.finish(sink);
            if let Some(m) = m {
                kinds.push(NotifyKind::Email(m));
            }
        }
    }
    o.finish(sink);
    if any_written == 0 {
        sink.error(
            &v.span(),
            &path,
            "a notifier needs one of `webhook`, `slack` or `email`",
        );
        return None;
    }
    if any_written > 1 {
        sink.error(
            &v.span(),
            &path,
            "a notifier has exactly one of `webhook`, `slack` or `email`: define one [notify.NAME] per destination",
        );
        return None;
    }
    Some(Notifier {
        name: name.to_string(),
        kind: kinds.pop()?,
        ca,
    })
}

/// An `http://` or `https://` URL held as a secret (it often carries a
/// token). The error never shows the value.
fn url(sink: &mut Sink<'_>, o: &mut Obj<'_, '_>, key: &'static str, base: &Path) -> Option<Secret> {
    let span = o.get(key).map(|v| v.span());
    let s = o.secret(sink, key, base)?;
    let v = s.expose();
    let ok = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !v.bytes().any(|b| b <= b' ' || b == 0x7f);
    if !ok {
        sink.error(
            &span.unwrap_or(0..0),
            &o.child_path(key),
            format!(
                "the value of {} is not an http:// or https:// URL",
                s.origin()
            ),
        );
        return None;
    }
    Some(s)
}

fn email(
    sink: &mut Sink<'_>,
    e: &mut Obj<'_, '_>,
    span: &std::ops::Range<usize>,
    base: &Path,
) -> Option<Email> {
    let (to, _) = e.str_list(sink, "to");
    let from = e.str(sink, "from");
    let smtp = e.str(sink, "smtp");
    let starttls = e.bool(sink, "starttls", true);
    let username = e.str(sink, "username").map(|(u, _)| u);
    let password = e.secret(sink, "password", base);
    let mut ok = true;
    for (key, present) in [
        ("to", !to.is_empty()),
        ("from", from.is_some()),
        ("smtp", smtp.is_some()),
    ] {
        if !present {
            missing(sink, span, &e.path.clone(), key);
            ok = false;
        }
    }
    if let Some((s, span)) = &smtp {
        let port_ok = s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            sink.error(
                span,
                &e.child_path("smtp"),
                format!("expected HOST:PORT, e.g. \"smtp.example.com:587\", found {s:?}"),
            );
            ok = false;
        }
    }
    for a in to.iter().chain(from.as_ref().map(|f| &f.0)) {
        if !a.contains('@') || a.contains(['\r', '\n', '<', '>']) {
            sink.error(
                span,
                &e.path.clone(),
                format!("{a:?} is not an email address"),
            );
            ok = false;
        }
    }
    let loopback = smtp.as_ref().is_some_and(|(s, _)| {
        let host = s.rsplit_once(':').map_or(s.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if !starttls && password.is_some() && !loopback {
        sink.warn(
            span,
            &e.child_path("starttls"),
            "starttls = false sends the SMTP password in clear text to a server that is not on loopback",
        );
    }
    if password.is_some() && username.is_none() {
        sink.error(
            span,
            &e.child_path("password"),
            "a password needs a `username`",
        );
        ok = false;
    }
    ok.then(|| Email {
        to,
        from: from.map(|f| f.0).unwrap_or_default(),
        smtp: smtp.map(|s| s.0).unwrap_or_default(),
        starttls,
        username,
        password,
    })
}

/// Every name in a rule's or an SLO's `notify` list (written at `spans`,
/// under `path`) is a `[notify.NAME]`.
pub(crate) fn check_names(
    sink: &mut Sink<'_>,
    names: &[String],
    spans: &[std::ops::Range<usize>],
    path: &str,
    known: &[String],
) {
    for (n, span) in names.iter().zip(spans) {
        if !known.contains(n) {
            sink.error(
                span,
                &format!("{path}.notify"),
                format!("no notifier named {n:?} (defined with [notify.NAME])"),
            );
        }
    }
}
