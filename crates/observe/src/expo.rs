//! The exposition: the Prometheus text format (0.0.4) and OpenMetrics 1.0,
//! chosen by the scraper's `Accept` header.
//!
//! Written here rather than with `prometheus-client`: that crate only
//! writes OpenMetrics, and the data plane's counters are plain atomics read
//! at scrape time, so no registry is needed. The two formats differ in
//! little: a counter's `# TYPE` line names the family without `_total` in
//! OpenMetrics and with it in the text format, and OpenMetrics ends with
//! `# EOF`.

use std::fmt::Write;

/// The format a scrape is answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it (Prometheus asks for
    /// it first), else the text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a)
                if a.split(',').any(|m| {
                    m.split(';')
                        .next()
                        .is_some_and(|t| t.trim() == "application/openmetrics-text")
                }) =>
            {
                Format::OpenMetrics
            }
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Labels of one sample, in order.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// An exposition being written: families, each with its samples.
pub struct Exposition {
    out: String,
    format: Format,
    /// The family being written: its name and type.
    family: Option<(String, Kind)>,
}

impl Exposition {
    pub fn new(format: Format) -> Exposition {
        Exposition {
            out: String::with_capacity(16 * 1024),
            format,
            family: None,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Starts a family. `name` is the family name: a counter's samples are
    /// written `name_total`, a histogram's `name_bucket`, `_sum`, `_count`.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        debug_assert!(
            kind != Kind::Counter || !name.ends_with("_total"),
            "a counter family is named without _total"
        );
        let typed = match (kind, self.format) {
            (Kind::Counter, Format::Prometheus) => format!("{name}_total"),
            _ => name.to_string(),
        };
        let _ = write!(self.out, "# HELP {typed} ");
        escape_help(&mut self.out, help);
        let _ = writeln!(self.out, "\n# TYPE {typed} {}", kind.name());
        self.family = Some((name.to_string(), kind));
        self
    }

    fn name(&self) -> &str {
        self.family
            .as_ref()
            .map(|(n, _)| n.as_str())
            .expect("a sample is written inside a family")
    }

    fn line(&mut self, suffix: &str, labels: Labels<'_>, extra: Option<(&str, &str)>, value: &str) {
        let name = self.name().to_string();
        self.out.push_str(&name);
        self.out.push_str(suffix);
        let mut all = labels.iter().copied().chain(extra).peekable();
        if all.peek().is_some() {
            self.out.push('{');
            for (i, (k, v)) in all.enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        self.out.push('\n');
    }

    /// A counter sample (`name_total`).
    pub fn counter(&mut self, labels: Labels<'_>, value: u64) -> &mut Self {
        self.line("_total", labels, None, &value.to_string());
        self
    }

    /// A counter sample with a fractional value, such as CPU seconds.
    pub fn counter_f64(&mut self, labels: Labels<'_>, value: f64) -> &mut Self {
        self.line("_total", labels, None, &float(value));
        self
    }

    pub fn gauge(&mut self, labels: Labels<'_>, value: f64) -> &mut Self {
        self.line("", labels, None, &float(value));
        self
    }

    /// A histogram: cumulative counts per upper bound (seconds), `+Inf`
    /// last, the sum in seconds.
    pub fn histogram(
        &mut self,
        labels: Labels<'_>,
        h: &crate::metrics::HistogramSnapshot,
    ) -> &mut Self {
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = match h.bounds.get(i) {
                Some(b) => float_le(*b),
                None => "+Inf".to_string(),
            };
            self.line(
                "_bucket",
                labels,
                Some(("le", &le)),
                &cumulative.to_string(),
            );
        }
        self.line("_sum", labels, None, &float(h.sum));
        self.line("_count", labels, None, &cumulative.to_string());
        self
    }

    /// The text, with OpenMetrics' `# EOF`.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A sample value: integers without a fraction, `NaN` and `±Inf` spelled
/// as both formats want.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A bucket bound, always with a fraction (`1.0`), as OpenMetrics
/// canonical form asks.
fn float_le(v: f64) -> String {
    format!("{v:?}")
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn negotiates_openmetrics_only_when_asked() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
    }

    #[test]
    fn counter_type_line_differs_by_format_and_openmetrics_ends_with_eof() {
        for (format, typed) in [
            (Format::Prometheus, "# TYPE x_requests_total counter"),
            (Format::OpenMetrics, "# TYPE x_requests counter"),
        ] {
            let mut e = Exposition::new(format);
            e.family("x_requests", "Requests.", Kind::Counter)
                .counter(&[("code", "200")], 7);
            let text = e.finish();
            assert!(text.contains(typed), "{text}");
            assert!(
                text.contains("x_requests_total{code=\"200\"} 7\n"),
                "{text}"
            );
            assert_eq!(text.ends_with("# EOF\n"), format == Format::OpenMetrics);
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new(Format::Prometheus);
        e.family("g", "a \\ b\nc", Kind::Gauge)
            .gauge(&[("v", "q\"u\\o\nte")], 1.5);
        let text = e.finish();
        assert!(text.contains("# HELP g a \\\\ b\\nc\n"), "{text}");
        assert!(text.contains("g{v=\"q\\\"u\\\\o\\nte\"} 1.5\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let h = Histogram::new(&[0.001, 0.01, 1.0]);
        for ms in [0.5, 2.0, 3.0, 500.0, 5000.0] {
            h.observe(std::time::Duration::from_secs_f64(ms / 1000.0));
        }
        let mut e = Exposition::new(Format::OpenMetrics);
        e.family("d_seconds", "Durations.", Kind::Histogram)
            .histogram(&[("u", "a")], &h.snapshot());
        let text = e.finish();
        for line in [
            "d_seconds_bucket{u=\"a\",le=\"0.001\"} 1\n",
            "d_seconds_bucket{u=\"a\",le=\"0.01\"} 3\n",
            "d_seconds_bucket{u=\"a\",le=\"1.0\"} 4\n",
            "d_seconds_bucket{u=\"a\",le=\"+Inf\"} 5\n",
            "d_seconds_count{u=\"a\"} 5\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("d_seconds_sum{u=\"a\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 5.5055).abs() < 1e-6, "{sum}");
    }
}
