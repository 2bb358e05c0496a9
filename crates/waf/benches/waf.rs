//! The engine's cost per request at PL1 with the real CRS, alone (release,
//! one thread): a typical API GET (path, 3 query arguments, 10 headers) and
//! a 2 KB JSON POST; and the worst cases at PL2, one 128 KiB form value of
//! quotes and parentheses or of SQL keywords (warm: the regexes' lazy DFAs
//! built by earlier requests; `tests/crs.rs` times the first, cold one).
//! `bench/waf.sh` measures the same through the proxy.
//!
//!     cargo bench -p centinela-waf --bench waf
//!     WAF_BENCH_ONLY=api_get WAF_BENCH_N=20000 cargo bench -p centinela-waf --bench waf

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let dir = centinela_testkit::testdata("waf-crs-rules");
    let files =
        centinela_waf::files(&[dir.join("crs-setup.conf.example"), dir.join("rules/*.conf")])
            .expect("CRS files");
    let t = Instant::now();
    let set = centinela_waf::load(&files).expect("CRS loads");
    let waf = centinela_waf::Waf::new(set.clone(), Default::default());
    let pl2 = centinela_waf::Waf::new(
        set,
        centinela_waf::Settings {
            paranoia: 2,
            ..Default::default()
        },
    );
    println!(
        "load_and_compile_crs: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let headers: Vec<(&[u8], &[u8])> = vec![
        (b"Host", b"shop.example.com"),
        (
            b"User-Agent",
            b"Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        ),
        (b"Accept", b"application/json, text/plain, */*"),
        (b"Accept-Language", b"es-ES,es;q=0.9,en;q=0.8"),
        (b"Accept-Encoding", b"gzip, deflate, br"),
        (b"Referer", b"https://shop.example.com/catalogo?page=1"),
        (
            b"Cookie",
            b"session=3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c; lang=es",
        ),
        (
            b"Authorization",
            b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl",
        ),
        (b"X-Request-Id", b"4bf92f3577b34da6a3ce929d0e0e4736"),
        (b"Connection", b"keep-alive"),
    ];
    let get = centinela_waf::Request {
        method: b"GET",
        target: b"/api/products?q=zapatillas%20de%20running&page=2&sort=price_asc",
        protocol: b"HTTP/1.1",
        headers: headers.clone(),
        body: b"",
        body_truncated: false,
        remote_addr: "203.0.113.7".parse().unwrap(),
        unique_id: "bench",
    };
    let mut json = String::from("{\"items\":[");
    let mut i = 0;
    while json.len() < 1900 {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "{{\"sku\":\"ZP-{i:04}\",\"name\":\"Zapatilla \\\"Trail\\\" talla {}\",\"description\":\"Suela de goma, malla transpirable; ideal para montaña.\",\"qty\":{}}}",
            36 + i % 10,
            1 + i % 3
        ));
        i += 1;
    }
    json.push_str("],\"coupon\":\"INVIERNO-10\"}");
    let mut post_headers = headers.clone();
    post_headers.push((b"Content-Type", b"application/json"));
    let post = centinela_waf::Request {
        method: b"POST",
        target: b"/api/orders",
        body: json.as_bytes(),
        headers: post_headers,
        ..get.clone()
    };
    let only = std::env::var("WAF_BENCH_ONLY").unwrap_or_default();
    for (name, req) in [("api_get", &get), ("json_post_2kb", &post)] {
        if !only.is_empty() && only != name {
            continue;
        }
        let out = waf.inspect(req);
        assert!(out.block.is_none(), "{name}: {:?}", out.matched);
        for _ in 0..200 {
            black_box(waf.inspect(req));
        }
        let n: u32 = std::env::var("WAF_BENCH_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(3_000);
        let t = Instant::now();
        for _ in 0..n {
            black_box(waf.inspect(black_box(req)));
        }
        println!(
            "waf_pl1_{name}: {:.1} µs a request (body {} bytes)",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n),
            req.body.len()
        );
    }

    // The worst cases (PL2): one 128 KiB form value of pathological input.
    let mut form_headers = headers.clone();
    form_headers.push((b"Content-Type", b"application/x-www-form-urlencoded"));
    let mut quotes = b"q=".to_vec();
    quotes.extend(std::iter::repeat_n(b"'(".as_slice(), 65_535).flatten());
    let mut keywords = b"q=".to_vec();
    while keywords.len() < 131_072 {
        keywords.extend_from_slice(b"select+union+or+and+");
    }
    // And the most values a body may hold (1,000; more is refused), each
    // of 128 bytes of the same.
    let mut many = Vec::new();
    for i in 0..1000 {
        if i > 0 {
            many.push(b'&');
        }
        many.extend_from_slice(format!("q{i}=").as_bytes());
        many.extend(std::iter::repeat_n(b"'(union+select".as_slice(), 9).flatten());
    }
    for (name, body) in [
        ("quotes_128kib", &quotes),
        ("sql_keywords_128kib", &keywords),
        ("1000_values_128kib", &many),
    ] {
        if !only.is_empty() && only != name {
            continue;
        }
        let req = centinela_waf::Request {
            method: b"POST",
            target: b"/api/products",
            body,
            headers: form_headers.clone(),
            ..get.clone()
        };
        let n: u32 = std::env::var("WAF_BENCH_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20);
        let t = Instant::now();
        for _ in 0..n {
            black_box(pl2.inspect(black_box(&req)));
        }
        println!(
            "waf_pl2_worst_{name}: {:.1} ms a request (body {} bytes)",
            t.elapsed().as_secs_f64() * 1e3 / f64::from(n),
            body.len()
        );
    }
}
