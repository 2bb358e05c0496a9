//! Notifications: one task per notifier, so that a slow or failing one
//! never holds up another, the evaluator or the data plane.
//!
//! A notifier waits `group_wait` after the first alert it is handed, then
//! sends every alert handed to it meanwhile in one message. A failed
//! delivery is retried with backoff (1 s doubling to 60 s) for up to
//! `repeat_interval`; alerts handed over meanwhile join the retry. Every
//! attempt is counted in `centinela_notifications_total{notifier,result}`.
//! Errors never carry a notifier's URL or password: only its name.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use centinela_config::notify::{Email, NotifyKind};
use centinela_config::{Alerting, Notifier};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::metrics::Counter;

/// One alert in a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub alert: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    pub severity: &'static str,
    pub signal: &'static str,
    /// `upstream`, `service`, `probe` or `slo`.
    pub target_kind: &'static str,
    pub target: String,
    /// One line: what holds, e.g. `healthy_servers of upstream "api" is 0 (below 1)`.
    pub summary: String,
    /// Unix milliseconds.
    pub starts_at: u64,
    pub ends_at: Option<u64>,
}

/// Attempts by result, per notifier.
#[derive(Debug, Default)]
pub struct Tally {
    pub success: Counter,
    pub error: Counter,
}

/// The running notifiers.
pub struct Notifiers {
    senders: Vec<(String, mpsc::UnboundedSender<Notice>)>,
    pub tallies: Vec<(String, Arc<Tally>)>,
}

impl Notifiers {
    /// Starts a task per notifier. `tallies` carries counts over from the
    /// notifiers before a reload.
    pub fn start(
        list: &[Notifier],
        alerting: &Alerting,
        external_url: &str,
        old: &[(String, Arc<Tally>)],
    ) -> Notifiers {
        let mut senders = Vec::new();
        let mut tallies = Vec::new();
        for n in list {
            let tally = old
                .iter()
                .find(|(name, _)| *name == n.name)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            let (tx, rx) = mpsc::unbounded_channel();
            let task = Task {
                notifier: n.clone(),
                group_wait: alerting.group_wait,
                repeat_interval: alerting.repeat_interval,
                external_url: external_url.to_string(),
                tally: tally.clone(),
            };
            tokio::spawn(task.run(rx));
            senders.push((n.name.clone(), tx));
            tallies.push((n.name.clone(), tally));
        }
        Notifiers { senders, tallies }
    }

    /// Hands `notice` to the notifiers named (every one when `to` is empty).
    pub fn send(&self, to: &[String], notice: &Notice) {
        for (name, tx) in &self.senders {
            if to.is_empty() || to.contains(name) {
                let _ = tx.send(notice.clone());
            }
        }
    }
}

struct Task {
    notifier: Notifier,
    group_wait: Duration,
    repeat_interval: Duration,
    external_url: String,
    tally: Arc<Tally>,
}

/// Adds `n` to the batch, replacing an older notice of the same alert.
fn merge(batch: &mut Vec<Notice>, n: Notice) {
    match batch.iter_mut().find(|b| b.alert == n.alert) {
        Some(b) => *b = n,
        None => batch.push(n),
    }
}

impl Task {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Notice>) {
        let name = &self.notifier.name;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            tokio::time::sleep(self.group_wait).await;
            while let Ok(n) = rx.try_recv() {
                merge(&mut batch, n);
            }
            let give_up = tokio::time::Instant::now() + self.repeat_interval;
            let mut backoff = Duration::from_secs(1);
            loop {
                let attempt = tokio::time::timeout(Duration::from_secs(10), self.deliver(&batch));
                let result = match attempt.await {
                    Ok(r) => r,
                    Err(_) => Err("no answer within 10 s".to_string()),
                };
                match result {
                    Ok(()) => {
                        self.tally.success.inc();
                        tracing::info!(notifier = %name, alerts = batch.len(), "Notification sent");
                        break;
                    }
                    Err(why) => {
                        self.tally.error.inc();
                        if tokio::time::Instant::now() + backoff > give_up {
                            tracing::error!(notifier = %name, error = %why, alerts = batch.len(), "Notification failed; giving up until the alert is sent again");
                            break;
                        }
                        tracing::warn!(notifier = %name, error = %why, retry_in_secs = backoff.as_secs(), "Notification failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        while let Ok(n) = rx.try_recv() {
                            merge(&mut batch, n);
                        }
                    }
                }
            }
        }
    }

    async fn deliver(&self, batch: &[Notice]) -> Result<(), String> {
        match &self.notifier.kind {
            NotifyKind::Webhook(url) => {
                let body = webhook_body(&self.notifier.name, &self.external_url, batch);
                post_json(url.expose(), self.notifier.ca.as_deref(), &body).await
            }
            NotifyKind::Slack(url) => {
                let body = json!({ "text": text(batch) });
                post_json(url.expose(), self.notifier.ca.as_deref(), &body).await
            }
            NotifyKind::Email(mail) => {
                let ca = self.notifier.ca.as_deref();
                send_mail(mail, ca, &subject(batch), &text(batch)).await
            }
        }
    }
}

/// Alertmanager's webhook payload, version "4".
pub fn webhook_body(receiver: &str, external_url: &str, batch: &[Notice]) -> Value {
    let firing = batch.iter().any(|n| n.status == "firing");
    let alerts: Vec<Value> = batch
        .iter()
        .map(|n| {
            let mut labels = serde_json::Map::new();
            labels.insert("alertname".into(), json!(n.alert));
            labels.insert("severity".into(), json!(n.severity));
            labels.insert("signal".into(), json!(n.signal));
            labels.insert(n.target_kind.into(), json!(n.target));
            let fingerprint = fnv64(n.alert.as_bytes());
            json!({
                "status": n.status,
                "labels": labels,
                "annotations": { "summary": n.summary },
                "startsAt": rfc3339(n.starts_at),
                "endsAt": n.ends_at.map_or("0001-01-01T00:00:00Z".to_string(), rfc3339),
                "generatorURL": format!("{external_url}/-/alerts"),
                "fingerprint": format!("{fingerprint:016x}"),
            })
        })
        .collect();
    let common = if batch.len() == 1 {
        json!({ "alertname": batch[0].alert, "severity": batch[0].severity })
    } else {
        json!({})
    };
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{receiver=\"{receiver}\"}}"),
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": {},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": external_url,
        "alerts": alerts,
    })
}

/// The message as text: Slack and email.
pub fn text(batch: &[Notice]) -> String {
    let mut s = String::new();
    for n in batch {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&format!(
            "[{}] {} ({}): {}",
            n.status.to_ascii_uppercase(),
            n.alert,
            n.severity,
            n.summary
        ));
    }
    s
}

fn subject(batch: &[Notice]) -> String {
    let firing = batch.iter().filter(|n| n.status == "firing").count();
    let names: Vec<&str> = batch.iter().map(|n| n.alert.as_str()).collect();
    if firing > 0 {
        format!("[FIRING:{firing}] {}", names.join(", "))
    } else {
        format!("[RESOLVED] {}", names.join(", "))
    }
}

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub use crate::clock::rfc3339;

/// Where an `http://` or `https://` URL points.
#[derive(Debug, PartialEq)]
struct Url {
    tls: bool,
    /// The host as written (brackets kept for IPv6), without the port.
    host: String,
    port: u16,
    path: String,
}

impl Url {
    /// `Host:`: the port only when it is not the scheme's own.
    fn authority(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host to connect to and to verify the certificate for.
    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Never shows the URL (it may carry a token): only what is wrong.
fn split_url(url: &str) -> Result<Url, String> {
    let (rest, tls) = match url.strip_prefix("https://") {
        Some(r) => (r, true),
        None => (
            url.strip_prefix("http://")
                .ok_or("not an http:// or https:// URL")?,
            false,
        ),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| "the URL's port is not a number")?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() || host.contains('@') {
        return Err("the URL has no usable host".into());
    }
    Ok(Url {
        tls,
        host: host.to_string(),
        port,
        path,
    })
}

/// POSTs JSON and wants a 2xx answer; `https://` is verified against the
/// system's roots or `ca`.
async fn post_json(url: &str, ca: Option<&Path>, body: &Value) -> Result<(), String> {
    let url = split_url(url)?;
    let stream = TcpStream::connect((url.bare_host(), url.port))
        .await
        .map_err(|e| format!("cannot connect: {}", e.kind()))?;
    let req = http::Request::post(url.path.as_str())
        .header(http::header::HOST, url.authority())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("centinela/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|_| "the URL's path is not valid in a request".to_string())?;
    if url.tls {
        let cfg = centinela_tls::client_config(ca)?;
        let tls = centinela_tls::connect(stream, url.bare_host(), cfg).await?;
        exchange(tls, req).await
    } else {
        exchange(stream, req).await
    }
}

async fn exchange<S>(io: S, req: http::Request<Full<Bytes>>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// Reads one SMTP reply (possibly multi-line) and checks its code class.
async fn reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, want: u8) -> Result<String, String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .await
            .map_err(|e| format!("SMTP read failed: {}", e.kind()))?;
        if n == 0 {
            return Err("the SMTP server closed the connection".into());
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    if all.as_bytes().first() == Some(&want) {
        Ok(all)
    } else {
        // The server's own words, without anything we sent.
        Err(format!(
            "the SMTP server answered: {}",
            all.lines().last().unwrap_or("").trim()
        ))
    }
}

/// Sends a mail: EHLO, STARTTLS then EHLO again when `starttls`, AUTH
/// PLAIN when a username is set, MAIL, RCPT, DATA.
async fn send_mail(
    mail: &Email,
    ca: Option<&Path>,
    subject: &str,
    body: &str,
) -> Result<(), String> {
    let stream = TcpStream::connect(&mail.smtp)
        .await
        .map_err(|e| format!("cannot connect to the SMTP server: {}", e.kind()))?;
    let mut s = BufReader::new(stream);
    reply(&mut s, b'2').await?;
    s.write_all(b"EHLO centinela\r\n").await.map_err(io)?;
    let ehlo = reply(&mut s, b'2').await?;
    if !mail.starttls {
        return transaction(&mut s, mail, subject, body).await;
    }
    let offers = ehlo.lines().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
    });
    if !offers {
        return Err("the SMTP server does not offer STARTTLS (starttls = true)".into());
    }
    s.write_all(b"STARTTLS\r\n").await.map_err(io)?;
    reply(&mut s, b'2').await?;
    if !s.buffer().is_empty() {
        // Anything sent before the handshake could be injected by a man in
        // the middle and read as if it came over TLS (CVE-2011-0411).
        return Err("the SMTP server sent more after accepting STARTTLS; refused".into());
    }
    let host = mail
        .smtp
        .rsplit_once(':')
        .map_or(mail.smtp.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let cfg = centinela_tls::client_config(ca)?;
    let tls = centinela_tls::connect(s.into_inner(), host, cfg)
        .await
        .map_err(|e| format!("SMTP {e}"))?;
    let mut s = BufReader::new(tls);
    s.write_all(b"EHLO centinela\r\n").await.map_err(io)?;
    reply(&mut s, b'2').await?;
    transaction(&mut s, mail, subject, body).await
}

/// AUTH, MAIL, RCPT, DATA and QUIT on a session that has said EHLO.
async fn transaction<S>(
    s: &mut BufReader<S>,
    mail: &Email,
    subject: &str,
    body: &str,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let (Some(user), Some(pass)) = (&mail.username, &mail.password) {
        let token = base64(format!("\0{user}\0{}", pass.expose()).as_bytes());
        s.write_all(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await
            .map_err(io)?;
        reply(s, b'2')
            .await
            .map_err(|_| "SMTP authentication failed".to_string())?;
    }
    s.write_all(format!("MAIL FROM:<{}>\r\n", mail.from).as_bytes())
        .await
        .map_err(io)?;
    reply(s, b'2').await?;
    for to in &mail.to {
        s.write_all(format!("RCPT TO:<{to}>\r\n").as_bytes())
            .await
            .map_err(io)?;
        reply(s, b'2').await?;
    }
    s.write_all(b"DATA\r\n").await.map_err(io)?;
    reply(s, b'3').await?;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut msg = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        mail.from,
        mail.to.join(", "),
        subject.replace(['\r', '\n'], " "),
        date.replace("GMT", "+0000"),
    );
    for line in body.lines() {
        // Dot-stuffing (RFC 5321 §4.5.2).
        if line.starts_with('.') {
            msg.push('.');
        }
        msg.push_str(line);
        msg.push_str("\r\n");
    }
    msg.push_str(".\r\n");
    s.write_all(msg.as_bytes()).await.map_err(io)?;
    reply(s, b'2').await?;
    let _ = s.write_all(b"QUIT\r\n").await;
    let _ = s.flush().await;
    Ok(())
}

fn io(e: std::io::Error) -> String {
    format!("SMTP write failed: {}", e.kind())
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_encodings() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_221_235_123), "2026-12-02T14:20:35.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn urls_split_into_address_and_path() {
        let u = split_url("http://127.0.0.1:9000/hook?x=1").unwrap();
        assert_eq!(
            (u.bare_host(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/hook?x=1")
        );
        assert_eq!(u.authority(), "127.0.0.1:9000");
        let u = split_url("http://example.com").unwrap();
        assert_eq!(
            (u.authority(), u.port, u.path.as_str(), u.tls),
            ("example.com".into(), 80, "/", false)
        );
        let u = split_url("https://hooks.example.com/T/B/secret").unwrap();
        assert_eq!(
            (u.authority(), u.port, u.path.as_str(), u.tls),
            ("hooks.example.com".into(), 443, "/T/B/secret", true)
        );
        let u = split_url("https://[::1]:8443?x").unwrap();
        assert_eq!(
            (u.bare_host(), u.authority(), u.path.as_str()),
            ("::1", "[::1]:8443".into(), "/?x")
        );
        for bad in [
            "ftp://x",
            "http://:80/",
            "https://user@host/",
            "http://h:port/",
        ] {
            let e = split_url(bad).unwrap_err();
            assert!(!e.contains(bad), "{e}");
        }
    }
}
