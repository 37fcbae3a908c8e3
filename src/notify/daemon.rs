//! Glue to the daemon (`serve`): the notifier hooks into the commit of every ticket change, adds
//! its routes to the API server and runs its worker on the daemon's shutdown token; the daemon's
//! [`App`] is the [`TicketDesk`] through which replies move tickets (single writer).

use super::{Notifier, NotifyError, TicketDesk};
use crate::config::Config;
use crate::engine::Change;
use crate::fleet::{Customer, Device};
use crate::serve::{App, Hooks, OnTicketChange};
use crate::store::Tx;
use crate::tickets::{Status, Ticket};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

impl OnTicketChange for Notifier {
    fn on_ticket_change(
        &self,
        tx: &mut Tx,
        change: &Change,
        customer: Option<&Customer>,
        device: Option<&Device>,
        now_wall_ms: i64,
    ) {
        Notifier::on_ticket_change(self, tx, change, customer, device, now_wall_ms)
    }
}

impl TicketDesk for App {
    fn ticket(&self, id: &str) -> Option<Ticket> {
        App::ticket(self, id)
    }
    fn customer_reply(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
    ) -> Result<Ticket, String> {
        App::customer_reply(self, id, to, actor, note)
    }
    fn customer(&self, id: &str) -> Option<Customer> {
        App::customer(self, id)
    }
    fn device(&self, id: &str) -> Option<Device> {
        App::device(self, id)
    }
}

/// The daemon's hooks for notifications: built (templates checked, providers set up) before
/// anything starts, so a bad template or provider table is a config error at start.
pub fn hooks(cfg: &Config) -> Result<Hooks, NotifyError> {
    let registry = prometheus::Registry::new();
    let n = Arc::new(Notifier::build(
        &cfg.notify,
        &cfg.api.public_url,
        &registry,
    )?);
    let on_change: Arc<dyn OnTicketChange> = n.clone();
    let for_routes = n.clone();
    Ok(Hooks {
        registry: Some(registry),
        on_change: Some(on_change),
        routes: Some(Box::new(move |app: Arc<App>| {
            let desk: Arc<dyn TicketDesk> = app.clone();
            let auth_app = app.clone();
            for_routes
                .routes(app.store.clone(), desk)
                .layer(axum::middleware::from_fn(
                    move |req: Request, next: Next| {
                        let app = auth_app.clone();
                        async move { read_auth(&app, req, next).await }
                    },
                ))
        })),
        workers: vec![Box::new(move |app: Arc<App>, token| {
            let desk: Arc<dyn TicketDesk> = app.clone();
            n.spawn_worker(app.store.clone(), desk, token)
        })],
    })
}

/// The timeline is an API read: token-protected when `api.protect_reads` is set. Provider
/// webhooks carry their own signatures and the self-service page its signed token.
async fn read_auth(app: &App, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/api/") {
        if let Err(e) = crate::api::authorize(app, req.headers(), false) {
            return e.into_response();
        }
    }
    next.run(req).await
}
