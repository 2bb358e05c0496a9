//! Micro-benchmarks of the shield's per-request costs (run by
//! `bench/shield.sh`, never by the tests): a rate-limit check, an IP list
//! lookup with 100,000 networks, and the memory of 1 million rate-limit
//! keys. Prints one line per figure.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use centinela_config::Cidr;
use centinela_shield::iptree::IpSet;
use centinela_shield::rate::{Local, Shape, Store};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

use centinela_testkit::b64url as b64;

/// A whole `Auth::verify` of an ES256 token (parse, signature, claims).
fn jwt_es256() {
    use centinela_shield::jwt::{Alg, Auth, KeySet, TokenFrom};
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let p = key.public_key().as_ref();
    let jwk = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","x":"{}","y":"{}"}}]}}"#,
        b64(&p[1..33]),
        b64(&p[33..65])
    );
    let (set, _) = KeySet::from_json(jwk.as_bytes()).unwrap();
    let now = 1_800_000_000i64;
    let msg = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
        b64(format!(
            r#"{{"iss":"https://auth","aud":"api","sub":"user-42","role":"admin","exp":{}}}"#,
            now + 600
        )
        .as_bytes())
    );
    let sig = key.sign(&rng, msg.as_bytes()).unwrap();
    let token = format!("{msg}.{}", b64(sig.as_ref()));
    let auth = Auth::new(
        "bench",
        vec![Alg::ES256],
        Some("https://auth".into()),
        Some("api".into()),
        Duration::from_secs(30),
        true,
        TokenFrom::Bearer,
        Vec::new(),
        set,
    );
    let mut h = http::HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    // First sight of each token: the signature is checked.
    let n = 2_000;
    let tokens: Vec<http::HeaderMap> = (0..n)
        .map(|i| {
            let msg = format!(
                "{}.{}",
                b64(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
                b64(format!(
                    r#"{{"iss":"https://auth","aud":"api","sub":"user-{i}","exp":{}}}"#,
                    now + 600
                )
                .as_bytes())
            );
            let sig = key.sign(&rng, msg.as_bytes()).unwrap();
            let mut h = http::HeaderMap::new();
            h.insert(
                "authorization",
                format!("Bearer {msg}.{}", b64(sig.as_ref()))
                    .parse()
                    .unwrap(),
            );
            h
        })
        .collect();
    let t = Instant::now();
    for h in &tokens {
        black_box(auth.verify(h, now).unwrap());
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "jwt_verify_es256_new_token: {per:.1} µs (parse, ECDSA P-256 signature with ring, claims)"
    );
    // Traffic as clients send it: each token for several requests (here
    // 10, far fewer than a token's usual life), interleaved.
    let fresh: Vec<http::HeaderMap> = tokens
        .iter()
        .map(|h| {
            // Tokens not yet seen: the same claims re-signed.
            let v = h["authorization"].to_str().unwrap();
            let msg = v["Bearer ".len()..].rsplit_once('.').unwrap().0;
            let sig = key.sign(&rng, msg.as_bytes()).unwrap();
            let mut h = http::HeaderMap::new();
            h.insert(
                "authorization",
                format!("Bearer {msg}.{}", b64(sig.as_ref()))
                    .parse()
                    .unwrap(),
            );
            h
        })
        .collect();
    let t = Instant::now();
    for _ in 0..10 {
        for h in &fresh {
            black_box(auth.verify(h, now).unwrap());
        }
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(n * 10);
    println!("jwt_verify_es256_10_requests_per_token: {per:.1} µs per request");
    // A token seen before (a client's next requests): claims only.
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        black_box(auth.verify(&h, now).unwrap());
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("jwt_verify_es256_known_token: {per:.2} µs (the verified-token cache, claims checked again)");
}

fn main() {
    jwt_es256();
    let mut rng = fastrand::Rng::with_seed(42);

    // Rate limit: 1 million distinct client addresses, then checks of
    // random ones among them (the worst case for caches).
    let before = rss_kib();
    let limit = Local::new(
        Shape {
            capacity: 2000,
            window: Duration::from_secs(300),
        },
        1_000_000,
    );
    let keys: Vec<u128> = (0..1_000_000u32)
        .map(|i| {
            u128::from(
                Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)))
                    .to_ipv6_mapped(),
            )
        })
        .collect();
    let t = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        limit.hit(*k, Duration::from_millis(i as u64 / 1000));
    }
    let fill = t.elapsed();
    let after = rss_kib();
    println!(
        "rate_limit_1m_keys: {} keys, maps {:.1} MiB, RSS +{:.1} MiB ({} bytes/key), filled in {:.0} ms",
        limit.len(),
        limit.bytes() as f64 / 1048576.0,
        (after - before) as f64 / 1024.0 - keys.len() as f64 * 16.0 / 1048576.0,
        limit.bytes() / limit.len().max(1),
        fill.as_secs_f64() * 1000.0
    );
    let n = 2_000_000;
    let picks: Vec<u128> = (0..n).map(|_| keys[rng.usize(..keys.len())]).collect();
    let t = Instant::now();
    for (i, k) in picks.iter().enumerate() {
        black_box(limit.hit(*k, Duration::from_millis(1000 + i as u64 / 1000)));
    }
    let per = t.elapsed().as_nanos() as f64 / n as f64;
    println!("rate_limit_check_random_key_1m: {per:.0} ns");
    let t = Instant::now();
    for i in 0..n {
        black_box(limit.hit(keys[7], Duration::from_millis(1000 + i as u64 / 1000)));
    }
    let per = t.elapsed().as_nanos() as f64 / n as f64;
    println!("rate_limit_check_same_key: {per:.0} ns");

    // IP list: 100,000 networks (most /32, some /24 and /16, IPv6 /48s).
    let mut nets = Vec::new();
    for _ in 0..100_000 {
        let c = match rng.u8(..10) {
            0 => Cidr::new(IpAddr::V4(Ipv4Addr::from(rng.u32(..))), 24),
            1 => Cidr::new(IpAddr::V4(Ipv4Addr::from(rng.u32(..))), 16),
            2 => Cidr::new(
                IpAddr::V6((0x2001_0db8u128 << 96 | u128::from(rng.u64(..)) << 32).into()),
                48,
            ),
            _ => Cidr::new(IpAddr::V4(Ipv4Addr::from(rng.u32(..))), 32),
        };
        nets.push(c);
    }
    let before = rss_kib();
    let t = Instant::now();
    let set = IpSet::new(&nets);
    let built = t.elapsed();
    let after = rss_kib();
    let probes: Vec<IpAddr> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                nets[rng.usize(..nets.len())].addr
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
            }
        })
        .collect();
    let t = Instant::now();
    let mut hits = 0;
    for p in &probes {
        hits += usize::from(black_box(set.contains(*p)));
    }
    let per = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "ip_list_lookup_100k: {per:.0} ns ({hits} of {n} in the list), built in {:.0} ms, RSS +{:.1} MiB",
        built.as_secs_f64() * 1000.0,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
}
