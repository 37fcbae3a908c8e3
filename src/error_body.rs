//! The JSON error body every HTTP route answers with, `{"error": {"code", "message"}}`: the
//! API's and the notifier's routes share it, and the OpenAPI document describes it once.

/// The body of every error answer.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_request`, `unauthorized`, `not_found`,
    /// `bad_signature`, `not_configured`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
            },
        }
    }
}
