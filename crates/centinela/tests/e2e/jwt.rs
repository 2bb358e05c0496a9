//! JWT authentication (issue #12 §5) through a real gateway, with keys
//! served by a loopback JWKS endpoint that rotates them: 401 with
//! `WWW-Authenticate`, claims forwarded (and forged ones stripped), expiry,
//! audience, algorithm confusion, a refetch on an unknown `kid` (at most
//! once per 30 s), and a rate limit keyed by a claim.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use centinela_testkit::{eventually, Reply, TestServer};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::util::{send, start};

use centinela_testkit::b64url as b64;

/// An ES256 signing key and its JWK.
struct Signer {
    kid: String,
    key: EcdsaKeyPair,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer {
            kid: kid.into(),
            key,
        }
    }

    fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
               "x": b64(&p[1..33]), "y": b64(&p[33..65])})
    }

    fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let msg = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.key.sign(&SystemRandom::new(), msg.as_bytes()).unwrap();
        format!("{msg}.{}", b64(sig.as_ref()))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"iss": "https://auth.test", "aud": "products-api", "sub": sub, "role": "admin",
           "iat": now(), "exp": now() + exp_in})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_claims_forwarded_and_keys_rotated() {
    let k1 = Signer::new("k1");
    let k2 = Signer::new("k2");
    // The JWKS endpoint: serves whatever set is current, counts fetches.
    let jwks = Arc::new(Mutex::new(json!({"keys": [k1.jwk()]}).to_string()));
    let fetches = Arc::new(AtomicU64::new(0));
    let (j, f) = (jwks.clone(), fetches.clone());
    let idp = TestServer::start(Arc::new(move |_| {
        f.fetch_add(1, Ordering::Relaxed);
        Reply::ok(&j.lock().unwrap())
    }))
    .await;
    let backend = TestServer::ok().await;
    let cfg = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[jwt.main]
algorithms = ["ES256"]
issuer = "https://auth.test"
audience = "products-api"
jwks_url = "http://{}/.well-known/jwks.json"
jwks_refresh = "1h"
leeway = "30s"
forward_claims = {{ sub = "X-User-Id", role = "X-User-Role" }}

[[rate_limit]]
name = "per-user"
key = "jwt:sub"
limit = 3
window = "1m"

[[route]]
path_prefix = "/api"
upstream = "app"
auth = "main"
rate_limit = ["per-user"]

[[route]]
upstream = "app"

[upstream.app]
servers = ["{}"]

[runtime]
access_log = false
"#,
        idp.addr, backend.addr
    );
    let gw = start(&cfg).await;
    let c = centinela_testkit::client();
    assert!(
        eventually(Duration::from_secs(10), || async {
            fetches.load(Ordering::Relaxed) >= 1
        })
        .await
    );
    // Let the first fetch's keys be stored.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let t = k1.token(&claims("warmup", 300));
            send(
                &c,
                &gw,
                "GET",
                "/api/x",
                &[("authorization", &format!("Bearer {t}"))],
                "",
            )
            .await
            .status
                == 200
        })
        .await
    );

    // No token: 401, a Bearer challenge without an error code.
    let got = send(&c, &gw, "GET", "/api/x", &[], "").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.header("www-authenticate"), Some("Bearer"));
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["error"], "no token");

    // A good token: the claims go upstream; a forged X-User-Id does not.
    let t = k1.token(&claims("user-1", 300));
    let bearer = format!("Bearer {t}");
    let got = send(
        &c,
        &gw,
        "GET",
        "/api/x",
        &[("authorization", &bearer), ("x-user-id", "admin")],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-x-user-id"), Some("user-1"));
    assert_eq!(got.header("x-echo-x-user-role"), Some("admin"));
    // Routes without auth are open.
    assert_eq!(send(&c, &gw, "GET", "/open", &[], "").await.status, 200);

    // Refused tokens: expired beyond the leeway, another audience, a bad
    // signature, HS256 signed with the public key's bytes, alg none.
    let expired = k1.token(&claims("user-1", -60));
    let mut aud = claims("user-1", 300);
    aud["aud"] = json!("other");
    let other_aud = k1.token(&aud);
    let mut tampered = t.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let pubkey = k1.key.public_key().as_ref().to_vec();
    let hs_msg = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "kid": "k1"}).to_string().as_bytes()),
        b64(claims("root", 300).to_string().as_bytes())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &pubkey),
        hs_msg.as_bytes(),
    );
    let confused = format!("{hs_msg}.{}", b64(tag.as_ref()));
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none"}).to_string().as_bytes()),
        b64(claims("root", 300).to_string().as_bytes())
    );
    for (what, tok, reason) in [
        ("expired", &expired, "token expired"),
        ("audience", &other_aud, "wrong audience"),
        ("tampered", &tampered, "bad signature"),
        ("HS/ES confusion", &confused, "algorithm not allowed"),
        ("alg none", &none, "algorithm not allowed"),
    ] {
        let got = send(
            &c,
            &gw,
            "GET",
            "/api/x",
            &[("authorization", &format!("Bearer {tok}"))],
            "",
        )
        .await;
        assert_eq!(got.status, 401, "{what}");
        assert_eq!(
            got.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["error"], reason, "{what}");
    }

    // A limit keyed by the token's sub: user-1 has used 1 of 3.
    for _ in 0..2 {
        assert_eq!(
            send(&c, &gw, "GET", "/api/x", &[("authorization", &bearer)], "")
                .await
                .status,
            200
        );
    }
    let got = send(&c, &gw, "GET", "/api/x", &[("authorization", &bearer)], "").await;
    assert_eq!(got.status, 429);
    assert_eq!(
        got.header("ratelimit-policy"),
        Some("\"per-user\";q=3;w=60")
    );
    let other = k1.token(&claims("user-2", 300));
    assert_eq!(
        send(
            &c,
            &gw,
            "GET",
            "/api/x",
            &[("authorization", &format!("Bearer {other}"))],
            ""
        )
        .await
        .status,
        200
    );

    // Rotation: the IdP now signs with k2 only. A k2 token names an
    // unknown kid: the set is fetched again, but not sooner than 30 s
    // after the last fetch (jwks_refresh is an hour here).
    *jwks.lock().unwrap() = json!({"keys": [k2.jwk()]}).to_string();
    let before = fetches.load(Ordering::Relaxed);
    let t2 = k2.token(&claims("user-3", 300));
    let b2 = format!("Bearer {t2}");
    let got = send(&c, &gw, "GET", "/api/x", &[("authorization", &b2)], "").await;
    assert_eq!(
        got.status, 401,
        "unknown kid until the set is fetched again"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&got.body).unwrap()["error"],
        "no key for the token"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        before,
        "no refetch within 30 s of the last"
    );
    assert!(
        eventually(Duration::from_secs(45), || async {
            send(&c, &gw, "GET", "/api/x", &[("authorization", &b2)], "")
                .await
                .status
                == 200
        })
        .await,
        "the rotated key is fetched"
    );
    assert_eq!(fetches.load(Ordering::Relaxed), before + 1);
    // The retired key no longer verifies.
    let old = k1.token(&claims("user-4", 300));
    assert_eq!(
        send(
            &c,
            &gw,
            "GET",
            "/api/x",
            &[("authorization", &format!("Bearer {old}"))],
            ""
        )
        .await
        .status,
        401
    );

    // A failed fetch keeps the keys held: the endpoint breaks, reload.
    *jwks.lock().unwrap() = "not json".into();
    gw.reload(centinela_config::parse(&cfg, "t.toml").unwrap().config)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            fetches.load(Ordering::Relaxed) >= before + 2
        })
        .await
    );
    assert_eq!(
        send(&c, &gw, "GET", "/api/x", &[("authorization", &b2)], "")
            .await
            .status,
        200
    );

    let m = centinela_testkit::get(&c, &format!("http://{}/metrics", gw.admin_addr()))
        .await
        .unwrap()
        .text();
    assert!(m.contains("centinela_jwt_keys{jwt=\"main\"} 1"), "{m}");
    assert!(
        m.contains("centinela_refused_total{route=\"/api\",reason=\"unauthorized\"}"),
        "{m}"
    );
    // The token never shows in metrics.
    assert!(!m.contains(&t2[..20]));
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_secret_from_the_environment_verifies_hs256_from_a_cookie() {
    let backend = TestServer::ok().await;
    let dir = centinela_testkit::TempDir::new("jwt-secret");
    let secret = "0123456789abcdef0123456789abcdef-secret";
    std::fs::write(dir.path("jwt.secret"), format!("{secret}\n")).unwrap();
    let cfg = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[jwt.hs]
algorithms = ["HS256"]
secret = "file:{}"
token_from = "cookie:session"

[[route]]
upstream = "app"
auth = "hs"

[upstream.app]
servers = ["{}"]
"#,
        dir.path("jwt.secret").display(),
        backend.addr
    );
    let gw = start(&cfg).await;
    let c = centinela_testkit::client();
    let msg = format!(
        "{}.{}",
        b64(json!({"alg": "HS256"}).to_string().as_bytes()),
        b64(json!({"sub": "s", "exp": now() + 60})
            .to_string()
            .as_bytes())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
        msg.as_bytes(),
    );
    let token = format!("{msg}.{}", b64(tag.as_ref()));
    let cookie = format!("theme=dark; session={token}");
    assert_eq!(
        send(&c, &gw, "GET", "/", &[("cookie", &cookie)], "")
            .await
            .status,
        200
    );
    // The bearer header is not where this one looks.
    assert_eq!(
        send(
            &c,
            &gw,
            "GET",
            "/",
            &[("authorization", &format!("Bearer {token}"))],
            ""
        )
        .await
        .status,
        401
    );
    gw.shutdown(Duration::from_secs(2)).await;
}
