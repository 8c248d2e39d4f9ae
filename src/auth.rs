//! TEMPORARY stand-in for the auth helper's JWT authorization (replaced on
//! merge of `mercure-auth`): `PUBLISH_TOKEN` only, every subscriber anonymous.

use axum::http::HeaderMap;

use crate::{error::ApiError, topic::Selector};

/// Decides who may publish and subscribe.
#[derive(Debug, Clone)]
pub struct Authorizer {
    publish_token: Option<String>,
}

/// A rejected credential.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

impl From<AuthError> for ApiError {
    fn from(_: AuthError) -> Self {
        ApiError::Unauthorized
    }
}

/// What a subscriber's token allows.
#[derive(Debug, Clone)]
pub struct SubscriberAuth {
    /// `mercure.subscribe`.
    pub subscribe: Vec<Selector>,
    /// `mercure.payload`.
    pub payload: Option<serde_json::Value>,
    /// `exp`.
    pub expires_at: Option<std::time::SystemTime>,
    /// No token.
    pub anonymous: bool,
}

impl Authorizer {
    /// From `PUBLISH_TOKEN`.
    pub fn new(publish_token: Option<String>) -> Self {
        Self { publish_token }
    }
    /// No publisher credential configured.
    pub fn publishing_open(&self) -> bool {
        self.publish_token.is_none()
    }
    /// Checks the publisher's credentials.
    ///
    /// # Errors
    /// When they are missing or wrong.
    pub fn authorize_publish(
        &self,
        headers: &HeaderMap,
        _query: Option<&str>,
        _topics: &[&str],
    ) -> Result<(), AuthError> {
        let Some(token) = &self.publish_token else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given == Some(token.as_str()) {
            Ok(())
        } else {
            Err(AuthError("bad token".to_owned()))
        }
    }
    /// Checks the subscriber's token.
    ///
    /// # Errors
    /// Never in the stand-in.
    pub fn authorize_subscribe(
        &self,
        _headers: &HeaderMap,
        _query: Option<&str>,
    ) -> Result<SubscriberAuth, AuthError> {
        Ok(SubscriberAuth {
            subscribe: Vec::new(),
            payload: None,
            expires_at: None,
            anonymous: true,
        })
    }
}
