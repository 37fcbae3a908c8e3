//! The board's JSON twins, behind the API's bearer tokens: technicians, visits, free slots, and
//! the ticket actions the board's forms take (assignment, proposal, visit) — the same
//! [`Board`] functions, so both sides change a ticket the same way.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /api/v1/technicians` | read | technicians (configuration and API) |
//! | `PUT /api/v1/technicians/{id}` | admin | add or replace one |
//! | `GET /api/v1/visits` | read | booked visits |
//! | `GET /api/v1/tickets/{id}/slots?technician=` | read | the technician's free slots |
//! | `POST /api/v1/tickets/{id}/assignment` | write | `{"technician_id"}` |
//! | `POST /api/v1/tickets/{id}/proposal` | write | `{"technician_id", "slots": [{"start_ms", "end_ms"}]}` |
//! | `POST /api/v1/tickets/{id}/visit` | write | `{"technician_id", "slot": {"start_ms", "end_ms"}}`: books and schedules |

use super::{Board, BoardError, Technician};
use crate::api::{check_id, ApiError, Auth, Authorized, NeedsAdmin, NeedsRead, NeedsWrite};
use crate::domain::{Slot, Ticket, Visit};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, Path, Query, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Clone)]
struct St {
    b: Arc<Board>,
}

impl FromRef<St> for Arc<Auth> {
    fn from_ref(s: &St) -> Arc<Auth> {
        s.b.auth.clone()
    }
}

pub fn routes(b: Arc<Board>) -> Router {
    Router::new()
        .route("/api/v1/technicians", get(list_technicians))
        .route("/api/v1/technicians/{id}", put(put_technician))
        .route("/api/v1/visits", get(list_visits))
        .route("/api/v1/tickets/{id}/slots", get(free_slots))
        .route("/api/v1/tickets/{id}/assignment", post(assign))
        .route("/api/v1/tickets/{id}/proposal", post(propose))
        .route("/api/v1/tickets/{id}/visit", post(book))
        .with_state(St { b })
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

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(ApiError::from)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BoardError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
        .map_err(ApiError::from)
}

async fn list_technicians(
    State(St { b }): State<St>,
    _: Authorized<NeedsRead>,
) -> Json<Vec<Technician>> {
    Json(b.technicians())
}

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

async fn list_visits(State(St { b }): State<St>, _: Authorized<NeedsRead>) -> Json<Vec<Visit>> {
    Json(b.visits())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotsQuery {
    technician: String,
}

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
    Ok(Json(b.free_slots(&tech, &id)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    technician_id: String,
}

async fn assign(
    State(St { b }): State<St>,
    _: Authorized<NeedsWrite>,
    Path(id): Path<String>,
    a: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Json<Ticket>, ApiError> {
    check_id("ticket", &id)?;
    let a = body(a)?;
    Ok(Json(
        blocking(move || b.assign(&id, &a.technician_id, "api")).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalBody {
    technician_id: String,
    slots: Vec<Slot>,
}

async fn propose(
    State(St { b }): State<St>,
    _: Authorized<NeedsWrite>,
    Path(id): Path<String>,
    p: Result<Json<ProposalBody>, JsonRejection>,
) -> Result<Json<Ticket>, ApiError> {
    check_id("ticket", &id)?;
    let p = body(p)?;
    Ok(Json(
        blocking(move || b.propose(&id, &p.technician_id, &p.slots, "api")).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VisitBody {
    technician_id: String,
    slot: Slot,
}

async fn book(
    State(St { b }): State<St>,
    _: Authorized<NeedsWrite>,
    Path(id): Path<String>,
    v: Result<Json<VisitBody>, JsonRejection>,
) -> Result<Json<Ticket>, ApiError> {
    check_id("ticket", &id)?;
    let v = body(v)?;
    Ok(Json(
        blocking(move || b.schedule(&id, &v.technician_id, v.slot, "api")).await?,
    ))
}
