//! TLS settings shared by the sections that open TLS connections (probes,
//! notifiers): the CA file to trust instead of the system's roots.

use std::path::{Path, PathBuf};

use crate::diag::Sink;
use crate::read::Obj;

/// `KEY = "PATH"` (relative to the config file's directory): a PEM file
/// with at least one certificate and nothing malformed.
pub(crate) fn ca_file(
    sink: &mut Sink<'_>,
    o: &mut Obj<'_, '_>,
    key: &'static str,
    base_dir: &Path,
) -> Option<(PathBuf, std::ops::Range<usize>)> {
    let (file, span) = o.str(sink, key)?;
    let path = base_dir.join(file);
    match read_certs(&path) {
        Ok(()) => Some((path, span)),
        Err(e) => {
            sink.error(&span, &o.child_path(key), e);
            None
        }
    }
}

fn read_certs(path: &Path) -> Result<(), String> {
    use rustls_pki_types::pem::{Error, PemObject};
    use rustls_pki_types::CertificateDer;
    let what = |e: Error| match e {
        Error::Io(e) => format!("cannot read {}: {}", path.display(), e.kind()),
        e => format!("{} is not a valid PEM file ({e:?})", path.display()),
    };
    let mut n = 0;
    for c in CertificateDer::pem_file_iter(path).map_err(what)? {
        c.map_err(what)?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(())
}
