//! JWT authentication: compact JWS tokens verified with `ring`, keys from a
//! JWK set (a file or a URL, fetched by the gateway) or a shared secret.
//!
//! What is refused, and why (RFC 7515, 7517, 7518, 8725, and Wycheproof's
//! JOSE vectors):
//! - anything but three base64url parts (no padding, no JSON
//!   serialization), an `alg` not in the configured list (`none` never is),
//!   a `crit` header (no extension is understood);
//! - a key of the wrong type or size for the token's `alg`: HMAC keys at
//!   least as long as the hash, RSA keys of 2048 bits or more with a sane
//!   exponent and no ROCA fingerprint, P-256 for ES256, P-384 for ES384,
//!   Ed25519 for EdDSA; a key whose own `alg` differs from the token's, or
//!   whose `use` is not `sig`;
//! - a key set that mixes secret and public keys, holds private key
//!   material, or gives two keys the same `kid`;
//! - keys carried in the token itself (`jwk`, `jku`, `x5u`): never read.
//!
//! Claims: `exp`, `nbf` and `iat` checked with `leeway`, `iss` and `aud`
//! when configured.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// The algorithms a token may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }
}

/// A verification key.
#[derive(Clone, Debug)]
enum Material {
    Hmac(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`).
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Key {
    kid: Option<String>,
    /// The key's own `alg`, if it names one.
    alg: Option<Alg>,
    material: Material,
}

impl Key {
    /// A shared secret for HS* (`secret = …`).
    pub fn secret(bytes: &[u8]) -> Key {
        Key {
            kid: None,
            alg: None,
            material: Material::Hmac(bytes.to_vec()),
        }
    }

    /// Can this key verify `alg` at all (type and size)?
    fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Hmac(k), Alg::HS256) => k.len() >= 32,
            (Material::Hmac(k), Alg::HS384) => k.len() >= 48,
            (Material::Hmac(k), Alg::HS512) => k.len() >= 64,
            (
                Material::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512,
            ) => true,
            (Material::Ec { p384: false, .. }, Alg::ES256) => true,
            (Material::Ec { p384: true, .. }, Alg::ES384) => true,
            (Material::Ed25519(_), Alg::EdDSA) => true,
            _ => false,
        }
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(k) => {
                let a = match alg {
                    Alg::HS256 => ring::hmac::HMAC_SHA256,
                    Alg::HS384 => ring::hmac::HMAC_SHA384,
                    _ => ring::hmac::HMAC_SHA512,
                };
                ring::hmac::verify(&ring::hmac::Key::new(a, k), msg, sig).is_ok()
            }
            Material::Rsa { n, e } => {
                let params = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Material::Ec { p384, point } => {
                let a = if *p384 {
                    &signature::ECDSA_P384_SHA384_FIXED
                } else {
                    &signature::ECDSA_P256_SHA256_FIXED
                };
                UnparsedPublicKey::new(a, point).verify(msg, sig).is_ok()
            }
            Material::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
        }
    }
}

/// Base64url without padding (RFC 7515 §2), strictly: any other byte, a
/// length no encoding has, or stray low bits are errors.
pub fn b64url(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | val(c)?;
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]),
            3 => {
                if acc & 0b11 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            2 => {
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A set of keys, as a JWKS document or a secret gives them.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// The small primes of the ROCA fingerprint test (Nemec et al., 2017): a
/// modulus made by the vulnerable library is, modulo each, a power of
/// 65537.
const ROCA_PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

fn roca(n: &[u8]) -> bool {
    ROCA_PRIMES.iter().all(|&p| {
        let r = n
            .iter()
            .fold(0u32, |acc, &b| (acc * 256 + u32::from(b)) % p);
        // The powers of 65537 mod p.
        let g = 65537 % p;
        let mut x = 1 % p;
        for _ in 0..p {
            if x == r {
                return true;
            }
            x = x * g % p;
        }
        false
    })
}

fn strip_zeros(b: Vec<u8>) -> Vec<u8> {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[first..].to_vec()
}

impl KeySet {
    pub fn new(keys: Vec<Key>) -> KeySet {
        KeySet { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads a JWK set (`{"keys": [...]}`) or a single JWK. Keys that are
    /// not for verifying signatures (`use` other than `sig`, `key_ops`
    /// without `verify`, an `alg` that is not a signature algorithm this
    /// verifier knows, or that does not fit the key) are left out, with the
    /// reason in `skipped`. A set that holds private key material, mixes
    /// secret and public keys, or repeats a `kid` is refused whole.
    pub fn from_json(text: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = match v.get("keys") {
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err("\"keys\" is not an array".into()),
            None if v.get("kty").is_some() => vec![v],
            None => return Err("neither a JWK set (\"keys\") nor a JWK (\"kty\")".into()),
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        let mut kids = HashSet::new();
        for (i, k) in list.iter().enumerate() {
            let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
            let name = kid.clone().unwrap_or_else(|| format!("key {i}"));
            if let Some(kid) = &kid {
                if !kids.insert(kid.clone()) {
                    return Err(format!("two keys have kid {kid:?}"));
                }
            }
            let kty = k.get("kty").and_then(Value::as_str).unwrap_or("");
            let private = ["d", "p", "q", "dp", "dq", "qi"]
                .iter()
                .any(|f| k.get(f).is_some());
            if private && kty != "oct" {
                return Err(format!(
                    "{name} holds private key material: publish public keys only"
                ));
            }
            match parse_jwk(k) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("{name}: {why}")),
            }
        }
        let secret = keys
            .iter()
            .filter(|k| matches!(k.material, Material::Hmac(_)))
            .count();
        if secret > 0 && secret < keys.len() {
            return Err("the set mixes secret (oct) and public keys".into());
        }
        Ok((KeySet { keys }, skipped))
    }

    /// Verifies a compact JWS against these keys for the allowed
    /// algorithms: its payload, or why not.
    pub fn verify_jws(&self, token: &[u8], allowed: &[Alg]) -> Result<Vec<u8>, Failure> {
        let mut parts = token.split(|&b| b == b'.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed);
        };
        let header = b64url(h64).ok_or(Failure::Malformed)?;
        let payload = b64url(p64).ok_or(Failure::Malformed)?;
        let sig = b64url(s64).ok_or(Failure::Malformed)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| Failure::Malformed)?;
        if header.contains_key("crit") || header.get("b64").is_some() {
            return Err(Failure::Malformed);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::parse)
            .filter(|a| allowed.contains(a))
            .ok_or(Failure::Algorithm)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(Failure::Malformed),
        };
        let msg = &token[..h64.len() + 1 + p64.len()];
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.fits(alg))
            .peekable();
        if candidates.peek().is_none() {
            return Err(Failure::UnknownKey);
        }
        if candidates.any(|k| k.verify(alg, msg, &sig)) {
            Ok(payload)
        } else {
            Err(Failure::Signature)
        }
    }

    /// Verifies a bare signature over `msg` with the first key that fits
    /// `alg` (the primitive under JWS; for test vectors).
    pub fn verify_raw(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> Option<bool> {
        let k = self.keys.iter().find(|k| k.fits(alg))?;
        Some(k.verify(alg, msg, sig))
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn field(k: &Value, name: &str) -> Result<Vec<u8>, String> {
    let s = k
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no \"{name}\""))?;
    b64url(s.as_bytes()).ok_or_else(|| format!("\"{name}\" is not base64url"))
}

fn parse_jwk(k: &Value) -> Result<Key, String> {
    if let Some(u) = k.get("use") {
        if u != "sig" {
            return Err(format!("use {u} is not sig"));
        }
    }
    if let Some(ops) = k.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o == "verify"));
        if !verify {
            return Err("key_ops does not include verify".into());
        }
    }
    let alg =
        match k.get("alg") {
            None => None,
            Some(Value::String(a)) => Some(Alg::parse(a).ok_or_else(|| {
                format!("alg {a} is not a signature algorithm this verifier knows")
            })?),
            Some(_) => return Err("alg is not a string".into()),
        };
    let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
    let kty = k.get("kty").and_then(Value::as_str).unwrap_or("");
    let material = match kty {
        "oct" => {
            let key = field(k, "k")?;
            if key.is_empty() {
                return Err("empty key".into());
            }
            Material::Hmac(key)
        }
        "RSA" => {
            let n = strip_zeros(field(k, "n")?);
            let e = strip_zeros(field(k, "e")?);
            if n.len() * 8 < 2048 || n.len() > 1024 {
                return Err(format!(
                    "an RSA key of {} bits (2048 to 8192 are accepted)",
                    n.len() * 8
                ));
            }
            let e_val = e.iter().fold(0u64, |a, &b| {
                a.saturating_mul(256).saturating_add(u64::from(b))
            });
            if e.len() > 4 || e_val < 3 || e_val % 2 == 0 {
                return Err("an RSA public exponent that is not odd and at least 3".into());
            }
            if roca(&n) {
                return Err(
                    "an RSA key with the ROCA fingerprint (CVE-2017-15361): weak, replace it"
                        .into(),
                );
            }
            Material::Rsa { n, e }
        }
        "EC" => {
            let crv = k.get("crv").and_then(Value::as_str).unwrap_or("");
            let (p384, len) = match crv {
                "P-256" => (false, 32),
                "P-384" => (true, 48),
                _ => return Err(format!("curve {crv:?} is not P-256 or P-384")),
            };
            let (x, y) = (field(k, "x")?, field(k, "y")?);
            if x.len() != len || y.len() != len {
                return Err(format!("coordinates of {crv} are {len} bytes"));
            }
            let mut point = vec![4];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::Ec { p384, point }
        }
        "OKP" => {
            let crv = k.get("crv").and_then(Value::as_str).unwrap_or("");
            if crv != "Ed25519" {
                return Err(format!("curve {crv:?} is not Ed25519"));
            }
            let x = field(k, "x")?;
            if x.len() != 32 {
                return Err("an Ed25519 key is 32 bytes".into());
            }
            Material::Ed25519(x)
        }
        other => return Err(format!("key type {other:?} is not oct, RSA, EC or OKP")),
    };
    let key = Key { kid, alg, material };
    if let Some(a) = alg {
        if !key.fits(a) {
            return Err(format!(
                "the key does not fit its own alg {a:?} (type, curve or size)"
            ));
        }
    }
    Ok(key)
}

/// Verified tokens remembered per `[jwt.NAME]` (about 3 MB with typical
/// tokens); when full it is emptied and fills again.
const VERIFIED_CACHE: usize = 10_000;

/// Why a token was refused: logged (never the token), and answered as 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "no token",
            Failure::Malformed => "malformed token",
            Failure::Algorithm => "algorithm not allowed",
            Failure::UnknownKey => "no key for the token",
            Failure::Signature => "bad signature",
            Failure::Expired => "token expired",
            Failure::NotYetValid => "token not valid yet",
            Failure::Issuer => "wrong issuer",
            Failure::Audience => "wrong audience",
        }
    }
}

/// Where the token is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFrom {
    /// `Authorization: Bearer …`.
    Bearer,
    Cookie(String),
}

/// One `[jwt.NAME]`: its settings and keys.
pub struct Auth {
    pub name: String,
    pub algorithms: Vec<Alg>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub require_exp: bool,
    pub token_from: TokenFrom,
    /// `(claim, header)` forwarded upstream; the headers are always
    /// removed from the client's request first.
    pub forward: Vec<(String, http::HeaderName)>,
    keys: ArcSwap<KeySet>,
    /// Tokens whose signature verified, with their claims: a client sends
    /// the same token for its whole life, and a signature check (ECDSA,
    /// RSA) costs tens of microseconds. Only verified tokens go in; the
    /// claims are checked again on every use; emptied when the keys change.
    verified_cache: std::sync::Mutex<std::collections::HashMap<Box<[u8]>, Arc<Claims>>>,
    /// A token named a kid no key has: the JWKS wants fetching again.
    unknown_kid: AtomicBool,
    /// Tokens verified and refused.
    pub verified: AtomicU64,
    pub refused: AtomicU64,
}

/// The claims of a verified token.
pub type Claims = Map<String, Value>;

impl Auth {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        algorithms: Vec<Alg>,
        issuer: Option<String>,
        audience: Option<String>,
        leeway: Duration,
        require_exp: bool,
        token_from: TokenFrom,
        forward: Vec<(String, http::HeaderName)>,
        keys: KeySet,
    ) -> Auth {
        Auth {
            name: name.to_string(),
            algorithms,
            issuer,
            audience,
            leeway,
            require_exp,
            token_from,
            forward,
            keys: ArcSwap::from_pointee(keys),
            verified_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            unknown_kid: AtomicBool::new(false),
            verified: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Replaces the keys (a JWKS fetched again).
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
        self.cache().clear();
    }

    fn cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<[u8]>, Arc<Claims>>> {
        self.verified_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Whether a token named an unknown kid since the last call.
    pub fn take_unknown_kid(&self) -> bool {
        self.unknown_kid.swap(false, Ordering::Relaxed)
    }

    fn token<'h>(&self, h: &'h http::HeaderMap) -> Option<&'h [u8]> {
        match &self.token_from {
            TokenFrom::Bearer => {
                let v = h.get(http::header::AUTHORIZATION)?.as_bytes();
                let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
                scheme
                    .eq_ignore_ascii_case(b"bearer")
                    .then(|| rest.trim_ascii())
            }
            TokenFrom::Cookie(name) => h
                .get_all(http::header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                .find_map(|kv| {
                    let kv = kv.trim_ascii();
                    let eq = kv.iter().position(|&b| b == b'=')?;
                    (&kv[..eq] == name.as_bytes()).then(|| &kv[eq + 1..])
                }),
        }
    }

    /// Verifies the request's token at `now` (Unix seconds): its claims,
    /// or why not.
    pub fn verify(&self, h: &http::HeaderMap, now: i64) -> Result<Claims, Failure> {
        let r = self.check(h, now);
        match &r {
            Ok(_) => self.verified.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.refused.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    fn check(&self, h: &http::HeaderMap, now: i64) -> Result<Claims, Failure> {
        let token = self
            .token(h)
            .filter(|t| !t.is_empty())
            .ok_or(Failure::Missing)?;
        let cached = self.cache().get(token).cloned();
        let claims = match cached {
            Some(c) => c,
            None => {
                let keys = self.keys.load();
                let payload = match keys.verify_jws(token, &self.algorithms) {
                    Err(Failure::UnknownKey) => {
                        self.unknown_kid.store(true, Ordering::Relaxed);
                        return Err(Failure::UnknownKey);
                    }
                    r => r?,
                };
                let claims: Arc<Claims> =
                    Arc::new(serde_json::from_slice(&payload).map_err(|_| Failure::Malformed)?);
                let mut cache = self.cache();
                if cache.len() >= VERIFIED_CACHE {
                    cache.clear();
                }
                cache.insert(token.into(), claims.clone());
                claims
            }
        };
        self.claims_ok(&claims, now)?;
        Ok((*claims).clone())
    }

    /// The claims' times, issuer and audience.
    fn claims_ok(&self, claims: &Claims, now: i64) -> Result<(), Failure> {
        let leeway = self.leeway.as_secs() as i64;
        let time = |name: &str| -> Result<Option<i64>, Failure> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(|f| Some(f.floor() as i64))
                    .ok_or(Failure::Malformed),
            }
        };
        match time("exp")? {
            Some(exp) if now >= exp + leeway => return Err(Failure::Expired),
            None if self.require_exp => return Err(Failure::Expired),
            _ => {}
        }
        if time("nbf")?.is_some_and(|nbf| now + leeway < nbf) {
            return Err(Failure::NotYetValid);
        }
        if time("iat")?.is_some_and(|iat| now + leeway < iat) {
            return Err(Failure::NotYetValid);
        }
        if let Some(want) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(want.as_str()) {
                return Err(Failure::Issuer);
            }
        }
        if let Some(want) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(Failure::Audience);
            }
        }
        Ok(())
    }

    /// Would a fetch help: does the set lack this kid?
    pub fn knows_kid(&self, kid: &str) -> bool {
        self.keys.load().has_kid(kid)
    }
}

/// A claim's value as a header value: strings as they are, numbers and
/// booleans as text, anything else as JSON; `None` if it cannot be one.
pub fn claim_header(v: &Value) -> Option<http::HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    http::HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url(b"Zm9v").unwrap(), b"foo");
        assert_eq!(b64url(b"Zm8").unwrap(), b"fo");
        assert_eq!(b64url(b"Zg").unwrap(), b"f");
        assert_eq!(b64url(b"").unwrap(), b"");
        for bad in [
            &b"Zm9v="[..],
            b"Zm9",
            b"Z",
            b"Zm+v",
            b"Zm/v",
            b"Zh",
            b"Zm9w!",
        ] {
            // "Zm9" is fine as 3 chars only if its low bits are 0 ("Zm8").
            if bad == b"Zm9" {
                assert!(b64url(bad).is_none(), "stray bits");
                continue;
            }
            assert!(b64url(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    fn hmac_token(key: &[u8], header: &str, payload: &str) -> String {
        let enc = centinela_testkit::b64url;
        let msg = format!("{}.{}", enc(header.as_bytes()), enc(payload.as_bytes()));
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            msg.as_bytes(),
        );
        format!("{msg}.{}", enc(tag.as_ref()))
    }

    fn auth(keys: KeySet) -> Auth {
        Auth::new(
            "t",
            vec![Alg::HS256],
            Some("https://auth".into()),
            Some("api".into()),
            Duration::from_secs(30),
            true,
            TokenFrom::Bearer,
            Vec::new(),
            keys,
        )
    }

    fn bearer(t: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        h
    }

    #[test]
    fn claims_are_checked_with_leeway() {
        let key = [7u8; 32];
        let a = auth(KeySet::new(vec![Key::secret(&key)]));
        let now = 1_800_000_000;
        let t = |claims: &str| hmac_token(&key, r#"{"alg":"HS256"}"#, claims);
        let ok = r#"{"iss":"https://auth","aud":"api","exp":1800000100,"sub":"u1"}"#;
        assert_eq!(a.verify(&bearer(&t(ok)), now).unwrap()["sub"], "u1");
        // Expired, within and past the leeway.
        let exp = r#"{"iss":"https://auth","aud":["x","api"],"exp":1799999980}"#;
        assert!(a.verify(&bearer(&t(exp)), now).is_ok());
        assert_eq!(a.verify(&bearer(&t(exp)), now + 30), Err(Failure::Expired));
        let nbf = r#"{"iss":"https://auth","aud":"api","exp":1800009999,"nbf":1800000040}"#;
        assert_eq!(a.verify(&bearer(&t(nbf)), now), Err(Failure::NotYetValid));
        assert!(a.verify(&bearer(&t(nbf)), now + 10).is_ok());
        let no_exp = r#"{"iss":"https://auth","aud":"api"}"#;
        assert_eq!(a.verify(&bearer(&t(no_exp)), now), Err(Failure::Expired));
        let iss = r#"{"iss":"https://evil","aud":"api","exp":1800000100}"#;
        assert_eq!(a.verify(&bearer(&t(iss)), now), Err(Failure::Issuer));
        let aud = r#"{"iss":"https://auth","aud":"web","exp":1800000100}"#;
        assert_eq!(a.verify(&bearer(&t(aud)), now), Err(Failure::Audience));
        // alg none, HS384 (not allowed), a token with four parts, no token.
        let none = hmac_token(&key, r#"{"alg":"none"}"#, ok);
        assert_eq!(a.verify(&bearer(&none), now), Err(Failure::Algorithm));
        assert_eq!(
            a.verify(&bearer(&format!("{}.x", t(ok))), now),
            Err(Failure::Malformed)
        );
        assert_eq!(
            a.verify(&http::HeaderMap::new(), now),
            Err(Failure::Missing)
        );
        // A crit header is not understood.
        let crit = hmac_token(&key, r#"{"alg":"HS256","crit":["exp"]}"#, ok);
        assert_eq!(a.verify(&bearer(&crit), now), Err(Failure::Malformed));
        // A short secret cannot verify HS256.
        let short = auth(KeySet::new(vec![Key::secret(&[7u8; 16])]));
        let st = hmac_token(&[7u8; 16], r#"{"alg":"HS256"}"#, ok);
        assert_eq!(short.verify(&bearer(&st), now), Err(Failure::UnknownKey));
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires_or_the_keys_change() {
        let key = [9u8; 32];
        let a = auth(KeySet::new(vec![Key::secret(&key)]));
        let now = 1_800_000_000;
        let t = hmac_token(
            &key,
            r#"{"alg":"HS256"}"#,
            r#"{"iss":"https://auth","aud":"api","exp":1800000100}"#,
        );
        assert!(a.verify(&bearer(&t), now).is_ok());
        assert_eq!(a.cache().len(), 1);
        assert!(a.verify(&bearer(&t), now).is_ok());
        // The claims are checked on every use.
        assert_eq!(a.verify(&bearer(&t), now + 200), Err(Failure::Expired));
        // New keys: the token no longer verifies.
        a.set_keys(KeySet::new(vec![Key::secret(&[1u8; 32])]));
        assert_eq!(a.verify(&bearer(&t), now), Err(Failure::Signature));
        // Refused tokens are not remembered.
        assert_eq!(a.cache().len(), 0);
    }

    #[test]
    fn key_sets_refuse_mixtures_private_keys_and_repeated_kids() {
        let oct = r#"{"kty":"oct","k":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8","kid":"a"}"#;
        let ec = r#"{"kty":"EC","crv":"P-256","x":"04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY","y":"UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw","kid":"b"}"#;
        assert!(KeySet::from_json(format!(r#"{{"keys":[{oct},{ec}]}}"#).as_bytes()).is_err());
        assert!(KeySet::from_json(format!(r#"{{"keys":[{ec},{ec}]}}"#).as_bytes()).is_err());
        let private = ec.replace(
            "\"kid\"",
            "\"d\":\"yy49oPcINGK2ps0LmtxpB6UTEOiITghHBif6wDqmJ3c\",\"kid\"",
        );
        assert!(KeySet::from_json(format!(r#"{{"keys":[{private}]}}"#).as_bytes()).is_err());
        let (set, skipped) = KeySet::from_json(format!(r#"{{"keys":[{ec}]}}"#).as_bytes()).unwrap();
        assert_eq!((set.len(), skipped.len()), (1, 0));
        // An encryption key is left out, named.
        let enc = ec.replace("\"kid\":\"b\"", "\"kid\":\"c\",\"use\":\"enc\"");
        let (set, skipped) =
            KeySet::from_json(format!(r#"{{"keys":[{ec},{enc}]}}"#).as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(skipped[0].contains("c: use"), "{skipped:?}");
    }
}
