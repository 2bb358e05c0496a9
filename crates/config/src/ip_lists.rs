//! `[ip_lists.NAME]`: lists of networks kept in files (one CIDR per line),
//! used by routes as `deny = ["@NAME"]` or `allow = ["@NAME"]`, and read
//! again when the file changes.

use std::path::{Path, PathBuf};

use crate::cidr::Cidr;
use crate::diag::Sink;
use crate::read::{is_name, missing, Obj};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpList {
    pub name: String,
    pub file: PathBuf,
}

pub(crate) fn ip_lists(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>, base_dir: &Path) -> Vec<IpList> {
    let mut out = Vec::new();
    let Some(lists) = top.sub(sink, "ip_lists") else {
        return out;
    };
    for (k, v) in lists.table.iter() {
        let name: &str = k.get_ref().as_ref();
        let path = format!("ip_lists.{name}");
        if !is_name(name) {
            sink.error(
                &k.span(),
                &path,
                format!("{name:?} is not a valid list name: use letters, digits, '-', '_' and '.'"),
            );
        }
        let Some(mut o) = Obj::new(sink, v, &path) else {
            continue;
        };
        let file = o.str(sink, "file");
        o.finish(sink);
        let Some((file, span)) = file else {
            missing(sink, &v.span(), &path, "file");
            continue;
        };
        let file = base_dir.join(file);
        match read_list(&file) {
            Ok((_, problems)) => {
                for p in problems {
                    sink.warn(&span, &format!("{path}.file"), p);
                }
            }
            Err(e) => sink.error(&span, &format!("{path}.file"), e),
        }
        out.push(IpList {
            name: name.to_string(),
            file,
        });
    }
    out
}

/// Reads a list file: one network per line; blank lines and `#` comments
/// are skipped. A line that is not a network is left out and named in the
/// problems (`FILE:LINE: …`), as is a network with host bits set.
pub fn read_list(file: &Path) -> Result<(Vec<Cidr>, Vec<String>), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {}", file.display(), e.kind()))?;
    let mut nets = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match Cidr::parse(line) {
            Ok((c, fixed)) => {
                if fixed && problems.len() < 20 {
                    problems.push(format!(
                        "{}:{}: {line} has host bits set; read as {c}",
                        file.display(),
                        i + 1
                    ));
                }
                nets.push(c);
            }
            Err(e) => {
                if problems.len() < 20 {
                    problems.push(format!("{}:{}: {e}; line skipped", file.display(), i + 1));
                }
            }
        }
    }
    Ok((nets, problems))
}
