//! Unit tests of every rejection, each transport and its precedence, HS256,
//! RS256 and ES256 (test-only key pairs in `tests/fixtures/`, see its README),
//! and the cookie CSRF check.

use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "!ChangeThisMercureHubJWTSecretKey!";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn authorizer(args: &[&str]) -> Authorizer {
    let mut all = vec!["sse-fanout"];
    all.extend_from_slice(args);
    let cli = Config::parse_from(all).unwrap();
    Authorizer::from_config(&cli.config).unwrap()
}

fn config_error(args: &[&str]) -> ConfigError {
    let mut all = vec!["sse-fanout"];
    all.extend_from_slice(args);
    match Config::parse_from(all) {
        Err(Err(err)) => err,
        other => panic!("expected a ConfigError, got {other:?}"),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        claims,
    )
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn publisher() -> Authorizer {
    authorizer(&["--mercure-publisher-jwt-key", SECRET])
}

fn subscriber() -> Authorizer {
    authorizer(&["--mercure-subscriber-jwt-key", SECRET])
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

fn cookie_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::COOKIE,
        format!("other=1; {COOKIE_NAME}={token}").parse().unwrap(),
    );
    headers
}

fn publish_claims(publish: &[&str]) -> Value {
    json!({"mercure": {"publish": publish}})
}

#[test]
fn publishing_is_open_without_key_or_publish_token() {
    let open = authorizer(&[]);
    assert!(open.publishing_open());
    assert_eq!(
        open.authorize_publish(&HeaderMap::new(), None, &["a"]),
        Ok(())
    );
    assert!(!publisher().publishing_open());
    assert!(!authorizer(&["--publish-token", "t"]).publishing_open());
}

#[test]
fn publish_with_covering_token_on_every_transport() {
    let auth = publisher();
    let token = hs256(&publish_claims(&["accounts", "books/{id}"]));
    let topics = ["accounts", "books/1"];
    assert_eq!(
        auth.authorize_publish(&bearer_headers(&token), None, &topics),
        Ok(())
    );
    let query = format!("x=1&authorization={token}");
    assert_eq!(
        auth.authorize_publish(&HeaderMap::new(), Some(&query), &topics),
        Ok(())
    );
    let auth = authorizer(&[
        "--mercure-publisher-jwt-key",
        SECRET,
        "--mercure-publish-origins",
        "https://app.example.com",
    ]);
    let mut headers = cookie_headers(&token);
    headers.insert(header::ORIGIN, "https://app.example.com".parse().unwrap());
    assert_eq!(auth.authorize_publish(&headers, None, &topics), Ok(()));
    let star = hs256(&publish_claims(&["*"]));
    assert_eq!(
        auth.authorize_publish(&bearer_headers(&star), None, &["anything/at/all"]),
        Ok(())
    );
}

#[test]
fn publish_rejections_say_why() {
    let auth = publisher();
    let covered = |claims: &Value, topics: &[&str]| {
        auth.authorize_publish(&bearer_headers(&hs256(claims)), None, topics)
    };
    assert_eq!(
        auth.authorize_publish(&HeaderMap::new(), None, &["a"]),
        Err(AuthError::MissingToken)
    );
    let err = covered(&publish_claims(&["accounts"]), &["accounts", "accounts/7"]).unwrap_err();
    assert_eq!(
        err,
        AuthError::TopicNotCovered {
            topic: "accounts/7".to_owned()
        }
    );
    assert_eq!(
        err.to_string(),
        "topic accounts/7 not covered by mercure.publish"
    );
    assert_eq!(err.www_authenticate(), "Bearer");
    assert_eq!(
        covered(&json!({"mercure": {"subscribe": ["*"]}}), &["a"]),
        Err(AuthError::NoMercureClaim)
    );
    assert_eq!(
        covered(&json!({"sub": "x"}), &["a"]),
        Err(AuthError::NoMercureClaim)
    );
    assert_eq!(
        covered(&publish_claims(&[]), &["a"]),
        Err(AuthError::TopicNotCovered {
            topic: "a".to_owned()
        })
    );
    assert!(matches!(
        covered(&json!({"mercure": {"publish": "a"}}), &["a"]),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn namespaced_claim_is_accepted() {
    let auth = publisher();
    let token = hs256(&json!({"https://mercure.rocks/": {"publish": ["a"]}}));
    assert_eq!(
        auth.authorize_publish(&bearer_headers(&token), None, &["a"]),
        Ok(())
    );
}

/// Rejections of the token itself, on both roles, with the RFC 6750 challenge.
#[test]
fn bad_tokens_are_invalid_token_on_publish_and_subscribe() {
    let claims = json!({"mercure": {"publish": ["*"], "subscribe": ["*"]}});
    let wrong_key = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret entirely").unwrap(),
        &claims,
    );
    let wrong_alg = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &claims,
    );
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 10);
    let mut future = claims;
    future["nbf"] = json!(now() + 3600);
    let alg_none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", // {"alg":"none","typ":"JWT"}
        "eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdfX0"  // {"mercure":{"publish":["*"]}}
    );
    let cases: Vec<(String, AuthError)> = vec![
        (wrong_key, AuthError::BadSignature),
        (
            wrong_alg,
            AuthError::WrongAlgorithm {
                expected: "HS256".to_owned(),
            },
        ),
        (hs256(&expired), AuthError::Expired),
        (hs256(&future), AuthError::NotYetValid),
        (
            "not-a-jwt".to_owned(),
            AuthError::Malformed("not a JWT (header.payload.signature)".to_owned()),
        ),
    ];
    let both = authorizer(&[
        "--mercure-publisher-jwt-key",
        SECRET,
        "--mercure-subscriber-jwt-key",
        SECRET,
    ]);
    for (token, expected) in cases {
        let headers = bearer_headers(&token);
        let publish = both.authorize_publish(&headers, None, &["a"]).unwrap_err();
        assert_eq!(publish, expected);
        let subscribe = both.authorize_subscribe(&headers, None).unwrap_err();
        assert_eq!(subscribe, expected);
        let challenge = subscribe.www_authenticate();
        let challenge = challenge.to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{challenge}"
        );
        assert!(!challenge.contains(&token), "{challenge}");
    }
    // `alg: none` is never accepted.
    assert!(both
        .authorize_subscribe(&bearer_headers(&alg_none), None)
        .is_err());
    assert!(both
        .authorize_publish(&bearer_headers(&alg_none), None, &["a"])
        .is_err());
    assert_eq!(
        AuthError::Expired.www_authenticate(),
        "Bearer error=\"invalid_token\", error_description=\"token expired\""
    );
}

#[test]
fn exp_is_optional_but_reported() {
    let auth = subscriber();
    let exp = now() + 600;
    let token =
        hs256(&json!({"exp": exp, "mercure": {"subscribe": ["a/{id}"], "payload": {"user": 1}}}));
    let rights = auth
        .authorize_subscribe(&bearer_headers(&token), None)
        .unwrap();
    assert!(!rights.anonymous);
    assert_eq!(
        rights.expires_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
    );
    assert_eq!(rights.payload, Some(json!({"user": 1})));
    assert!(rights.may_receive_private(&["z", "a/7"]));
    assert!(!rights.may_receive_private(&["z"]));
    let token = hs256(&json!({"mercure": {"subscribe": ["a"]}}));
    let rights = auth
        .authorize_subscribe(&bearer_headers(&token), None)
        .unwrap();
    assert_eq!(rights.expires_at, None);
    // A valid token without a mercure claim: public events only.
    let token = hs256(&json!({"sub": "x"}));
    let rights = auth
        .authorize_subscribe(&bearer_headers(&token), None)
        .unwrap();
    assert!(rights.subscribe.is_empty());
    assert!(!rights.may_receive_private(&["a"]));
}

#[test]
fn anonymous_subscribers() {
    let rights = subscriber()
        .authorize_subscribe(&HeaderMap::new(), None)
        .unwrap();
    assert!(rights.anonymous);
    assert!(!rights.may_receive_private(&["a"]));
    let closed = authorizer(&[
        "--mercure-subscriber-jwt-key",
        SECRET,
        "--mercure-anonymous",
        "false",
    ]);
    let err = closed
        .authorize_subscribe(&HeaderMap::new(), None)
        .unwrap_err();
    assert_eq!(err, AuthError::AnonymousNotAllowed);
    assert_eq!(
        err.to_string(),
        "no token and anonymous subscribers are not allowed"
    );
    assert_eq!(err.www_authenticate(), "Bearer");
    // A token without a subscriber key is refused, not ignored.
    let token = hs256(&json!({"mercure": {"subscribe": ["*"]}}));
    assert!(matches!(
        authorizer(&[]).authorize_subscribe(&bearer_headers(&token), None),
        Err(AuthError::NoKey { .. })
    ));
}

#[test]
fn header_beats_query_beats_cookie() {
    let auth = subscriber();
    let header_token = hs256(&json!({"mercure": {"subscribe": ["from-header"]}}));
    let query_token = hs256(&json!({"mercure": {"subscribe": ["from-query"]}}));
    let cookie_token = hs256(&json!({"mercure": {"subscribe": ["from-cookie"]}}));
    let selectors = |headers: &HeaderMap, query: Option<&str>| {
        auth.authorize_subscribe(headers, query)
            .unwrap()
            .subscribe
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let query = format!("topic=a&authorization={query_token}");
    let mut all = cookie_headers(&cookie_token);
    all.insert(
        header::AUTHORIZATION,
        format!("Bearer {header_token}").parse().unwrap(),
    );
    assert_eq!(selectors(&all, Some(&query)), ["from-header"]);
    let cookie = cookie_headers(&cookie_token);
    assert_eq!(selectors(&cookie, Some(&query)), ["from-query"]);
    assert_eq!(selectors(&cookie, Some("topic=a")), ["from-cookie"]);
    // A non-Bearer Authorization header is not a token.
    let mut basic = cookie_headers(&cookie_token);
    basic.insert(header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
    assert_eq!(selectors(&basic, None), ["from-cookie"]);
    // A bad header token is refused even when the cookie is good.
    all.insert(header::AUTHORIZATION, "Bearer garbage".parse().unwrap());
    assert!(auth.authorize_subscribe(&all, None).is_err());
}

#[test]
fn cookie_publish_needs_an_allowed_origin() {
    let auth = authorizer(&[
        "--mercure-publisher-jwt-key",
        SECRET,
        "--mercure-publish-origins",
        "https://app.example.com, http://localhost:3001",
    ]);
    let token = hs256(&publish_claims(&["*"]));
    let with = |name: header::HeaderName, value: &str| {
        let mut headers = cookie_headers(&token);
        headers.insert(name, value.parse().unwrap());
        auth.authorize_publish(&headers, None, &["a"])
    };
    assert_eq!(with(header::ORIGIN, "http://localhost:3001"), Ok(()));
    assert_eq!(
        with(header::REFERER, "https://app.example.com/page?x=1"),
        Ok(())
    );
    assert_eq!(
        with(header::ORIGIN, "https://evil.example.com"),
        Err(AuthError::CookieFromForeignOrigin {
            origin: "https://evil.example.com".to_owned()
        })
    );
    assert_eq!(
        with(header::REFERER, "https://evil.example.com/x"),
        Err(AuthError::CookieFromForeignOrigin {
            origin: "https://evil.example.com".to_owned()
        })
    );
    assert_eq!(
        auth.authorize_publish(&cookie_headers(&token), None, &["a"]),
        Err(AuthError::CookieFromForeignOrigin {
            origin: "none".to_owned()
        })
    );
    // Header and query tokens are not subject to the origin check.
    let mut headers = bearer_headers(&token);
    headers.insert(header::ORIGIN, "https://evil.example.com".parse().unwrap());
    assert_eq!(auth.authorize_publish(&headers, None, &["a"]), Ok(()));
    // Without MERCURE_PUBLISH_ORIGINS no origin may publish with the cookie.
    let mut headers = cookie_headers(&token);
    headers.insert(header::ORIGIN, "https://app.example.com".parse().unwrap());
    assert!(matches!(
        publisher().authorize_publish(&headers, None, &["a"]),
        Err(AuthError::CookieFromForeignOrigin { .. })
    ));
    // `*` allows any origin.
    let any = authorizer(&[
        "--mercure-publisher-jwt-key",
        SECRET,
        "--mercure-publish-origins",
        "*",
    ]);
    assert_eq!(any.authorize_publish(&headers, None, &["a"]), Ok(()));
}

#[test]
fn publish_token_still_works_beside_jwts() {
    let only_token = authorizer(&["--publish-token", "s3cret"]);
    assert_eq!(
        only_token.authorize_publish(&bearer_headers("s3cret"), None, &["accounts"]),
        Ok(())
    );
    assert_eq!(
        only_token.authorize_publish(&bearer_headers("s3cre"), None, &["accounts"]),
        Err(AuthError::WrongPublishToken)
    );
    // Only as a bearer header, not in the query (URLs end up in logs).
    assert_eq!(
        only_token.authorize_publish(&HeaderMap::new(), Some("authorization=s3cret"), &["a"]),
        Err(AuthError::WrongPublishToken)
    );
    let both = authorizer(&[
        "--publish-token",
        "s3cret",
        "--mercure-publisher-jwt-key",
        SECRET,
    ]);
    assert_eq!(
        both.authorize_publish(&bearer_headers("s3cret"), None, &["x/y"]),
        Ok(())
    );
    let jwt = hs256(&publish_claims(&["accounts"]));
    assert_eq!(
        both.authorize_publish(&bearer_headers(&jwt), None, &["accounts"]),
        Ok(())
    );
    assert!(both
        .authorize_publish(&bearer_headers("s3cre"), None, &["accounts"])
        .is_err());
}

#[test]
fn rs256_and_es256_with_pem_public_keys() {
    for (alg, name, private) in [
        (Algorithm::RS256, "rs256", true),
        (Algorithm::ES256, "es256", false),
    ] {
        let public = fixture(&format!("jwt-{name}-public.pem"));
        let pem = fixture(&format!("jwt-{name}-private.pem"));
        let key = if private {
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
        } else {
            EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
        };
        let alg_name = format!("{alg:?}");
        // `=` form: the PEM starts with dashes, which clap would take for a flag.
        let key_arg = format!("--mercure-publisher-jwt-key={public}");
        let auth = authorizer(&[&key_arg, "--mercure-publisher-jwt-alg", &alg_name]);
        let token = sign(alg, &key, &publish_claims(&["a"]));
        assert_eq!(
            auth.authorize_publish(&bearer_headers(&token), None, &["a"]),
            Ok(()),
            "{alg_name}"
        );
        // An HS256 token signed with the public key text (the classic
        // algorithm-confusion attack) is refused.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(public.as_bytes()).unwrap(),
            &publish_claims(&["a"]),
        );
        assert!(matches!(
            auth.authorize_publish(&bearer_headers(&confused), None, &["a"]),
            Err(AuthError::WrongAlgorithm { .. })
        ));
        // A PEM with `\n` escapes (one-line .env value) works too.
        let escaped = public.trim_end().replace('\n', "\\n");
        let key_arg = format!("--mercure-publisher-jwt-key={escaped}");
        let auth = authorizer(&[&key_arg, "--mercure-publisher-jwt-alg", &alg_name]);
        assert_eq!(
            auth.authorize_publish(&bearer_headers(&token), None, &["a"]),
            Ok(())
        );
    }
}

#[test]
fn bad_keys_and_algorithms_are_config_errors() {
    let err = config_error(&["--mercure-publisher-jwt-alg", "XX999"]);
    assert_eq!(err.var, "MERCURE_PUBLISHER_JWT_ALG");
    let err = config_error(&["--mercure-subscriber-jwt-alg", "none"]);
    assert_eq!(err.var, "MERCURE_SUBSCRIBER_JWT_ALG");
    let err = config_error(&[
        "--mercure-subscriber-jwt-key",
        "not a pem",
        "--mercure-subscriber-jwt-alg",
        "RS256",
    ]);
    assert_eq!(err.var, "MERCURE_SUBSCRIBER_JWT_KEY");
    assert!(!err.to_string().contains("not a pem"), "{err}");
    let err = config_error(&["--mercure-publisher-jwt-key", ""]);
    assert_eq!(err.var, "MERCURE_PUBLISHER_JWT_KEY");
    let err = config_error(&["--mercure-publish-origins", "evil"]);
    assert_eq!(err.var, "MERCURE_PUBLISH_ORIGINS");
    let err = config_error(&["--mercure-anonymous", "maybe"]);
    assert_eq!(err.var, "MERCURE_ANONYMOUS");
}

#[test]
fn rights_key_ignores_order_and_duplicates() {
    let auth = subscriber();
    let key = |subscribe: &[&str]| {
        let token = hs256(&json!({"mercure": {"subscribe": subscribe}}));
        auth.authorize_subscribe(&bearer_headers(&token), None)
            .unwrap()
            .rights_key()
    };
    assert_eq!(key(&["b", "a", "b"]), key(&["a", "b"]));
    assert_ne!(key(&["a"]), key(&["a", "b"]));
    assert_eq!(key(&[]), SubscriberAuth::anonymous().rights_key());
}

#[test]
fn debug_never_shows_keys_or_tokens() {
    let auth = authorizer(&[
        "--mercure-publisher-jwt-key",
        SECRET,
        "--publish-token",
        "s3cret-publish",
    ]);
    let debug = format!("{auth:?}");
    assert!(
        !debug.contains(SECRET) && !debug.contains("s3cret-publish"),
        "{debug}"
    );
}

#[test]
fn uris_are_redacted_for_logs() {
    let uri: axum::http::Uri = "/.well-known/mercure?topic=a&authorization=eyJsecret&x=1"
        .parse()
        .unwrap();
    assert_eq!(
        redact_uri(&uri),
        "/.well-known/mercure?topic=a&authorization=***&x=1"
    );
    let plain: axum::http::Uri = "/events/sse?topic=a".parse().unwrap();
    assert_eq!(redact_uri(&plain), "/events/sse?topic=a");
}
