//! Publisher and subscriber authorization (SPEC §8.4): Mercure 0.x JWTs
//! verified with `jsonwebtoken`, the `PUBLISH_TOKEN` shared secret, anonymous
//! subscribers and the cookie CSRF check.
//!
//! The token is read from `Authorization: Bearer <jwt>`, else the
//! `authorization` query parameter, else the `mercureAuthorization` cookie
//! (Go hub `authorization.go`). The algorithm comes from configuration only: a
//! token whose header names another algorithm is rejected. Tokens are never
//! logged, and no error message repeats one.

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::{
    config::{bad, Config, ConfigError},
    topic::Selector,
};

/// Name of the cookie carrying a token (Mercure `cookie_name` default).
pub const COOKIE_NAME: &str = "mercureAuthorization";
/// Name of the query parameter carrying a token.
pub const QUERY_PARAM: &str = "authorization";
/// The claim holding Mercure rights; the Go 0.x hub also reads the namespaced
/// form [`NAMESPACED_CLAIM`].
pub const CLAIM: &str = "mercure";
/// The namespaced Mercure claim of early 0.x tokens.
pub const NAMESPACED_CLAIM: &str = "https://mercure.rocks/";

/// Why a request is not authorized. Every variant is a `401` (SPEC §8.3,
/// §8.4); the message says why and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the header, the query or the cookie (publishing needs one).
    #[error("a token is required: send Authorization: Bearer <jwt>, the authorization query parameter or the mercureAuthorization cookie")]
    MissingToken,
    /// A subscriber without a token while `MERCURE_ANONYMOUS=false`.
    #[error("no token and anonymous subscribers are not allowed")]
    AnonymousNotAllowed,
    /// Not a JWT, or its claims have the wrong shape.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The signature does not verify with the configured key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token header names another algorithm than the configured one.
    #[error("token algorithm is not the configured {expected}")]
    WrongAlgorithm {
        /// The configured algorithm, e.g. `HS256`.
        expected: String,
    },
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// A publisher token without `mercure.publish` selectors.
    #[error("token has no mercure claim with publish selectors")]
    NoMercureClaim,
    /// A topic of the update matches none of the token's `mercure.publish` selectors.
    #[error("topic {topic} not covered by mercure.publish")]
    TopicNotCovered {
        /// The first topic not covered.
        topic: String,
    },
    /// A cookie-authenticated `POST` whose `Origin`/`Referer` is not in
    /// `MERCURE_PUBLISH_ORIGINS` (CSRF protection).
    #[error("cookie-authenticated publish from origin {origin} is not allowed by MERCURE_PUBLISH_ORIGINS")]
    CookieFromForeignOrigin {
        /// The request's origin, or `none` when it sent neither header.
        origin: String,
    },
    /// A token of a kind this instance has no key for.
    #[error("{kind} tokens are not accepted: {var} is not set")]
    NoKey {
        /// `publisher` or `subscriber`.
        kind: &'static str,
        /// The variable that would configure the key.
        var: &'static str,
    },
    /// Only `PUBLISH_TOKEN` is configured and the bearer is not it.
    #[error("a valid bearer token is required to publish")]
    WrongPublishToken,
}

impl AuthError {
    /// True when the token itself was bad (RFC 6750 §3.1 `invalid_token`).
    fn is_invalid_token(&self) -> bool {
        matches!(
            self,
            AuthError::Malformed(_)
                | AuthError::BadSignature
                | AuthError::WrongAlgorithm { .. }
                | AuthError::Expired
                | AuthError::NotYetValid
        )
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3): `Bearer`, with
    /// `error="invalid_token"` and an `error_description` when the token was bad.
    pub fn www_authenticate(&self) -> HeaderValue {
        if !self.is_invalid_token() {
            return HeaderValue::from_static("Bearer");
        }
        // error_description is a quoted-string of visible ASCII (RFC 6750 §3).
        let description: String = self
            .to_string()
            .chars()
            .map(|c| {
                if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' {
                    c
                } else {
                    '\''
                }
            })
            .collect();
        HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{description}\""
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
    }
}

/// A configured verifier: key and validation for one role.
#[derive(Clone)]
struct Verifier {
    key: DecodingKey,
    validation: Validation,
    alg: Algorithm,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Verifier").field("alg", &self.alg).finish()
    }
}

/// Where a token came from; the cookie is subject to the CSRF check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    Cookie,
}

/// Keys, algorithms, `PUBLISH_TOKEN`, `MERCURE_ANONYMOUS` and the publish
/// origins; built once from [`Config`] and shared by every route.
#[derive(Clone)]
pub struct Authorizer {
    publisher: Option<Arc<Verifier>>,
    subscriber: Option<Arc<Verifier>>,
    publish_token: Option<Arc<str>>,
    anonymous: bool,
    /// `None`: any origin (`*`); empty: none.
    publish_origins: Option<Arc<[String]>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("publisher", &self.publisher)
            .field("subscriber", &self.subscriber)
            .field("publish_token", &self.publish_token.as_ref().map(|_| "***"))
            .field("anonymous", &self.anonymous)
            .field("publish_origins", &self.publish_origins)
            .finish()
    }
}

/// What a subscriber may see (SPEC §8.2, §8.4).
#[derive(Debug, Clone)]
pub struct SubscriberAuth {
    /// `mercure.subscribe` selectors (empty when anonymous).
    pub subscribe: Vec<Selector>,
    /// `mercure.payload`, if any.
    pub payload: Option<serde_json::Value>,
    /// The token's `exp`: the stream ends then (SPEC §8.4).
    pub expires_at: Option<SystemTime>,
    /// True when the request carried no token.
    pub anonymous: bool,
}

impl SubscriberAuth {
    /// The rights of a subscriber without a token: public events only.
    pub fn anonymous() -> Self {
        SubscriberAuth {
            subscribe: Vec::new(),
            payload: None,
            expires_at: None,
            anonymous: true,
        }
    }

    /// A private update needs one of its topics to match a `mercure.subscribe`
    /// selector (SPEC §8.2); anonymous subscribers never match.
    pub fn may_receive_private(&self, topics: &[impl AsRef<str>]) -> bool {
        crate::topic::matches_any(&self.subscribe, topics)
    }

    /// A stable key for "same rights": the sorted, deduplicated subscribe
    /// selectors, so streams with the same selectors and rights can share one
    /// broadcast group. Anonymous and "token without subscribe rights" share
    /// the key `""` (both see public events only).
    pub fn rights_key(&self) -> String {
        let mut selectors: Vec<&str> = self.subscribe.iter().map(Selector::as_str).collect();
        selectors.sort_unstable();
        selectors.dedup();
        // NUL cannot appear in a selector taken from a URL or JSON string
        // that a person typed, and keeps the join unambiguous.
        selectors.join("\0")
    }
}

/// The `mercure` claim (Mercure 0.x).
#[derive(Debug, Default, Deserialize)]
struct MercureClaim {
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    payload: Option<serde_json::Value>,
}

/// The claims this hub reads; `exp`/`nbf` are checked by `jsonwebtoken`.
#[derive(Debug, Deserialize)]
struct Claims {
    mercure: Option<MercureClaim>,
    #[serde(rename = "https://mercure.rocks/")]
    namespaced: Option<MercureClaim>,
    exp: Option<f64>,
}

impl Claims {
    fn into_mercure(self) -> Option<MercureClaim> {
        self.mercure.or(self.namespaced)
    }
}

impl Authorizer {
    /// Builds the authorizer from the settings. Config validation calls this
    /// too, so a bad key or algorithm exits 2 at start-up (SPEC §2).
    ///
    /// # Errors
    /// [`ConfigError`] naming `MERCURE_*_JWT_ALG` for an unknown algorithm or
    /// `MERCURE_*_JWT_KEY` for an empty or unparsable key (the key is not shown).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let publisher = verifier(
            config.mercure_publisher_jwt_key.as_deref(),
            &config.mercure_publisher_jwt_alg,
            "MERCURE_PUBLISHER_JWT_KEY",
            "MERCURE_PUBLISHER_JWT_ALG",
        )?;
        let subscriber = verifier(
            config.mercure_subscriber_jwt_key.as_deref(),
            &config.mercure_subscriber_jwt_alg,
            "MERCURE_SUBSCRIBER_JWT_KEY",
            "MERCURE_SUBSCRIBER_JWT_ALG",
        )?;
        let publish_origins = match config.mercure_publish_origins.as_deref().map(str::trim) {
            Some("*") => None,
            Some(list) => Some(
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            ),
            None => Some(Arc::from(Vec::new())),
        };
        Ok(Authorizer {
            publisher: publisher.map(Arc::new),
            subscriber: subscriber.map(Arc::new),
            publish_token: config.publish_token.as_deref().map(Arc::from),
            anonymous: config.mercure_anonymous,
            publish_origins,
        })
    }

    /// No publisher key and no `PUBLISH_TOKEN`: anyone may publish (SPEC §8.4;
    /// the server logs a `warn` line at start-up).
    pub fn publishing_open(&self) -> bool {
        self.publisher.is_none() && self.publish_token.is_none()
    }

    /// `POST /.well-known/mercure` and `POST /accounts` (SPEC §8.4): `Ok` when
    /// publishing is open, or the bearer equals `PUBLISH_TOKEN` (compared in
    /// constant time), or the publisher JWT's `mercure.publish` selectors
    /// cover every topic. `query` is the raw query string, if any.
    ///
    /// # Errors
    /// An [`AuthError`] saying why (all are `401`); nothing may be published then.
    pub fn authorize_publish(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        topics: &[&str],
    ) -> Result<(), AuthError> {
        if self.publishing_open() {
            return Ok(());
        }
        let Some((token, source)) = find_token(headers, query) else {
            return Err(AuthError::MissingToken);
        };
        if let Some(expected) = &self.publish_token {
            if source == Source::Header && constant_time_eq(token.as_bytes(), expected.as_bytes()) {
                return Ok(());
            }
        }
        let Some(verifier) = &self.publisher else {
            return Err(AuthError::WrongPublishToken);
        };
        if source == Source::Cookie {
            self.check_origin(headers)?;
        }
        let claims = verify(verifier, &token)?;
        let Some(publish) = claims.into_mercure().and_then(|m| m.publish) else {
            return Err(AuthError::NoMercureClaim);
        };
        let selectors: Vec<Selector> = publish.iter().map(|s| Selector::parse(s)).collect();
        match topics
            .iter()
            .find(|topic| !selectors.iter().any(|s| s.matches(topic)))
        {
            Some(topic) => Err(AuthError::TopicNotCovered {
                topic: (*topic).to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// `GET` subscribe (SPEC §8.4): the subscriber's rights. A request with a
    /// token that is invalid, expired or wrongly signed is refused, never
    /// treated as anonymous; so is one without a token when
    /// `MERCURE_ANONYMOUS=false`.
    ///
    /// # Errors
    /// An [`AuthError`] saying why (all are `401`).
    pub fn authorize_subscribe(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<SubscriberAuth, AuthError> {
        let Some((token, _)) = find_token(headers, query) else {
            return if self.anonymous {
                Ok(SubscriberAuth::anonymous())
            } else {
                Err(AuthError::AnonymousNotAllowed)
            };
        };
        let Some(verifier) = &self.subscriber else {
            return Err(AuthError::NoKey {
                kind: "subscriber",
                var: "MERCURE_SUBSCRIBER_JWT_KEY",
            });
        };
        let claims = verify(verifier, &token)?;
        let expires_at = claims
            .exp
            .filter(|exp| exp.is_finite() && *exp >= 0.0)
            .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(exp));
        let mercure = claims.into_mercure().unwrap_or_default();
        Ok(SubscriberAuth {
            subscribe: mercure
                .subscribe
                .unwrap_or_default()
                .iter()
                .map(|s| Selector::parse(s))
                .collect(),
            payload: mercure.payload,
            expires_at,
            anonymous: false,
        })
    }

    /// CSRF check for a cookie-authenticated `POST`: `Origin`, else the origin
    /// of `Referer`, must be in `MERCURE_PUBLISH_ORIGINS` (Go hub `authorization.go`).
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(|o| o.trim_end_matches('/').to_owned())
            .or_else(|| {
                let referer = headers.get(header::REFERER)?.to_str().ok()?;
                let origin = url::Url::parse(referer).ok()?.origin();
                origin.is_tuple().then(|| origin.ascii_serialization())
            });
        let Some(allowed) = &self.publish_origins else {
            return Ok(());
        };
        match origin {
            Some(origin) if allowed.contains(&origin) => Ok(()),
            Some(origin) => Err(AuthError::CookieFromForeignOrigin { origin }),
            None => Err(AuthError::CookieFromForeignOrigin {
                origin: "none".to_owned(),
            }),
        }
    }
}

/// Parses one role's key and algorithm; `Ok(None)` when the key is unset.
fn verifier(
    key: Option<&str>,
    alg: &str,
    key_var: &str,
    alg_var: &str,
) -> Result<Option<Verifier>, ConfigError> {
    let algorithm = Algorithm::from_str(alg.trim()).map_err(|_| {
        bad(
            alg_var,
            alg,
            "expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
        )
    })?;
    let Some(key) = key else { return Ok(None) };
    if key.is_empty() {
        return Err(bad(key_var, "", "must not be empty (unset it instead)"));
    }
    // A PEM in a one-line `.env` value may carry `\n` escapes.
    let pem = if key.contains('\n') {
        key.to_owned()
    } else {
        key.replace("\\n", "\n")
    };
    let parsed = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            DecodingKey::from_secret(key.as_bytes())
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
        _ => return Err(bad(alg_var, alg, "this algorithm is not supported")),
    };
    // The key is a secret: the error line shows `***`, never the value.
    let key = parsed.map_err(|err| {
        bad(
            key_var,
            "***",
            &format!("not a usable {alg} key ({err}); RS*/PS*/ES*/EdDSA need a PEM public key"),
        )
    })?;
    let mut validation = Validation::new(algorithm);
    // Mercure 0.x: `exp` optional but enforced when present, `nbf` enforced,
    // `aud` not checked; no leeway, as the Go hub.
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.leeway = 0;
    Ok(Some(Verifier {
        key,
        validation,
        alg: algorithm,
    }))
}

/// Verifies signature, algorithm, `exp` and `nbf`, and reads the claims.
fn verify(verifier: &Verifier, token: &str) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
        .map(|data| data.claims)
        .map_err(|err| match err.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm {
                expected: format!("{:?}", verifier.alg),
            },
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::Json(err) => AuthError::Malformed(format!("claims: {err}")),
            ErrorKind::InvalidClaimFormat(claim) => {
                AuthError::Malformed(format!("claim {claim} has the wrong type"))
            }
            ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                AuthError::Malformed("not a JWT (header.payload.signature)".to_owned())
            }
            // A key of the wrong kind for the token: the signature cannot verify.
            _ => AuthError::BadSignature,
        })
}

/// The token and where it came from: `Authorization: Bearer`, else the
/// `authorization` query parameter, else the `mercureAuthorization` cookie.
fn find_token(headers: &HeaderMap, query: Option<&str>) -> Option<(String, Source)> {
    if let Some(token) = bearer(headers) {
        return Some((token.to_owned(), Source::Header));
    }
    if let Some(query) = query {
        if let Some((_, token)) = form_urlencoded::parse(query.as_bytes())
            .find(|(name, value)| name == QUERY_PARAM && !value.is_empty())
        {
            return Some((token.into_owned(), Source::Query));
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE_NAME && !c.value().is_empty())
        .map(|c| (c.value().to_owned(), Source::Cookie))
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is
/// case-insensitive (RFC 9110 §11.1). Other schemes are not tokens.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, credentials)| credentials.trim())
        .filter(|credentials| !credentials.is_empty())
}

/// Equality that takes the same time wherever the first difference is, so
/// response timing does not leak `PUBLISH_TOKEN`.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The URI with the value of any `authorization` query parameter replaced by
/// `***`, for logs (a token in a URL must not reach them).
pub fn redact_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    if !query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(QUERY_PARAM))
    {
        return uri.to_string();
    }
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((QUERY_PARAM, _)) => format!("{QUERY_PARAM}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
}

#[cfg(test)]
mod tests;
