//! The board's JSON twins, behind the API's bearer tokens: technicians, visits, free slots, and
//! the ticket actions the board's forms take (assignment, proposal, visit) — the same
//! [`Board`] functions, so both sides change a ticket the same way.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /api/v1/technicians` | read | technicians (configuration and API) |
//! | `PUT /api/v1/technicians/{id}` | admin | add or replace one |
//! | `GET /api/v1/visits` | read | booked visits (in cluster mode the fleet's) |
//! | `GET /api/v1/board/records` | read | each ticket's assignment, proposal and visit in this instance's store |
//! | `GET /api/v1/tickets/{id}/slots?technician=` | read | the technician's free slots |
//! | `POST /api/v1/tickets/{id}/assignment` | write | `{"technician_id"}` |
//! | `POST /api/v1/tickets/{id}/proposal` | write | `{"technician_id", "slots": [{"start_ms", "end_ms"}]}` |
//! | `POST /api/v1/tickets/{id}/visit` | write | `{"technician_id", "slot": {"start_ms", "end_ms"}}`: books and schedules |

use super::{Board, BoardError, QueueError, Technician, TicketRecords};
use crate::api::{
    blocking, check_id, json_body as body, ApiError, Auth, Authorized, NeedsAdmin, NeedsRead,
    NeedsWrite,
};
use crate::domain::{Slot, Ticket, Visit};
use crate::error_body::ErrorBody;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, Path, Query, State};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
struct St {
    b: Arc<Board>,
}

impl FromRef<St> for Arc<Auth> {
    fn from_ref(s: &St) -> Arc<Auth> {
        s.b.auth.clone()
    }
}

/// The routes, each with its OpenAPI description (`#[utoipa::path]` on its handler).
fn described() -> OpenApiRouter<St> {
    OpenApiRouter::new()
        .routes(routes!(list_technicians))
        .routes(routes!(put_technician))
        .routes(routes!(list_visits))
        .routes(routes!(list_records))
        .routes(routes!(free_slots))
        .routes(routes!(assign))
        .routes(routes!(propose))
        .routes(routes!(book))
}

/// The descriptions of these routes, for the API's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    described().into_openapi()
}

pub fn routes(b: Arc<Board>) -> Router {
    described().split_for_parts().0.with_state(St { b })
}

impl From<BoardError> for ApiError {
    fn from(e: BoardError) -> ApiError {
        match e {
            BoardError::NotFound(m) => ApiError::not_found(m),
            BoardError::Invalid(m) => ApiError::bad_request(m),
            BoardError::Core(c) => ApiError::from(c),
            BoardError::Store(s) => ApiError::internal(s.to_string()),
        }
    }
}

/// Technicians (from the configuration and the API).
#[utoipa::path(get, path = "/api/v1/technicians", tag = "board",
    responses((status = 200, description = "Every technician", body = Vec<Technician>)),
    security(("bearer" = ["read"])))]
async fn list_technicians(
    State(St { b }): State<St>,
    _: Authorized<NeedsRead>,
) -> Json<Vec<Technician>> {
    Json(b.technicians())
}

/// Add or replace a technician.
#[utoipa::path(put, path = "/api/v1/technicians/{id}", tag = "board",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Technician id")),
    request_body(content = Technician, description = "The technician; `id` must be the path's"),
    responses(
        (status = 200, description = "Stored", body = Technician),
        (status = 400, description = "The id or the body is not valid", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
async fn put_technician(
    State(St { b }): State<St>,
    _: Authorized<NeedsAdmin>,
    Path(id): Path<String>,
    t: Result<Json<Technician>, JsonRejection>,
) -> Result<Json<Technician>, ApiError> {
    check_id("technician", &id)?;
    let t = body(t)?;
    if t.id != id {
        return Err(ApiError::bad_request(
            "the body's id differs from the path's",
        ));
    }
    let t2 = t.clone();
    blocking(move || b.put_technician(&t2)).await?;
    Ok(Json(t))
}

/// Booked visits, earliest first.
///
/// In cluster mode the fleet's: every live instance's visits of the tickets whose partitions it
/// owns (503 when an instance does not answer; a request marked `x-forewarn-scope: instance`
/// gets this instance's only).
#[utoipa::path(get, path = "/api/v1/visits", tag = "board",
    responses((status = 200, description = "Every booked visit", body = Vec<Visit>)),
    security(("bearer" = ["read"])))]
async fn list_visits(
    State(St { b }): State<St>,
    _: Authorized<NeedsRead>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Vec<Visit>>, ApiError> {
    if crate::api::fleet::instance_scope(&headers) {
        return Ok(Json(
            blocking(move || Ok::<_, ApiError>(b.visits_here())).await?,
        ));
    }
    match b.fleet_visits(&headers).await {
        Ok(v) => Ok(Json(v)),
        Err(QueueError::Fleet(e)) => Err(e),
        Err(QueueError::Store(e)) => Err(ApiError::internal(e.to_string())),
        Err(QueueError::Cancelled) => Err(ApiError::unavailable("the store read was cancelled")),
    }
}

/// What the board keeps beside each ticket in this instance's store: assignments, proposals,
/// booked visits. In cluster mode the board of any instance asks every instance for these and
/// shows, for each ticket, the copy of the owner of its device's partition.
#[utoipa::path(get, path = "/api/v1/board/records", tag = "board",
    responses((status = 200, description = "Each ticket with a record here, with its records", body = Vec<TicketRecords>)),
    security(("bearer" = ["read"])))]
async fn list_records(
    State(St { b }): State<St>,
    _: Authorized<NeedsRead>,
) -> Result<Json<Vec<TicketRecords>>, ApiError> {
    Ok(Json(
        blocking(move || Ok::<_, ApiError>(b.records_here())).await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SlotsQuery {
    /// The technician whose free slots are wanted.
    technician: String,
}

/// A technician's free visit slots for a ticket.
#[utoipa::path(get, path = "/api/v1/tickets/{id}/slots", tag = "board",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Ticket id"), SlotsQuery),
    responses(
        (status = 200, description = "Free slots, earliest first", body = Vec<Slot>),
        (status = 400, description = "The id or the query is not valid", body = ErrorBody),
        (status = 404, description = "No such technician", body = ErrorBody),
    ),
    security(("bearer" = ["read"])))]
async fn free_slots(
    State(St { b }): State<St>,
    _: Authorized<NeedsRead>,
    Path(id): Path<String>,
    q: Result<Query<SlotsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Slot>>, ApiError> {
    check_id("ticket", &id)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tech = b
        .technician(&q.technician)
        .ok_or_else(|| ApiError::not_found(format!("technician {} not found", q.technician)))?;
    Ok(Json(
        blocking(move || Ok::<_, ApiError>(b.free_slots(&tech, &id))).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    technician_id: String,
}

/// Assign a ticket to a technician.
#[utoipa::path(post, path = "/api/v1/tickets/{id}/assignment", tag = "board",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Ticket id"), crate::api::ActorHeader),
    request_body = AssignBody,
    responses(
        (status = 200, description = "The ticket, assigned", body = Ticket),
        (status = 400, description = "The id or the body is not valid", body = ErrorBody),
        (status = 404, description = "No such ticket or technician", body = ErrorBody),
        (status = 409, description = "The ticket's status does not allow it", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
async fn assign(
    State(St { b }): State<St>,
    _: Authorized<NeedsWrite>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    a: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Json<Ticket>, ApiError> {
    check_id("ticket", &id)?;
    let a = body(a)?;
    let actor = crate::api::fleet::actor(&headers);
    Ok(Json(
        blocking(move || b.assign(&id, &a.technician_id, &actor)).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ProposalBody {
    technician_id: String,
    slots: Vec<Slot>,
}

/// Offer the customer visit slots for a ticket.
#[utoipa::path(post, path = "/api/v1/tickets/{id}/proposal", tag = "board",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Ticket id"), crate::api::ActorHeader),
    request_body = ProposalBody,
    responses(
        (status = 200, description = "The ticket, with the proposal in its history", body = Ticket),
        (status = 400, description = "The id or the body is not valid", body = ErrorBody),
        (status = 404, description = "No such ticket or technician", body = ErrorBody),
        (status = 409, description = "The ticket's status does not allow it", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
async fn propose(
    State(St { b }): State<St>,
    _: Authorized<NeedsWrite>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    p: Result<Json<ProposalBody>, JsonRejection>,
) -> Result<Json<Ticket>, ApiError> {
    check_id("ticket", &id)?;
    let p = body(p)?;
    let actor = crate::api::fleet::actor(&headers);
    Ok(Json(
        blocking(move || b.propose(&id, &p.technician_id, &p.slots, &actor)).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VisitBody {
    technician_id: String,
    slot: Slot,
}

/// Book a visit: the ticket becomes scheduled.
#[utoipa::path(post, path = "/api/v1/tickets/{id}/visit", tag = "board",
    params(("id" = String, Path, pattern = r"^[^/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,128}$", description = "Ticket id"), crate::api::ActorHeader),
    request_body = VisitBody,
    responses(
        (status = 200, description = "The ticket, scheduled", body = Ticket),
        (status = 400, description = "The id or the body is not valid", body = ErrorBody),
        (status = 404, description = "No such ticket or technician", body = ErrorBody),
        (status = 409, description = "The ticket's status does not allow it", body = ErrorBody),
    ),
    security(("bearer" = ["write"])))]
async fn book(
    State(St { b }): State<St>,
    _: Authorized<NeedsWrite>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    v: Result<Json<VisitBody>, JsonRejection>,
) -> Result<Json<Ticket>, ApiError> {
    check_id("ticket", &id)?;
    let v = body(v)?;
    let actor = crate::api::fleet::actor(&headers);
    Ok(Json(
        blocking(move || b.schedule(&id, &v.technician_id, v.slot, &actor)).await?,
    ))
}
