//! The HTTP API (contract section 5): tickets, devices, customers, rejects, `/metrics`,
//! `/healthz`, `/readyz`.
//!
//! Errors are `{"error": {"code", "message"}}` with the matching status. Every route but
//! `/metrics` and the health checks takes the [`Authorized`] extractor with the scope it needs
//! (see [`auth`]): reads need `read` (unless `api.protect_reads = false` on a loopback listener),
//! ticket transitions and fleet upserts `write`, rejected payloads and quarantined records
//! `admin`. Ids in paths follow the device-id rules (no `/`, `+`, `#`, whitespace or control
//! characters, at most 128 bytes).
//!
//! Two deliberate exceptions, each with a check of its own: the board's HTML pages
//! (`board::pages`) take a session cookie, since a browser following links and posting forms
//! carries no bearer token (the session is opened with an API token and gets its scope as a
//! role; the board's JSON twins take [`Authorized`] like the rest); and the notifier's public
//! routes (provider callbacks, the self-service page) carry their providers' signatures or a
//! signed link.
//!
//! Routes take the app's narrow handles ([`crate::app::Handles`]), never the single writer.

pub mod auth;
mod config;
mod error;
pub mod fleet;
pub mod openapi;
pub mod server;

pub use auth::{Auth, Authorized, NeedsAdmin, NeedsRead, NeedsWrite, Scope};
pub use config::{Config, ScopedToken, TokenConfig};

pub use error::{ApiError, ErrorBody};

use crate::app::{Fleet, Handles, Monitor, Tickets, Transition};
use crate::domain::{Status, Ticket};
use crate::fleet::{Customer, Device};
use crate::notify::{Notifier, TicketDesk};
use crate::store::Store;
use crate::store::TicketFilter;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Each route takes what it needs: the narrow handles, never the writer itself.
#[derive(Clone)]
struct ApiState {
    tickets: Tickets,
    fleet: Fleet,
    monitor: Monitor,
    metrics: crate::metrics::Metrics,
    auth: Arc<Auth>,
    /// Cluster mode: the client the fleet-wide routes ask the other instances with.
    http: Option<reqwest::Client>,
    /// The OpenAPI document served at `/api/v1/openapi.json` (assembled by [`crate::openapi`]).
    openapi: &'static str,
}

impl ApiState {
    /// In cluster mode, unless the request asks for this instance only: the fleet and the
    /// client to reach it.
    fn fleetwide(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Option<(&dyn crate::app::Fleetwide, &reqwest::Client)> {
        if fleet::instance_scope(headers) {
            return None;
        }
        Some((self.monitor.fleetwide()?, self.http.as_ref()?))
    }
}

impl FromRef<ApiState> for Arc<Auth> {
    fn from_ref(s: &ApiState) -> Arc<Auth> {
        s.auth.clone()
    }
}

/// The API's routes, each with its OpenAPI description (the `#[utoipa::path]` on its handler):
/// the router and [`openapi::document`] are built from this one list, so no route goes
/// undocumented.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_tickets))
        .routes(routes!(get_ticket))
        .routes(routes!(post_transition))
        .routes(routes!(list_devices))
        .routes(routes!(get_device, put_device))
        .routes(routes!(list_customers))
        .routes(routes!(get_customer, put_customer))
        .routes(routes!(list_rejects))
        .routes(routes!(list_quarantine))
        .routes(routes!(list_gaps))
        .routes(routes!(get_cluster))
        .routes(routes!(list_watches))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
}

/// The descriptions of [`router`]'s routes (no state needed).
pub(crate) fn routes_openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// All routes of the API, on the app's handles; `openapi` is the document the API serves.
pub fn router(handles: Handles, auth: Arc<Auth>, cfg: &Config, openapi: &'static str) -> Router {
    let limit = cfg.max_body_bytes;
    // Built only in cluster mode: `serve` has installed the TLS provider by then.
    let http = match handles.monitor.fleetwide() {
        Some(_) => reqwest::Client::builder().build().ok(),
        None => None,
    };
    let state = ApiState {
        tickets: handles.tickets,
        fleet: handles.fleet,
        monitor: handles.monitor,
        metrics: handles.metrics,
        auth,
        http,
        openapi,
    };
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The notifier's routes, in two parts. `public`: provider webhooks (they carry their own
/// signatures) and the self-service page (its signed link): what must face the internet.
/// `private`: the customer timeline, an API read behind the same [`Authorized`] extractor as
/// the rest. The body limit is applied to each: a layer on [`router`] does not reach routes
/// merged after it.
pub struct NotifyRoutes {
    pub public: Router,
    pub private: Router,
}

pub fn notify_routes(
    notifier: Arc<Notifier>,
    store: Store,
    desk: Arc<dyn TicketDesk>,
    auth: Arc<Auth>,
    cfg: &Config,
) -> NotifyRoutes {
    let public = notifier
        .clone()
        .public_routes(store.clone(), desk.clone())
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes));
    let timeline = notifier
        .clone()
        .timeline_routes(store.clone(), desk.clone())
        .route_layer(axum::middleware::from_extractor_with_state::<
            Authorized<NeedsRead>,
            Arc<Auth>,
        >(auth.clone()));
    let links = notifier.links_routes(store, desk).route_layer(
        axum::middleware::from_extractor_with_state::<Authorized<NeedsWrite>, Arc<Auth>>(auth),
    );
    let private = timeline
        .merge(links)
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes));
    NotifyRoutes { public, private }
}

/// Refuses ids that could not be a device, customer or ticket id.
pub fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    crate::domain::validate_device_id(id).map_err(|e| id_error(what, e))
}

/// [`check_id`] for a device id, keeping what passed as the type.
pub fn device_id_param(id: &str) -> Result<crate::domain::DeviceId, ApiError> {
    crate::domain::DeviceId::parse(id).map_err(|e| id_error("device", e))
}

/// The 400 of an id that breaks the rule, naming what kind of id it is.
fn id_error(what: &str, e: crate::domain::DeviceIdError) -> ApiError {
    ApiError::bad_request(format!(
        "{what} id: {}",
        e.to_string().replace("device id", "id")
    ))
}

/// A JSON body, or the 400 saying why it is not one (shared with the board's routes).
pub(crate) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(ApiError::from)
}

/// Runs a blocking store/core operation off the async workers; its error becomes the API's
/// (the board's routes call it with their `BoardError`).
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
        .map_err(Into::into)
}

// ------------------------------------------------------------------ tickets

// The id parameters' `pattern` (here and on each `{id}`) is `domain::validate_device_id` said
// as a regular expression: none of `/`, `+`, `#`, control characters or Unicode white space.
// (The 128 is in bytes there; a pattern can only count characters.)
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TicketQuery {
    /// Only tickets with this status (empty: any, what a form with nothing chosen sends). A
    /// pattern, not an enum: the generated enum could not hold the empty value the handler
    /// takes.
    #[param(pattern = r"^(|open|acknowledged|scheduled|resolved|dismissed)$")]
    status: Option<String>,
    /// Only this device's tickets.
    #[param(
        pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$"
    )]
    device_id: Option<String>,
    /// Only this customer's tickets.
    #[param(
        pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$"
    )]
    customer_id: Option<String>,
    /// RFC 3339 or epoch milliseconds: tickets updated at or after.
    since: Option<String>,
    /// At most this many tickets (default 1000, at most 10000).
    #[param(minimum = 0)]
    limit: Option<usize>,
}

/// The [`fleet::ACTOR`] header, as the OpenAPI description of the routes that change a ticket
/// shows it. Only describes the header; the handlers read it with [`fleet::actor`].
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct ActorHeader {
    /// Cluster mode, with `x-forewarn-scope: instance`: `board=<name>` (form-encoded) names the
    /// person another instance's board makes the change for, so the ticket's history says
    /// `board:<name>` rather than `api`. It grants nothing: the token's scope decides. Ignored
    /// without `x-forewarn-scope: instance`.
    #[serde(rename = "x-forewarn-actor")]
    actor: Option<String>,
}

/// The [`fleet::INSTANCE_SCOPE`] header, as the ticket routes' OpenAPI description shows it.
/// Only describes the header; the handlers read it with [`fleet::instance_scope`].
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct ScopeHeader {
    /// Cluster mode: `instance` answers from this instance's own store, without asking the
    /// other instances (what one instance sends another while answering for the fleet). Any
    /// caller may send it, with the route's own scope: on a read the answer is a subset of what
    /// the same token reads without it; on a transition the change is made on this instance's
    /// copy, not forwarded to the owner of the device's partition. Ignored outside cluster mode.
    #[serde(rename = "x-forewarn-scope")]
    #[param(value_type = Option<ScopeValue>)]
    scope: Option<String>,
}

/// The one value [`ScopeHeader`] takes.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum ScopeValue {
    Instance,
}

const MAX_LIST: usize = 10_000;

/// List tickets, newest change first.
#[utoipa::path(get, path = "/api/v1/tickets", tag = "tickets",
    params(TicketQuery, ScopeHeader),
    responses(
        (status = 200, description = "Tickets, newest change first (in cluster mode: the whole fleet's, each ticket as its owner has it)", body = Vec<Ticket>),
        (status = 400, description = "A query parameter is not valid", body = ErrorBody),
        (status = 503, description = "Cluster mode: an instance did not answer, or a partition has no live owner (the message names them)", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
async fn list_tickets(
    State(state): State<ApiState>,
    _: Authorized<NeedsRead>,
    headers: axum::http::HeaderMap,
    q: Result<Query<TicketQuery>, QueryRejection>,
) -> Result<Json<Vec<Ticket>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status {s:?} is not one of open, acknowledged, scheduled, resolved, dismissed"
            ))
        })?),
        None => None,
    };
    let since_ms = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .or_else(|| crate::domain::Timestamp::parse(s).map(|t| t.as_millis()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("since {s:?} is not RFC 3339 or epoch ms"))
                })?,
        ),
        None => None,
    };
    let device_id = q.device_id.as_deref().map(device_id_param).transpose()?;
    if let Some(v) = &q.customer_id {
        check_id("customer", v)?;
    }
    let limit = q.limit.unwrap_or(1000).min(MAX_LIST);
    let fleet = state.fleetwide(&headers);
    // For the fleet, every instance lists all it has under the filters a stale copy cannot
    // fool (device, customer, `since`: the owner's copy changed no earlier than a stale one);
    // status and limit apply to the merged list.
    let peer_query = {
        let mut qs = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("device_id", &q.device_id),
            ("customer_id", &q.customer_id),
            ("since", &q.since),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                qs.append_pair(k, v);
            }
        }
        qs.append_pair("limit", &MAX_LIST.to_string());
        qs.finish()
    };
    let filter = TicketFilter {
        status: if fleet.is_some() { None } else { status },
        device_id,
        customer_id: q.customer_id,
        since_ms,
        limit: Some(if fleet.is_some() { MAX_LIST } else { limit }),
    };
    let tickets = state.tickets.clone();
    let list = blocking(move || {
        tickets
            .store()
            .tickets(&filter)
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    match fleet {
        Some((fw, http)) => Ok(Json(
            fleet::list(fw, http, &headers, &peer_query, list, status, limit).await?,
        )),
        None => Ok(Json(list)),
    }
}

/// One ticket, with its evidence and history.
#[utoipa::path(get, path = "/api/v1/tickets/{id}", tag = "tickets",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Ticket id: no `/`, `+`, `#`, whitespace or control characters, at most 128 bytes"), ScopeHeader),
    responses(
        (status = 200, description = "The ticket (in cluster mode: as the owner of its device's partition has it)", body = Ticket),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 404, description = "No such ticket", body = ErrorBody),
        (status = 503, description = "Cluster mode: an instance did not answer, or a partition has no live owner (the message names them)", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
async fn get_ticket(
    State(state): State<ApiState>,
    _: Authorized<NeedsRead>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Ticket>, ApiError> {
    check_id("ticket", &id)?;
    let mine = state
        .tickets
        .store()
        .ticket(&id)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let found = match state.fleetwide(&headers) {
        Some((fw, http)) => fleet::get(fw, http, &headers, &id, mine).await?,
        None => mine,
    };
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("ticket {id} not found")))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    /// The status to move to.
    #[schema(value_type = Status)]
    to: String,
    /// Kept in the ticket's history; at most 4096 bytes.
    #[serde(default)]
    note: String,
    /// With `to: resolved` or `dismissed`: how it ended (`confirmed_fault`, `false_alarm`,
    /// `failed_before_service`), the label for the next training run.
    #[serde(default)]
    outcome: Option<crate::domain::Outcome>,
}

/// Move a ticket to another status (in cluster mode: made by the owner of the ticket's device's
/// partition, to which any other instance forwards it).
#[utoipa::path(post, path = "/api/v1/tickets/{id}/transitions", tag = "tickets",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Ticket id: no `/`, `+`, `#`, whitespace or control characters, at most 128 bytes"), ScopeHeader, ActorHeader),
    request_body = TransitionBody,
    responses(
        (status = 200, description = "The ticket after the transition", body = Ticket),
        (status = 400, description = "The id or the body is not valid", body = ErrorBody),
        (status = 404, description = "No such ticket", body = ErrorBody),
        (status = 409, description = "The ticket cannot move from its status to `to`", body = ErrorBody),
        (status = 503, description = "Cluster mode: the owner of the ticket's device did not answer, or the device's partition has no owner right now", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
async fn post_transition(
    State(state): State<ApiState>,
    _: Authorized<NeedsWrite>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TransitionBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_id("ticket", &id)?;
    let body = json_body(body)?;
    let to = Status::parse(&body.to).ok_or_else(|| {
        ApiError::bad_request(format!(
            "to {:?} is not one of acknowledged, scheduled, resolved, dismissed",
            body.to
        ))
    })?;
    if body.note.len() > 4096 {
        return Err(ApiError::bad_request("note is longer than 4096 bytes"));
    }
    if let Some((fw, http)) = state.fleetwide(&headers) {
        // Only the owner of the device's partition changes its tickets: find the device (here,
        // or from the fleet), and hand the transition to the owner unless that is us.
        let mine = state
            .tickets
            .store()
            .ticket(&id)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let ticket = match mine {
            Some(t) => Some(t),
            None => fleet::get(fw, http, &headers, &id, None).await?,
        };
        let Some(ticket) = ticket else {
            return Err(ApiError::not_found(format!("ticket {id} not found")));
        };
        if let Some((owner, api)) = fleet::transition_owner(fw, &ticket.device_id)? {
            let value =
                serde_json::to_value(&body).map_err(|e| ApiError::internal(e.to_string()))?;
            return fleet::forward_transition(fw, http, &headers, &owner, &api, &id, &value).await;
        }
    }
    let tickets = state.tickets.clone();
    let actor = fleet::actor(&headers);
    let t = blocking(move || {
        tickets
            .transition(Transition::to(&id, to, &actor, &body.note).outcome(body.outcome))
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(t).into_response())
}

// ------------------------------------------------------------------ fleet

/// List the devices of the registry.
#[utoipa::path(get, path = "/api/v1/devices", tag = "fleet",
    responses((status = 200, description = "Every device of the registry", body = Vec<Device>)),
    security(("bearer" = ["read"])))]
async fn list_devices(
    State(ApiState { fleet, .. }): State<ApiState>,
    _: Authorized<NeedsRead>,
) -> Result<Json<Vec<Device>>, ApiError> {
    Ok(Json(fleet.devices()))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "fleet",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Device id: no `/`, `+`, `#`, whitespace or control characters, at most 128 bytes")),
    responses(
        (status = 200, description = "The device", body = Device),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
async fn get_device(
    State(ApiState { fleet, .. }): State<ApiState>,
    _: Authorized<NeedsRead>,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    check_id("device", &id)?;
    fleet
        .device(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("device {id} not found")))
}

/// Fills the record's `id` from the path when missing and refuses a different one.
fn with_path_id(mut v: serde_json::Value, id: &str) -> Result<serde_json::Value, ApiError> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    match obj.get("id") {
        None => {
            obj.insert("id".into(), serde_json::Value::String(id.to_string()));
        }
        Some(serde_json::Value::String(s)) if s == id => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "the body's id differs from the path's",
            ))
        }
    }
    Ok(v)
}

/// Create or replace a device.
#[utoipa::path(put, path = "/api/v1/devices/{id}", tag = "fleet",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Device id: no `/`, `+`, `#`, whitespace or control characters, at most 128 bytes")),
    request_body(content = Device, description = "The device; `id` may be left out (the path's is used) but must not differ"),
    responses(
        (status = 200, description = "Replaced", body = Device),
        (status = 201, description = "Created", body = Device),
        (status = 400, description = "The id or the body is not valid", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
async fn put_device(
    State(ApiState { fleet, .. }): State<ApiState>,
    _: Authorized<NeedsWrite>,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_id("device", &id)?;
    let d: Device = record_body(body, &id)?;
    if let Some(c) = &d.customer_id {
        check_id("customer", c)?;
    }
    let existed = fleet.device(&id).is_some();
    upserted(fleet, existed, vec![], vec![d.clone()], d).await
}

/// List the customers of the registry.
#[utoipa::path(get, path = "/api/v1/customers", tag = "fleet",
    responses((status = 200, description = "Every customer of the registry, with their contacts", body = Vec<Customer>)),
    security(("bearer" = ["read"])))]
async fn list_customers(
    State(ApiState { fleet, .. }): State<ApiState>,
    _: Authorized<NeedsRead>,
) -> Result<Json<Vec<Customer>>, ApiError> {
    Ok(Json(fleet.customers()))
}

/// One customer, with contacts and preferences.
#[utoipa::path(get, path = "/api/v1/customers/{id}", tag = "fleet",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Customer id: no `/`, `+`, `#`, whitespace or control characters, at most 128 bytes")),
    responses(
        (status = 200, description = "The customer", body = Customer),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 404, description = "No such customer", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
async fn get_customer(
    State(ApiState { fleet, .. }): State<ApiState>,
    _: Authorized<NeedsRead>,
    Path(id): Path<String>,
) -> Result<Json<Customer>, ApiError> {
    check_id("customer", &id)?;
    fleet
        .customer(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("customer {id} not found")))
}

/// Create or replace a customer.
#[utoipa::path(put, path = "/api/v1/customers/{id}", tag = "fleet",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Customer id: no `/`, `+`, `#`, whitespace or control characters, at most 128 bytes")),
    request_body(content = Customer, description = "The customer; `id` may be left out (the path's is used) but must not differ"),
    responses(
        (status = 200, description = "Replaced", body = Customer),
        (status = 201, description = "Created", body = Customer),
        (status = 400, description = "The id or the body is not valid (a contact of the wrong shape, a webhook address forewarn may not send to…)", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
async fn put_customer(
    State(ApiState { fleet, .. }): State<ApiState>,
    _: Authorized<NeedsWrite>,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_id("customer", &id)?;
    let c: Customer = record_body(body, &id)?;
    c.validate_with(fleet.contact_policy())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let existed = fleet.customer(&id).is_some();
    upserted(fleet, existed, vec![c.clone()], vec![], c).await
}

/// A `PUT`'s record: the JSON body, its `id` filled from the path when missing (a different one
/// is refused).
fn record_body<T: serde::de::DeserializeOwned>(
    body: Result<Json<serde_json::Value>, JsonRejection>,
    id: &str,
) -> Result<T, ApiError> {
    let v = with_path_id(json_body(body)?, id)?;
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Writes the records through the single writer and answers with `record`: 200 when it
/// `existed`, 201 when it is new.
async fn upserted<T: Serialize>(
    fleet: Fleet,
    existed: bool,
    customers: Vec<Customer>,
    devices: Vec<Device>,
    record: T,
) -> Result<Response, ApiError> {
    blocking(move || fleet.upsert(customers, devices).map_err(ApiError::from)).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)).into_response())
}

// ------------------------------------------------------------------ operations

/// The latest rejected payloads and why.
#[utoipa::path(get, path = "/api/v1/rejects", tag = "operations",
    responses((status = 200, description = "The latest rejected payloads (`ingest.recent_rejects` of them)", body = Vec<crate::app::RejectRecord>)),
    security(("bearer" = ["admin"])))]
async fn list_rejects(
    State(ApiState { monitor, .. }): State<ApiState>,
    _: Authorized<NeedsAdmin>,
) -> Result<Json<Vec<crate::app::RejectRecord>>, ApiError> {
    Ok(Json(monitor.rejects()))
}

/// Each device's last `seq` gap: readings that never arrived.
#[utoipa::path(get, path = "/api/v1/gaps", tag = "operations",
    responses((status = 200, description = "Each device's last `seq` gap", body = Vec<crate::app::Gap>)),
    security(("bearer" = ["read"])))]
async fn list_gaps(
    State(ApiState { monitor, .. }): State<ApiState>,
    _: Authorized<NeedsRead>,
) -> Result<Json<Vec<crate::app::Gap>>, ApiError> {
    Ok(Json(monitor.gaps()))
}

/// Cluster mode as this instance sees it: members, the partitions it owns, every lease.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "operations",
    responses((status = 200, description = "The partition assignment (`enabled: false` in single-machine mode)", body = crate::app::ClusterStatus)),
    security(("bearer" = ["read"])))]
async fn get_cluster(
    State(ApiState { monitor, .. }): State<ApiState>,
    _: Authorized<NeedsRead>,
) -> Json<crate::app::ClusterStatus> {
    Json(monitor.fleetwide().map(|f| f.status()).unwrap_or_default())
}

/// Devices on watch: a mode's latest score is at or above its watch level (internal: a watch
/// opens no ticket and sends no message).
#[utoipa::path(get, path = "/api/v1/watch", tag = "operations",
    responses((status = 200, description = "Every device and mode whose latest score is at or above the mode's watch level", body = Vec<crate::app::Watch>)),
    security(("bearer" = ["read"])))]
async fn list_watches(
    State(ApiState { monitor, .. }): State<ApiState>,
    _: Authorized<NeedsRead>,
) -> Result<Json<Vec<crate::app::Watch>>, ApiError> {
    Ok(Json(monitor.watches()))
}

/// Stored records that could not be decoded and were set aside.
#[utoipa::path(get, path = "/api/v1/quarantine", tag = "operations",
    responses((status = 200, description = "Stored records set aside because they could not be decoded", body = Vec<crate::store::Quarantined>)),
    security(("bearer" = ["admin"])))]
async fn list_quarantine(
    State(ApiState { tickets, .. }): State<ApiState>,
    _: Authorized<NeedsAdmin>,
) -> Result<Json<Vec<crate::store::Quarantined>>, ApiError> {
    let list = blocking(move || {
        tickets
            .store()
            .quarantine_list()
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(Json(list))
}

/// The routes a standby answers while it waits for the data directory (`serve --standby`), on
/// the API's own address: `/healthz` (alive), `/readyz` (503, `"role": "standby"`) and
/// `/metrics` (its role). The documented routes of the same paths describe these answers too.
pub fn standby_router(registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/readyz",
            axum::routing::get(|| async {
                (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness::standby())).into_response()
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = crate::metrics::render(&registry);
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response()
                }
            }),
        )
}

/// Prometheus text exposition format. Open: no token.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Every metric forewarn exports", body = String, content_type = "text/plain")))]
async fn metrics(State(ApiState { metrics, .. }): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// The body of `/healthz`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Liveness: the process answers. Open: no token.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The body of `/readyz`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Broker, store and models are all up.
    pub ready: bool,
    /// Connected to the MQTT broker.
    pub broker: bool,
    /// The store accepted the last commit.
    pub store: bool,
    /// Models are loaded.
    pub models: bool,
    /// `false`, or what is known to be lost upstream (forewarn stays ready: a restart would
    /// lose more).
    pub upstream_loss: UpstreamLoss,
    /// Devices whose `seq` started over (a device restart).
    pub seq_resets: u64,
    /// Messages the broker says it dropped since forewarn first heard from it (all
    /// subscribers); `null` when the broker does not say.
    pub broker_dropped: Option<u64>,
    /// A note on the MQTT session (e.g. that the broker kept no session), if any.
    pub session: Option<String>,
    /// `active`, or `standby` while this process waits to take over the data directory from
    /// another (`serve --standby`; nothing else is up then).
    pub role: String,
    /// Cluster mode only (absent otherwise): connected to NATS, joined, a fresh view of the
    /// leases, and which owned partitions are still being replayed; `ready` needs it ready too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::app::ClusterReadiness>,
}

impl Readiness {
    /// What a standby answers: not ready, nothing up.
    fn standby() -> Readiness {
        Readiness {
            ready: false,
            broker: false,
            store: false,
            models: false,
            upstream_loss: UpstreamLoss::None(false),
            seq_resets: 0,
            broker_dropped: None,
            session: None,
            role: "standby".into(),
            cluster: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UpstreamLoss {
    /// Nothing lost (always `false`).
    None(bool),
    Lost(LostReadings),
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LostReadings {
    /// Readings that never arrived (`seq` gaps) since start.
    pub readings_missing: u64,
    /// When the last gap was noticed (RFC 3339).
    pub last_gap_at: Option<String>,
}

/// A 503 from `/readyz`: not ready, or (like any route) too many requests at once.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ReadyOrBusy {
    NotReady(Readiness),
    Busy(ErrorBody),
}

/// Readiness: broker connected, store writable, models loaded (in cluster mode also: connected
/// to NATS, joined, a fresh lease view, the fleet registry loaded, no owned partition still
/// replaying). Open: no token.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (the body says what is missing), or too many requests at once", body = ReadyOrBusy),
    ))]
async fn readyz(State(ApiState { monitor, .. }): State<ApiState>) -> Response {
    let broker = monitor.broker_connected();
    let models = monitor.models_ready();
    // What the commit loop last saw: no write, flush or reopen happens on behalf of a probe.
    let store = monitor.store_writable();
    let cluster = monitor.fleetwide().map(|f| f.readiness());
    let ready = broker && store && models && cluster.as_ref().is_none_or(|c| c.ready);
    // Loss upstream does not make forewarn unready (restarting it would lose more), but says so.
    let loss = monitor.loss();
    let upstream_loss = if loss.readings_missing > 0 {
        UpstreamLoss::Lost(LostReadings {
            readings_missing: loss.readings_missing,
            last_gap_at: loss
                .last_gap_ms
                .map(|ms| crate::domain::Timestamp::from_millis(ms).format()),
        })
    } else {
        UpstreamLoss::None(false)
    };
    let body = Readiness {
        ready,
        broker,
        store,
        models,
        upstream_loss,
        seq_resets: loss.seq_resets,
        // What the broker says it dropped since forewarn first heard from it (all subscribers).
        broker_dropped: loss
            .broker_dropped
            .map(|(first, last)| last.saturating_sub(first)),
        session: monitor.session_note(),
        role: "active".into(),
        cluster,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// This document.
///
/// Open: no token (it is the same for every deployment and committed with the source as
/// `openapi.json`).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object, content_type = "application/json")))]
async fn openapi_json(State(s): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], s.openapi).into_response()
}
