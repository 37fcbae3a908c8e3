//! The board over plain HTTP against a running daemon: sign-in and its cookie, roles from token
//! scopes, CSRF on every form, and the JSON twins (technicians, proposals, visits) refusing what
//! does not fit.
#![cfg(feature = "embedded-broker")]

mod support;

use serde_json::{json, Value};
use support::daemon::*;
use support::http::{get_text, text_of};

const VIEWER: &str = "viewer-token";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of a hidden `csrf` field in a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].chars().take_while(|c| *c != '"').collect()
}

fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// The sign-in page as `proto` (the proxy's `x-forwarded-proto`, if any) sees it: the
/// `Cookie` pair of its login cookie and its form's CSRF token.
async fn login_form(http: &reqwest::Client, base: &str, proto: Option<&str>) -> (String, String) {
    let mut req = http.get(format!("{base}/board/login"));
    if let Some(p) = proto {
        req = req.header("x-forwarded-proto", p);
    }
    let r = req.send().await.unwrap();
    let login = cookie_of(&r, "fw_board_login").unwrap();
    let pair = login.split(';').next().unwrap().to_string();
    (pair, csrf_of(&r.text().await.unwrap()))
}

/// POSTs `form` to `url` with the session (or login) cookie `cookie`.
async fn post_form(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    http.post(url)
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

/// Signs in with `token`; returns the `Cookie` header value for the session.
async fn sign_in(http: &reqwest::Client, base: &str, token: &str, proto: &str) -> String {
    let (pair, csrf) = login_form(http, base, Some(proto)).await;
    let r = http
        .post(format!("{base}/board/login"))
        .header("cookie", &pair)
        .header("x-forwarded-proto", proto)
        .form(&[("csrf", csrf.as_str()), ("token", token), ("name", "Ana")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signed in");
    let c = cookie_of(&r, "fw_board").expect("a session cookie");
    assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/board"));
    assert_eq!(c.contains("Secure"), proto == "https", "{c}");
    c.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_roles_csrf_and_the_json_twins_hold() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-board-http");
    cfg.api.tokens.push(forewarn::api::TokenConfig::Scoped(
        forewarn::api::ScopedToken {
            token: VIEWER.into(),
            scope: forewarn::api::Scope::Read,
        },
    ));
    cfg.board.business_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(String::from)
        .to_vec();
    cfg.board.technicians = vec![forewarn::board::Technician {
        id: "t-1".into(),
        name: "Ana".into(),
        skills: vec!["overheat".into()],
        region: String::new(),
        hours: "08:00-17:00".into(),
    }];
    cfg.notify.link_secret = Some("board-http-link-secret-0123456789".into());
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let base = api.base.clone();
    let http = no_redirects();
    for (path, body) in [
        (
            "/api/v1/customers/cust-k",
            json!({"name": "บริษัท เค", "locale": "th", "time_zone": "Asia/Bangkok"}),
        ),
        ("/api/v1/devices/pump-k", json!({"customer_id": "cust-k"})),
    ] {
        let r = api.put(path, &body).await;
        assert!(r.status().is_success(), "{path}");
    }

    // Pages need a session; a wrong token or a forged sign-in form gets none.
    let r = http.get(format!("{base}/board")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let (pair, csrf) = login_form(&http, &base, None).await;
    let login = format!("{base}/board/login");
    let r = post_form(&http, &login, &pair, &[("csrf", &csrf), ("token", "nope")]).await;
    assert_eq!(r.status(), 401);
    assert!(cookie_of(&r, "fw_board").is_none());
    let r = http
        .post(format!("{base}/board/login"))
        .form(&[("csrf", "made-up"), ("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(
        cookie_of(&r, "fw_board").is_none(),
        "no sign-in without the form's token"
    );

    // A ticket to work on.
    let dev = mqtt(&b, "pump-h-pub").await;
    dev.publish_degrading("pump-h", 40).await;
    let id = api.first_ticket("pump-h").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A viewer reads but cannot act, and sees no action forms.
    let viewer = sign_in(&http, &base, VIEWER, "https").await;
    let page = http
        .get(format!("{base}/board/tickets/{id}"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(!html.contains("id=\"acknowledge\""));
    let acknowledge = format!("{base}/board/tickets/{id}/acknowledge");
    let r = post_form(&http, &acknowledge, &viewer, &[("csrf", &csrf_of(&html))]).await;
    assert_eq!(r.status(), 403);

    // A dispatcher acts only with the session's CSRF token.
    let admin = sign_in(&http, &base, TOKEN, "http").await;
    let html = text_of(
        http.get(format!("{base}/board/tickets/{id}"))
            .header("cookie", &admin),
    )
    .await;
    let csrf = csrf_of(&html);
    for bad in ["", "0000", &csrf[..csrf.len() - 1]] {
        let r = post_form(&http, &acknowledge, &admin, &[("csrf", bad)]).await;
        assert_eq!(r.status(), 403, "csrf {bad:?}");
    }
    assert_eq!(
        api.get_json(&format!("/api/v1/tickets/{id}")).await["status"],
        "open",
        "nothing changed"
    );
    let note = "ยืนยันแล้ว — دیده شد";
    let r = post_form(
        &http,
        &acknowledge,
        &admin,
        &[("csrf", &csrf), ("note", note)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let t = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(t["status"], "acknowledged");
    let last = t["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "board:Ana");
    assert_eq!(last["note"], "ยืนยันแล้ว — دیده شد");

    // The JSON twins: technicians (admin to change), slots, proposals that must fit.
    let viewer_api = http_with_token(VIEWER);
    let r = viewer_api
        .put(format!("{base}/api/v1/technicians/t-2"))
        .json(&json!({"id": "t-2", "name": "Bo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = api
        .put(
            "/api/v1/technicians/t-2",
            &json!({"id": "t-2", "name": "Bo", "hours": "25:00-26:00"}),
        )
        .await;
    assert_eq!(r.status(), 400, "bad hours are refused");
    let r = api
        .put(
            "/api/v1/technicians/t-2",
            &json!({"id": "t-2", "name": "Bo", "region": "south"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let techs: Value = api.get_json("/api/v1/technicians").await;
    assert_eq!(techs.as_array().unwrap().len(), 2);
    let slots: Value = api
        .get_json(&format!("/api/v1/tickets/{id}/slots?technician=t-1"))
        .await;
    let first = slots[0].clone();
    assert!(first["start_ms"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());
    // 03:00–05:00 is outside 08:00–17:00.
    let day = first["start_ms"].as_i64().unwrap() / 86_400_000 * 86_400_000 + 86_400_000;
    let night = json!({"start_ms": day + 3 * HOUR, "end_ms": day + 5 * HOUR});
    let r = api
        .post(
            &format!("/api/v1/tickets/{id}/proposal"),
            &json!({"technician_id": "t-1", "slots": [night]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = api
        .post(
            &format!("/api/v1/tickets/{id}/visit"),
            &json!({"technician_id": "t-1", "slot": first}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        api.get_json(&format!("/api/v1/tickets/{id}")).await["status"],
        "scheduled"
    );
    // The technician is busy then: another ticket is not offered that slot.
    let other: Value = api
        .get_json("/api/v1/tickets/T-other/slots?technician=t-1")
        .await;
    assert!(
        other.as_array().unwrap().iter().all(|s| *s != first),
        "a booked slot is offered again: {other}"
    );
    let visits: Value = api.get_json("/api/v1/visits").await;
    assert_eq!(visits.as_array().unwrap().len(), 1);

    // One conversation, two sides: the customer's page offers exactly the proposed slots, a
    // slot that was not proposed is refused, and the one they pick is booked.
    let dev = mqtt(&b, "pump-k-pub").await;
    dev.publish_degrading("pump-k", 40).await;
    let t = api.first_ticket("pump-k").await;
    let tk = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["customer_id"], "cust-k");
    let free: Value = api
        .get_json(&format!("/api/v1/tickets/{tk}/slots?technician=t-2"))
        .await;
    let offer = json!([free[1], free[3]]);
    let r = api
        .post(
            &format!("/api/v1/tickets/{tk}/proposal"),
            &json!({"technician_id": "t-2", "slots": offer}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let ticket = h.app.tickets().ticket(&tk).unwrap();
    let link = h
        .app
        .notifier()
        .link_for(&ticket, "cust-k", chrono::Utc::now().timestamp_millis());
    let path = &link[link.find("/notify/v1/s/").unwrap()..];
    let page = get_text(&http, format!("{base}{path}")).await;
    let offered: Vec<String> = page
        .split("name=\"slot\" value=\"")
        .skip(1)
        .map(|p| p.chars().take_while(|c| c.is_ascii_digit()).collect())
        .collect();
    let want: Vec<String> = [&free[1], &free[3]]
        .iter()
        .map(|s| s["start_ms"].to_string())
        .collect();
    assert_eq!(offered, want, "the page offers exactly the proposed slots");
    let r = http
        .post(format!("{base}{path}"))
        .form(&[
            ("action", "confirm"),
            ("slot", &free[2]["start_ms"].to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a slot that was not proposed");
    assert_eq!(
        api.get_json(&format!("/api/v1/tickets/{tk}")).await["status"],
        "open"
    );
    let r = http
        .post(format!("{base}{path}"))
        .form(&[("action", "confirm"), ("slot", &want[1])])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = api.get_json(&format!("/api/v1/tickets/{tk}")).await;
    assert_eq!(t["status"], "scheduled");
    let visits: Value = api.get_json("/api/v1/visits").await;
    let v = visits
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["ticket_id"] == json!(tk))
        .expect("the customer's choice is booked")
        .clone();
    assert_eq!(v["slot"], free[3]);
    assert_eq!(v["technician_id"], "t-2");
    assert_eq!(v["booked_by"], "customer:link");
    let page = get_text(&http, format!("{base}{path}")).await;
    assert!(!page.contains("name=\"slot\""), "the proposal is used up");

    // Sign-out ends the session.
    let logout = format!("{base}/board/logout");
    let r = post_form(&http, &logout, &admin, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{base}/board"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signed out");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_day_view_opens_on_the_day_of_the_daemons_clock() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-board-day");
    cfg.board.time_zone = "Asia/Bangkok".into();
    // 2026-01-01T20:00:00Z: already 2 January in Bangkok, and not today.
    let clock = forewarn::notify::ManualClock::new(1_767_297_600_000);
    let tok = tokio_util::sync::CancellationToken::new();
    let h = forewarn::serve::run_with_clock(cfg, tok.clone(), clock.clone())
        .await
        .unwrap();
    ready(&h).await;
    let base = format!("http://{}", h.api_addr);
    let http = no_redirects();
    let session = sign_in(&http, &base, TOKEN, "http").await;
    let day = format!("{base}/board/day");
    let page = text_of(http.get(&day).header("cookie", &session)).await;
    assert!(page.contains("value=\"2026-01-02\""), "{page}");
    // The clock moves a day on: so does the page's default day.
    clock.advance(std::time::Duration::from_secs(24 * 3600));
    let page = text_of(http.get(&day).header("cookie", &session)).await;
    assert!(page.contains("value=\"2026-01-03\""), "{page}");
    stop(h, tok).await;
}
