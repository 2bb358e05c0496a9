//! The dashboard: `GET /` on the admin listener. Every file is embedded in
//! the binary (it must work on a server with no Internet): a page, its
//! script and style, and uPlot (MIT, `ui/vendor/`) for the charts. The
//! script reads the admin API: `/-/overview` (the detailed health, the
//! alerts and the services in one answer) every 2 s and `/-/history` every
//! 10 s.

/// The page asking for the admin token, answered with 401 to a browser
/// without the cookie (`[admin] token`).
pub const LOGIN: (&str, &[u8]) = (HTML, include_bytes!("../ui/login.html"));

/// The login page is one static file with its script inline, and nothing
/// else may run or load.
pub const LOGIN_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard loads only its own files and talks only to its own
/// origin; uPlot sizes its elements with style attributes.
pub const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The file served at `path`, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => (HTML, include_bytes!("../ui/index.html")),
        "/-/ui/app.js" => (JS, include_bytes!("../ui/app.js")),
        "/-/ui/app.css" => (CSS, include_bytes!("../ui/app.css")),
        "/-/ui/uPlot.iife.min.js" => (JS, include_bytes!("../ui/vendor/uPlot.iife.min.js")),
        "/-/ui/uPlot.min.css" => (CSS, include_bytes!("../ui/vendor/uPlot.min.css")),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page names is served: nothing comes from elsewhere.
    #[test]
    fn the_page_names_only_embedded_files() {
        let (_, page) = asset("/").unwrap();
        let page = std::str::from_utf8(page).unwrap();
        let mut named = 0;
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let url = &part[..part.find('"').unwrap()];
                if url.starts_with("data:") {
                    continue;
                }
                assert!(asset(url).is_some(), "{url} is not embedded");
                named += 1;
            }
        }
        assert_eq!(named, 4);
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(asset("/-/ui/../../etc/passwd").is_none());
    }
}
