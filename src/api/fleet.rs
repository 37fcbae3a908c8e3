//! The fleet-wide ticket API of cluster mode: any instance answers for the whole fleet.
//!
//! Each instance keeps the tickets of the partitions it owns (and, out of date, those of
//! partitions it owned before) in its own store. A read asks every live instance for its own
//! tickets — the request marked [`INSTANCE_SCOPE`] so the peer answers from its store and does
//! not fan out again — with the caller's `Authorization` header and `cluster.peer_timeout`, and
//! merges: of several copies of a ticket, the one from the instance holding the lease of the
//! device's partition wins, whatever the others say ([`merge`]); without that copy (the
//! partition is between owners) the most recently changed one does. A transition goes to the
//! owner only, so a ticket changes in one place. An instance that does not answer fails the
//! request with 503 naming it: a fleet list that silently missed a third of the fleet would be
//! worse than none.

use super::ApiError;
use crate::app::{Fleetwide, Peers};
use crate::domain::{Status, Ticket, Timestamp};
use axum::http::{HeaderMap, HeaderValue};
use std::collections::BTreeMap;

/// Request header that asks for this instance's own store only (what one instance sends to
/// another while answering for the fleet). Anyone may send it, as the OpenAPI description of
/// the ticket routes says: a read's answer is a subset of what the same token reads without
/// it; a transition is made on this instance's copy rather than forwarded to the owner.
pub const INSTANCE_SCOPE: &str = "x-forewarn-scope";

/// Request header of a board action made on the owner for a person signed in to another
/// instance's board: `board=<name>` (form-encoded), so the owner's history names the person
/// (`board:<name>`) as its own board would, not `api`. Read only on a request marked
/// [`INSTANCE_SCOPE`]; it grants nothing: the token's scope still decides, and a name given
/// at the board's sign-in is the person's own word there too.
pub const ACTOR: &str = "x-forewarn-actor";

/// The [`ACTOR`] header's value for the board user `name`.
pub fn actor_header(name: &str) -> Option<HeaderValue> {
    let v = form_urlencoded::Serializer::new(String::new())
        .append_pair("board", name)
        .finish();
    HeaderValue::from_str(&v).ok()
}

/// Who makes a change the API was asked for: `board:<name>` for a board action forwarded by
/// another instance ([`ACTOR`]), else `api`.
pub fn actor(headers: &HeaderMap) -> String {
    if !instance_scope(headers) {
        return "api".into();
    }
    headers
        .get(ACTOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            form_urlencoded::parse(v.as_bytes())
                .find(|(k, _)| k == "board")
                .map(|(_, n)| {
                    n.chars()
                        .filter(|c| !c.is_control())
                        .take(64)
                        .collect::<String>()
                })
        })
        .filter(|n| !n.trim().is_empty())
        .map_or_else(|| "api".to_string(), |n| format!("board:{n}"))
}

/// Whether the request asks for this instance's own answer only.
pub fn instance_scope(headers: &HeaderMap) -> bool {
    headers
        .get(INSTANCE_SCOPE)
        .is_some_and(|v| v.as_bytes() == b"instance")
}

/// One peer's answer: its tickets, none (404), or why it gave none.
enum Answer<T> {
    Found(T),
    NotFound,
}

fn unreachable(name: &str, url: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!(
        "cluster instance {name} ({url}) did not answer: {why}"
    ))
}

/// A failed call in words: a timeout says how long was waited; otherwise the innermost cause
/// (reqwest's own message only names the URL).
fn describe(e: &reqwest::Error, timeout: std::time::Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    match e.is_connect() {
        true => format!("cannot connect: {cause}"),
        false => cause.to_string(),
    }
}

fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    headers: &HeaderMap,
    peers: &Peers,
) -> reqwest::RequestBuilder {
    let mut r = http
        .request(method, url)
        .timeout(peers.timeout)
        .header(INSTANCE_SCOPE, HeaderValue::from_static("instance"));
    if let Some(a) = headers.get(axum::http::header::AUTHORIZATION) {
        r = r.header(reqwest::header::AUTHORIZATION, a.as_bytes());
    }
    // A board action made on the owner for a person signed in here.
    if let Some(a) = headers.get(ACTOR) {
        r = r.header(ACTOR, a.as_bytes());
    }
    r
}

/// GETs `path_and_query` from every live instance but this one; each answer is `(instance,
/// answer)`. The first instance without an address, or that does not answer, is the error;
/// so is a partition no live instance answers for (its owner's membership expired and no one
/// has taken it over yet), which no answer can make up for.
async fn gather<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    peers: &Peers,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Result<Vec<(String, Answer<T>)>, ApiError> {
    if let Some(why) = peers.incomplete() {
        return Err(ApiError::unavailable(why));
    }
    let calls = peers
        .apis
        .iter()
        .filter(|(name, _)| **name != peers.me)
        .map(|(name, api)| async move {
            let Some(api) = api else {
                return Err(ApiError::unavailable(format!(
                    "cluster instance {name} has not advertised its API address"
                )));
            };
            let url = format!("{}{path_and_query}", api.trim_end_matches('/'));
            let resp = request(http, reqwest::Method::GET, url, headers, peers)
                .send()
                .await
                .map_err(|e| unreachable(name, api, describe(&e, peers.timeout)))?;
            match resp.status() {
                s if s.is_success() => {
                    let v = resp
                        .json::<T>()
                        .await
                        .map_err(|e| unreachable(name, api, describe(&e, peers.timeout)))?;
                    Ok((name.clone(), Answer::Found(v)))
                }
                reqwest::StatusCode::NOT_FOUND => Ok((name.clone(), Answer::NotFound)),
                s => Err(unreachable(name, api, format!("status {s}"))),
            }
        });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

/// GETs `path_and_query` from every other live instance, each answering from its own store:
/// `(instance, its answer)`, `None` for a 404 (nothing there, or an instance without the
/// route). The first instance without an address, or that does not answer, is the error.
pub async fn from_each<T: serde::de::DeserializeOwned>(
    fw: &dyn Fleetwide,
    http: &reqwest::Client,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Result<Vec<(String, Option<T>)>, ApiError> {
    let peers = fw.peers();
    Ok(gather::<T>(http, &peers, headers, path_and_query)
        .await?
        .into_iter()
        .map(|(name, a)| match a {
            Answer::Found(v) => (name, Some(v)),
            Answer::NotFound => (name, None),
        })
        .collect())
}

/// Merges each instance's copies: one ticket per id, the owner's copy when there is one.
pub fn merge(
    copies: impl IntoIterator<Item = (String, Ticket)>,
    owner: impl Fn(&str) -> Option<String>,
) -> Vec<Ticket> {
    let mut best: BTreeMap<String, (bool, Timestamp, Ticket)> = BTreeMap::new();
    for (from, t) in copies {
        let authoritative = owner(&t.device_id).as_deref() == Some(from.as_str());
        let changed = Timestamp::parse(&t.updated_at).unwrap_or(t.opened_ms);
        let better = match best.get(&t.id) {
            None => true,
            Some((a, c, _)) => (authoritative, changed) > (*a, *c),
        };
        if better {
            best.insert(t.id.clone(), (authoritative, changed, t));
        }
    }
    best.into_values().map(|(_, _, t)| t).collect()
}

fn owner_of(fw: &dyn Fleetwide) -> impl Fn(&str) -> Option<String> + '_ {
    move |device| fw.owner(device)
}

/// `GET /api/v1/tickets` for the fleet. `mine` is this instance's list under `query` (the
/// caller's filters but status and limit: a status is applied after the merge, since a stale
/// copy's status may match where the owner's does not).
pub async fn list(
    fw: &dyn Fleetwide,
    http: &reqwest::Client,
    headers: &HeaderMap,
    query: &str,
    mine: Vec<Ticket>,
    status: Option<Status>,
    limit: usize,
) -> Result<Vec<Ticket>, ApiError> {
    let peers = fw.peers();
    let others: Vec<(String, Answer<Vec<Ticket>>)> =
        gather(http, &peers, headers, &format!("/api/v1/tickets?{query}")).await?;
    let copies =
        mine.into_iter()
            .map(|t| (peers.me.clone(), t))
            .chain(others.into_iter().flat_map(|(name, a)| {
                let list = match a {
                    Answer::Found(l) => l,
                    Answer::NotFound => Vec::new(),
                };
                list.into_iter().map(move |t| (name.clone(), t))
            }));
    let mut out: Vec<Ticket> = merge(copies, owner_of(fw))
        .into_iter()
        .filter(|t| status.is_none_or(|s| t.status == s))
        .collect();
    // The order of one instance's list (store::tickets).
    out.sort_by(|a, b| b.opened_ms.cmp(&a.opened_ms).then(a.id.cmp(&b.id)));
    out.truncate(limit);
    Ok(out)
}

/// `GET /api/v1/tickets/{id}` for the fleet: `None` when no instance has it.
pub async fn get(
    fw: &dyn Fleetwide,
    http: &reqwest::Client,
    headers: &HeaderMap,
    id: &str,
    mine: Option<Ticket>,
) -> Result<Option<Ticket>, ApiError> {
    let peers = fw.peers();
    let others: Vec<(String, Answer<Ticket>)> =
        gather(http, &peers, headers, &format!("/api/v1/tickets/{id}")).await?;
    let copies =
        mine.map(|t| (peers.me.clone(), t))
            .into_iter()
            .chain(others.into_iter().filter_map(|(name, a)| match a {
                Answer::Found(t) => Some((name, t)),
                Answer::NotFound => None,
            }));
    Ok(merge(copies, owner_of(fw)).into_iter().next())
}

/// Where a transition of a ticket of `device` must be made: `None` for here, or the owner's
/// name and API address.
pub fn transition_owner(
    fw: &dyn Fleetwide,
    device: &str,
) -> Result<Option<(String, String)>, ApiError> {
    let peers = fw.peers();
    let Some(owner) = fw.owner(device) else {
        return Err(ApiError::unavailable(format!(
            "the partition of device {device} has no owner right now (a hand-off is under way); \
             try again"
        )));
    };
    if owner == peers.me {
        return Ok(None);
    }
    match peers.apis.get(&owner) {
        Some(Some(api)) => Ok(Some((owner, api.clone()))),
        _ => Err(ApiError::unavailable(format!(
            "cluster instance {owner}, which owns device {device}'s partition, has not \
             advertised its API address"
        ))),
    }
}

/// POSTs `body` as JSON to `path` (from `/api/v1/…`) of the instance `owner` at `api`, marked
/// [`INSTANCE_SCOPE`] and with the caller's `Authorization`: the owner's status and body, as
/// they are. What the API's transitions and the board's actions use to change a ticket where
/// its device's partition is owned.
pub async fn post_to_owner(
    fw: &dyn Fleetwide,
    http: &reqwest::Client,
    headers: &HeaderMap,
    owner: &str,
    api: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(axum::http::StatusCode, axum::body::Bytes), ApiError> {
    let peers = fw.peers();
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let resp = request(http, reqwest::Method::POST, url, headers, &peers)
        .json(body)
        .send()
        .await
        .map_err(|e| unreachable(owner, api, describe(&e, peers.timeout)))?;
    let status = axum::http::StatusCode::from_u16(resp.status().as_u16())
        .map_err(|e| unreachable(owner, api, e))?;
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| unreachable(owner, api, describe(&e, peers.timeout)))?;
    Ok((status, bytes))
}

/// Forwards a transition to the owner and hands back its answer as it is (status and body).
pub async fn forward_transition(
    fw: &dyn Fleetwide,
    http: &reqwest::Client,
    headers: &HeaderMap,
    owner: &str,
    api: &str,
    id: &str,
    body: &serde_json::Value,
) -> Result<axum::response::Response, ApiError> {
    let path = format!("/api/v1/tickets/{id}/transitions");
    let (status, bytes) = post_to_owner(fw, http, headers, owner, api, &path, body).await?;
    Ok(axum::response::IntoResponse::into_response((
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: &str, device: &str, status: Status, updated: &str) -> Ticket {
        let mut t: Ticket = serde_json::from_value(serde_json::json!({
            "id": id, "device_id": device, "customer_id": null, "failure_mode": "bearing",
            "status": "open", "priority": "high", "probability": 0.9,
            "predicted_failure_at": null, "opened_at": "2026-01-01T00:00:00Z",
            "updated_at": updated, "model": {"name": "m", "version": "1"},
            "evidence": [], "history": [], "opened_ms": 0
        }))
        .expect("a ticket");
        t.status = status;
        t
    }

    #[test]
    fn a_forwarded_board_action_names_the_person_and_anything_else_is_the_apis() {
        let mut h = HeaderMap::new();
        h.insert(ACTOR, actor_header("Zoë Dispatch").expect("a header"));
        assert_eq!(
            actor(&h),
            "api",
            "only on a forwarded (instance-scoped) request"
        );
        h.insert(INSTANCE_SCOPE, HeaderValue::from_static("instance"));
        assert_eq!(actor(&h), "board:Zoë Dispatch");
        h.insert(ACTOR, HeaderValue::from_static("board="));
        assert_eq!(actor(&h), "api", "no name");
        h.insert(ACTOR, HeaderValue::from_static("board=a%0Ab"));
        assert_eq!(actor(&h), "board:ab", "no control characters");
        h.remove(ACTOR);
        assert_eq!(actor(&h), "api");
    }

    #[test]
    fn the_owners_copy_wins_even_over_a_newer_stale_one() {
        let owner = |d: &str| (d == "dev-1").then(|| "fw-b".to_string());
        let merged = merge(
            [
                (
                    "fw-a".to_string(),
                    ticket("t1", "dev-1", Status::Resolved, "2026-01-03T00:00:00Z"),
                ),
                (
                    "fw-b".to_string(),
                    ticket("t1", "dev-1", Status::Acknowledged, "2026-01-02T00:00:00Z"),
                ),
                (
                    "fw-a".to_string(),
                    ticket("t2", "dev-2", Status::Open, "2026-01-01T00:00:00Z"),
                ),
                (
                    "fw-c".to_string(),
                    ticket("t2", "dev-2", Status::Scheduled, "2026-01-02T00:00:00Z"),
                ),
            ],
            owner,
        );
        assert_eq!(merged.len(), 2, "one copy per ticket");
        assert_eq!(merged[0].status, Status::Acknowledged, "the owner's copy");
        assert_eq!(
            merged[1].status,
            Status::Scheduled,
            "no owner: the latest change"
        );
    }
}
