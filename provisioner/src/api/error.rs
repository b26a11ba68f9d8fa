//! The API's one error type and how each variant is answered.
//!
//! The status code comes from one exhaustive match (a new variant forces a
//! decision). Invalid input answers `422 {"errors": [{path, message}]}`
//! (`docs/api.md`) so a client can point at the field; everything else
//! answers `{"error": {"code", "message"}}`. Internal errors are logged with
//! their whole source chain and answered with a generic message: the chain
//! may name files, SQL or adapters, none of which a client needs.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cz_phases::request::FieldError;
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("this token may not {0}; it needs the operator token")]
    Forbidden(&'static str),
    /// A console request that changes something without the session's
    /// `X-CSRF-Token`, or from another site.
    #[error(
        "refused: a console request must carry the session's X-CSRF-Token and come from the console itself"
    )]
    Csrf,
    /// A feature this daemon's configuration keeps off.
    #[error("{0}")]
    Disabled(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error while trying to {what}")]
    Internal {
        what: &'static str,
        #[source]
        source: BoxError,
    },
}

impl ApiError {
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(path, message)])
    }

    pub fn internal(
        what: &'static str,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync + 'static>) -> ApiError {
        move |source| ApiError::Internal { what, source }
    }

    /// Wraps a store error that has no client-facing meaning.
    pub fn store(what: &'static str) -> impl FnOnce(cz_state::StoreError) -> ApiError {
        move |e| ApiError::Internal { what, source: Box::new(e) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Disabled(_) | ApiError::Csrf => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Csrf => "csrf",
            ApiError::Disabled(_) => "disabled",
            ApiError::NotFound(_) => "not_found",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::Internal { .. } => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let body = match &self {
            ApiError::Invalid(errors) => {
                json!({ "errors": errors, "error": { "code": code, "message": self.to_string() } })
            }
            ApiError::Internal { .. } => {
                tracing::error!(error = &self as &dyn std::error::Error, "Request failed.");
                json!({ "error": { "code": code, "message": "internal error; see the daemon log" } })
            }
            ApiError::Unauthorized => {
                let mut r = (
                    status,
                    Json(json!({ "error": { "code": code, "message": self.to_string() } })),
                )
                    .into_response();
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
            _ => json!({ "error": { "code": code, "message": self.to_string() } }),
        };
        (status, Json(body)).into_response()
    }
}

impl From<cz_engine::VerbError> for ApiError {
    fn from(e: cz_engine::VerbError) -> Self {
        match e {
            cz_engine::VerbError::NoSuchJob(id) => ApiError::NotFound(format!("job {id}")),
            cz_engine::VerbError::Refused(m) => ApiError::Conflict(m),
            cz_engine::VerbError::Store(s) => {
                ApiError::Internal { what: "apply an operator verb", source: Box::new(s) }
            }
        }
    }
}
