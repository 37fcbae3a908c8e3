//! The API's part of the OpenAPI 3.1 description, generated from the handlers (their
//! `#[utoipa::path]`) and the types they take and return (`ToSchema`). The whole document
//! ([`crate::openapi`]) adds the board's routes to it; it is served at `GET /api/v1/openapi.json`,
//! printed by `forewarn openapi`, committed as `openapi.json` (a test fails when the committed
//! file differs) and exercised by schemathesis in CI.
//!
//! What every route shares is added here, in one place, rather than repeated on each handler:
//! the bearer scheme, 401/403 on routes that need a token, 413/415 on routes with a body, and
//! 408, 500 and 503 (the request limits of [`super::server::harden`]) everywhere.

use super::error::ErrorBody;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};
use utoipa::OpenApi as _;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "forewarn",
        description = "The HTTP API of forewarn, a predictive-service daemon: service tickets \
            opened before devices fail, the fleet registry (devices and customers), operations \
            views, and the notifier's inbound routes (provider webhooks, the customer \
            self-service page).\n\n\
            Tokens: `Authorization: Bearer <token>` with scope `read`, `write` or `admin` \
            (each includes the ones before it). Reads need `read` unless the daemon runs with \
            `api.protect_reads = false` on a loopback address. `/metrics`, `/healthz`, `/readyz` \
            and this document are open. The `/notify/v1/*` routes carry their own proof (the \
            provider's signature, the signed link) and may be served on a separate listener \
            (`api.public_listen`).\n\n\
            Errors are `{\"error\": {\"code\", \"message\"}}` with the status that fits.",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "tickets", description = "Service tickets and their transitions"),
        (name = "fleet", description = "Devices and customers"),
        (name = "notify", description = "Customer timelines, link revocation, provider webhooks and the self-service page"),
        (name = "board", description = "The dispatch board's JSON routes: technicians, visits, slots, assignment, proposals, bookings (served with `board.enabled`)"),
        (name = "operations", description = "Metrics, health, rejected and quarantined input, this document"),
    ),
    components(schemas(ErrorBody))
)]
struct Base;

/// Name of the security scheme the handlers' `security(...)` refer to.
pub(crate) const BEARER: &str = "bearer";

/// The API's part of the document: its routes and the notifier's, merged with `others` (the
/// routes of modules above `api`, such as the board's), then what every route shares. The whole
/// document is assembled one level up, in [`crate::openapi`], so `api` imports nothing above it.
pub fn document(others: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.merge(super::routes_openapi());
    doc.merge(crate::notify::inbound::openapi());
    for other in others {
        doc.merge(other);
    }
    shared(&mut doc);
    doc
}

fn error_response(description: &str) -> Response {
    let mut r = Response::new(description);
    r.content.insert(
        "application/json".into(),
        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
    );
    r
}

/// The answers every route may give, by (status, component name, description).
const SHARED: [(&str, &str, &str); 7] = [
    (
        "401",
        "Unauthorized",
        "No bearer token, or not a known one (`WWW-Authenticate: Bearer`)",
    ),
    (
        "403",
        "Forbidden",
        "The token's scope is below what the route needs",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body is larger than `api.max_body_bytes`",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body's `Content-Type` is not one the route reads",
    ),
    (
        "408",
        "RequestTimeout",
        "Not answered within `api.request_timeout`",
    ),
    (
        "500",
        "Internal",
        "A failure inside forewarn (the store could not be read or written)",
    ),
    (
        "503",
        "Busy",
        "More than `api.max_concurrent_requests` requests at once; retry after `Retry-After` seconds",
    ),
];

fn shared(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.into(),
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A token from `api.tokens`, `api.tokens_file` or `FOREWARN_API_TOKEN`; the \
             requirement lists the scope the route needs (read < write < admin)",
                ))
                .build(),
        ),
    );
    for (_, name, description) in SHARED {
        components
            .responses
            .insert(name.into(), RefOr::T(error_response(description)));
    }
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let body = op.request_body.is_some();
            for (status, name, _) in SHARED {
                let applies = match status {
                    "401" | "403" => secured,
                    "413" | "415" => body,
                    _ => true,
                };
                if applies {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                }
            }
        }
    }
}
