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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protected_operation_names_its_scope_and_may_answer_401_and_403() {
        let doc = document();
        let mut protected = 0;
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.put, &item.post].into_iter().flatten() {
                let Some(sec) = &op.security else { continue };
                let v = serde_json::to_value(sec).unwrap();
                let scopes = v[0][crate::api::openapi::BEARER].as_array().unwrap();
                assert_eq!(scopes.len(), 1, "{path}");
                protected += 1;
                for s in ["401", "403", "408", "503"] {
                    assert!(op.responses.responses.contains_key(s), "{path}: no {s}");
                }
            }
        }
        assert!(protected >= 14, "only {protected} protected operations");
    }
}
