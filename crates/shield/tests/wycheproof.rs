//! Wycheproof's JOSE vectors (`../shared/testdata/jwt-wycheproof/`): every
//! JWS and JWK test gets the verdict the suite expects, and so does every
//! ECDSA P-256 (P1363, the JWS ES256 format), RSA PKCS#1 2048 SHA-256
//! (RS256) and HMAC-SHA256 (HS256, full-length tags) vector run through the
//! same keys. JWE tests are not applicable (no encryption is supported).
//! Prints passed / total.

use centinela_shield::jwt::{Alg, KeySet};
use serde_json::Value;

const ALL: [Alg; 12] = [
    Alg::HS256,
    Alg::HS384,
    Alg::HS512,
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::EdDSA,
];

fn load(name: &str) -> Value {
    let p =
        centinela_testkit::testdata(&format!("jwt-wycheproof/wycheproof/testvectors_v1/{name}"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

use centinela_testkit::b64url as b64;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The verdict on one JWS with a group's keys.
fn jws_verdict(keys: &Value, jws: &Value) -> bool {
    let Some(token) = jws.as_str() else {
        // JSON serialization: only the compact form is accepted.
        return false;
    };
    let Ok((set, _)) = KeySet::from_json(keys.to_string().as_bytes()) else {
        return false;
    };
    set.verify_jws(token.as_bytes(), &ALL).is_ok()
}

#[test]
fn wycheproof_jose_vectors_get_the_expected_verdict() {
    let (mut passed, mut total, mut skipped) = (0, 0, 0);
    let mut failures = Vec::new();
    for file in ["json_web_crypto_test.json", "json_web_key_test.json"] {
        let d = load(file);
        for g in d["testGroups"].as_array().unwrap() {
            let comment = g["comment"].as_str().unwrap_or("");
            if comment.starts_with("jwe") {
                skipped += g["tests"].as_array().unwrap().len();
                continue;
            }
            let keys = g
                .get("public")
                .or_else(|| g.get("private"))
                .cloned()
                .unwrap_or(Value::Null);
            for t in g["tests"].as_array().unwrap() {
                total += 1;
                let want = t["result"] == "valid";
                let got = jws_verdict(&keys, &t["jws"]);
                if got == want {
                    passed += 1;
                } else {
                    failures.push(format!(
                        "{file} #{} {}: want {want}, got {got}",
                        t["tcId"], t["comment"]
                    ));
                }
            }
        }
    }
    println!("Wycheproof JWS/JWK: {passed} / {total} passed ({skipped} JWE tests not applicable)");

    // The primitives under ES256, RS256 and HS256.
    let (mut p2, mut t2) = (0, 0);
    for (file, alg, jwk_field) in [
        (
            "ecdsa_secp256r1_sha256_p1363_test.json",
            Alg::ES256,
            "publicKeyJwk",
        ),
        ("rsa_signature_2048_sha256_test.json", Alg::RS256, "keyJwk"),
    ] {
        let d = load(file);
        for g in d["testGroups"].as_array().unwrap() {
            // Groups of edge-case keys give the point only: made into a JWK.
            let jwk = match g.get(jwk_field) {
                Some(j) if !j.is_null() => j.clone(),
                _ => {
                    let p = hex(g["publicKey"]["uncompressed"].as_str().unwrap());
                    serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
                }
            };
            let set = KeySet::from_json(jwk.to_string().as_bytes())
                .ok()
                .map(|(s, _)| s);
            for t in g["tests"].as_array().unwrap() {
                t2 += 1;
                let want = t["result"] == "valid";
                let got = set
                    .as_ref()
                    .and_then(|s| {
                        s.verify_raw(
                            alg,
                            &hex(t["msg"].as_str().unwrap()),
                            &hex(t["sig"].as_str().unwrap()),
                        )
                    })
                    .unwrap_or(false);
                // "acceptable" vectors may go either way.
                if got == want || t["result"] == "acceptable" {
                    p2 += 1;
                } else {
                    failures.push(format!(
                        "{file} #{} {}: want {want}, got {got}",
                        t["tcId"], t["comment"]
                    ));
                }
            }
        }
    }
    let d = load("hmac_sha256_test.json");
    for g in d["testGroups"].as_array().unwrap() {
        if g["tagSize"] != 256 || g["keySize"].as_u64().unwrap_or(0) < 256 {
            continue;
        }
        for t in g["tests"].as_array().unwrap() {
            t2 += 1;
            let key = hex(t["key"].as_str().unwrap());
            let set = KeySet::new(vec![centinela_shield::jwt::Key::secret(&key)]);
            let got = set
                .verify_raw(
                    Alg::HS256,
                    &hex(t["msg"].as_str().unwrap()),
                    &hex(t["tag"].as_str().unwrap()),
                )
                .unwrap_or(false);
            if got == (t["result"] == "valid") {
                p2 += 1;
            } else {
                failures.push(format!("hmac #{} {}", t["tcId"], t["comment"]));
            }
        }
    }
    println!("Wycheproof ES256/RS256/HS256 primitives: {p2} / {t2} passed");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total > 50 && t2 > 400, "{total} {t2}");
}
