//! The OpenAPI 3.1 document of every route the daemon serves: the API's and the notifier's
//! ([`crate::api::openapi`]) with the dispatch board's JSON routes. Assembled here, above both
//! `api` and `board`, so neither imports the other for it; `serve` hands the text to the API,
//! which serves it at `GET /api/v1/openapi.json`.

use std::sync::OnceLock;
use utoipa::openapi::OpenApi;

/// The whole document.
pub fn document() -> OpenApi {
    // The board's JSON routes are served with `board.enabled` (the default); they are described
    // whether or not a deployment turns the board off, as the document is one for every deployment.
    crate::api::openapi::document([crate::board::api::openapi()])
}

/// [`document`] as pretty-printed JSON with a final newline: what `openapi.json` holds.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(&document())
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    })
}
