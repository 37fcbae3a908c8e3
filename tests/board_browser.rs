//! The dispatch board in a real browser (headless Chromium over WebDriver) against a running
//! daemon with a real broker and store: a dispatcher signs in, sees a ticket appear live, opens
//! it, assigns a technician and proposes slots; the customer, in a second browser, opens their
//! link and picks a slot; the board updates by itself; the dispatcher resolves with an outcome.
//! Every page is screenshotted at 1280 and 390 px under `target/board-screenshots/`, checked
//! with axe-core (no serious or critical violations) and for sideways scrolling, and the queue
//! is worked by keyboard alone.
//!
//! axe-core comes from the npm registry into `target/axe/` when it is not there yet. Without
//! Chromium, chromedriver or npm the test skips, and under `CI=true` it fails (`.ci/run`
//! installs them).
#![cfg(feature = "embedded-broker")]

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::browser::{chromium, Driver, Viewport, ENTER, TAB};
use support::daemon::*;

const DISPATCH_TOKEN: &str = "dispatcher-token";
const PERSIAN: &str = "شرکت انرژی پارس";
const THAI: &str = "บริษัท สยามห้องเย็น";

/// axe-core's script, installed from the npm registry into `target/axe` when missing.
fn axe_source(root: &Path) -> Option<String> {
    let dir = root.join("target/axe");
    let file = dir.join("node_modules/axe-core/axe.min.js");
    if !file.exists() {
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("axe-core@4")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
    }
    std::fs::read_to_string(file).ok()
}

/// Runs axe-core in the page; panics on serious or critical violations.
async fn axe(d: &Driver, src: &str, page: &str) {
    // Evaluated as the test's own script (the page's CSP allows no inline script): it sets
    // `window.axe`.
    let loaded = d
        .script(&format!(
            "if (!window.axe) {{ {src}\n}} return !!window.axe"
        ))
        .await;
    assert_eq!(loaded, Value::Bool(true), "{page}: axe-core did not load");
    let r = d
        .script_async(
            "var done = arguments[arguments.length - 1];\
             axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}})\
               .then(function (r) { done(r.violations.map(function (v) {\
                 return {id: v.id, impact: v.impact, nodes: v.nodes.map(function (n) { return n.html; }).slice(0, 3)}; })); })\
               .catch(function (e) { done([{id: 'axe-error', impact: 'critical', nodes: [String(e)]}]); });",
        )
        .await;
    let list = r.as_array().cloned().unwrap_or_default();
    let bad: Vec<&Value> = list
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(bad.is_empty(), "{page}: accessibility violations: {bad:#?}");
    if !list.is_empty() {
        eprintln!("{page}: minor accessibility findings: {list:?}");
    }
}

/// Screenshots at 1280 and 390 px; at 390 the page must not scroll sideways.
async fn shoot(d: &Driver, out: &Path, name: &str) {
    for w in [1280u32, 390] {
        d.viewport(Some(w)).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let fits = d
            .script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
            .await;
        assert_eq!(fits, Value::Bool(true), "{name} scrolls sideways at {w} px");
        d.screenshot(&out.join(format!("{name}-{w}.png"))).await;
    }
    d.viewport(None).await;
}

async fn put(api: &Api, path: &str, body: Value) {
    let r = http_with_token(TOKEN)
        .put(format!("{}{path}", api.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

async fn degrade(b: &forewarn::broker::EmbeddedBroker, device: &str) {
    let dev = mqtt(b, &format!("{device}-pub")).await;
    dev.publish_degrading(device, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_works_a_ticket_from_the_board_and_the_customer_books_the_visit() {
    let Some((chrome, chromedriver)) = chromium() else {
        support::ci::cannot_run("board_browser", "chromium or chromedriver is not installed");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(axe_src) = axe_source(&root) else {
        support::ci::cannot_run("board_browser", "npm could not install axe-core");
        return;
    };
    let out = root.join("target/board-screenshots");
    std::fs::create_dir_all(&out).unwrap();

    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-board");
    cfg.api.tokens.push(forewarn::api::TokenConfig::Scoped(
        forewarn::api::ScopedToken {
            token: DISPATCH_TOKEN.into(),
            scope: forewarn::api::Scope::Write,
        },
    ));
    cfg.notify.link_secret = Some("board-link-secret-0123456789".into());
    // Every day is a business day, so the test finds free slots whenever it runs.
    cfg.board.business_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(String::from)
        .to_vec();
    cfg.board.business_hours = "00:00-23:59".into();
    cfg.board.technicians = vec![
        forewarn::board::Technician {
            id: "t-niloufar".into(),
            name: "نیلوفر".into(),
            skills: vec!["overheat".into()],
            region: "north".into(),
            hours: "06:00-22:00".into(),
        },
        forewarn::board::Technician {
            id: "t-somsak".into(),
            name: "สมศักดิ์".into(),
            skills: vec![],
            region: String::new(),
            hours: String::new(),
        },
    ];
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let base = api.base.clone();
    put(
        &api,
        "/api/v1/customers/pars",
        json!({"name": PERSIAN, "locale": "fa", "time_zone": "Asia/Tehran"}),
    )
    .await;
    put(
        &api,
        "/api/v1/customers/siam",
        json!({"name": THAI, "locale": "th", "time_zone": "Asia/Bangkok"}),
    )
    .await;
    put(
        &api,
        "/api/v1/customers/acme",
        json!({"name": "Acme Water", "locale": "en"}),
    )
    .await;
    put(
        &api,
        "/api/v1/devices/pump-fa",
        json!({"customer_id": "pars", "attributes": {"region": "north"}}),
    )
    .await;
    put(
        &api,
        "/api/v1/devices/chiller-th",
        json!({"customer_id": "siam", "attributes": {"region": "south"}}),
    )
    .await;

    // A dispatcher signs in.
    let d = Driver::start(&chrome, &chromedriver, Viewport::Desktop(1280)).await;
    d.go(&format!("{base}/board")).await;
    assert!(d.url().await.ends_with("/board/login"), "sign-in first");
    shoot(&d, &out, "login").await;
    axe(&d, &axe_src, "login").await;
    d.type_into("#name", "Dana").await;
    d.type_into("#token", DISPATCH_TOKEN).await;
    d.click("#sign-in").await;
    d.wait_for("the queue", "document.getElementById('counts')", 10)
        .await;
    assert!(d.text(".who").await.contains("dispatcher"));

    // A ticket appears while the page is open, without a reload.
    d.script("window.stillHere = 1; return 0").await;
    degrade(&b, "pump-fa").await;
    d.wait_for(
        "a ticket row, live",
        "document.querySelectorAll('a.ticket-link').length >= 1",
        20,
    )
    .await;
    assert_eq!(d.script("return window.stillHere").await, json!(1));
    degrade(&b, "chiller-th").await;
    d.wait_for(
        "the second ticket, live",
        "document.querySelectorAll('a.ticket-link').length >= 2",
        20,
    )
    .await;
    assert_eq!(d.script("return window.stillHere").await, json!(1));
    let queue = d.text("#queue").await;
    assert!(queue.contains(PERSIAN) && queue.contains(THAI), "{queue}");
    let dir_auto = d
        .script("return Array.from(document.querySelectorAll('a[href^=\"/board/customers/\"]')).every(function (a) { return a.dir === 'auto'; })")
        .await;
    assert_eq!(dir_auto, json!(true), "customer names carry dir=auto");
    let tickets = api.tickets("?device_id=pump-fa").await;
    let id = tickets[0]["id"].as_str().unwrap().to_string();
    shoot(&d, &out, "queue").await;
    axe(&d, &axe_src, "queue").await;

    // Filters: by region, then back.
    d.go(&format!("{base}/board?region=south")).await;
    assert_eq!(
        d.script("return document.querySelectorAll('a.ticket-link').length")
            .await,
        json!(1)
    );
    d.go(&format!("{base}/board")).await;

    // The queue by keyboard alone: Tab reaches every filter, then every ticket; Enter opens one.
    d.script(
        "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); return 0",
    )
    .await;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..60 {
        d.press(TAB).await;
        let who = d
            .script("var e = document.activeElement; return e.id || e.getAttribute('href') || e.tagName")
            .await;
        seen.push(who.as_str().unwrap_or_default().to_string());
    }
    let pos = |x: &str| seen.iter().position(|s| s == x);
    for f in [
        "f-status",
        "f-customer",
        "f-mode",
        "f-region",
        "f-breached",
        "apply",
    ] {
        assert!(pos(f).is_some(), "Tab never reached {f}: {seen:?}");
    }
    let link = format!("/board/tickets/{id}");
    let first_ticket = pos(&link).unwrap_or_else(|| panic!("Tab never reached {link}: {seen:?}"));
    assert!(pos("apply").unwrap() < first_ticket, "filters come first");
    d.script(&format!(
        "document.querySelector('a[href=\"{link}\"]').focus(); return 0"
    ))
    .await;
    d.press(ENTER).await;
    d.wait_for(
        "the ticket page",
        "document.getElementById('ticket-id')",
        10,
    )
    .await;
    assert!(d.url().await.ends_with(&link));

    // The ticket: evidence in words and a chart, then assign and propose.
    assert!(d.text("#evidence").await.contains("temp"));
    assert_eq!(
        d.script("return document.querySelectorAll('#chart svg[role=img]').length > 0")
            .await,
        json!(true)
    );
    shoot(&d, &out, "ticket").await;
    axe(&d, &axe_src, "ticket").await;
    d.click("#acknowledge").await;
    d.wait_for(
        "acknowledged",
        "document.getElementById('status').dataset.status === 'acknowledged'",
        10,
    )
    .await;
    d.click("#technician-select option[value='t-niloufar']")
        .await;
    d.click("#assign").await;
    d.wait_for("the slots", "document.getElementById('propose')", 10)
        .await;
    assert!(d.text("#technician").await.contains("نیلوفر"));
    d.click("#slot-2").await;
    d.click("#slot-3").await;
    d.click("#propose").await;
    d.wait_for("the proposal", "document.getElementById('proposal')", 10)
        .await;
    let proposed = d.text("#proposal").await;
    let link = d
        .script("return document.getElementById('customer-link').href")
        .await
        .as_str()
        .unwrap()
        .to_string();

    // The customer, in a browser of their own, sees exactly the proposed slots and picks one.
    {
        let c = Driver::start(&chrome, &chromedriver, Viewport::Phone(390)).await;
        // The link names `api.public_url`; the test's daemon listens on a port of its own.
        let path = &link[link.find("/notify/v1/s/").expect("a self-service link")..];
        c.go(&format!("{base}{path}")).await;
        let offered = c
            .script("return document.querySelectorAll('#slots input[type=radio]').length")
            .await;
        assert_eq!(
            offered,
            json!(2),
            "the page offers the two proposed slots: {}",
            c.text("body").await
        );
        assert_eq!(c.script("return document.documentElement.dir").await, "rtl");
        c.screenshot(&out.join("customer-page-390.png")).await;
        axe(&c, &axe_src, "customer's page").await;
        c.click("#slot-1").await;
        c.click("#confirm").await;
        c.wait_for("thanks", "document.getElementById('thanks')", 10)
            .await;
    }
    // The board shows it without a reload: scheduled, with the visit the customer chose.
    d.script("window.stillHere = 2; return 0").await;
    d.wait_for(
        "scheduled on the board",
        "document.getElementById('status').dataset.status === 'scheduled'",
        15,
    )
    .await;
    assert_eq!(d.script("return window.stillHere").await, json!(2));
    let visit = d.text("#visit").await;
    assert!(
        proposed
            .lines()
            .nth(1)
            .is_some_and(|second| second.trim() == visit.trim()),
        "the visit is the second proposed slot: {visit:?} of {proposed:?}"
    );
    let visits: Value = api.get_json("/api/v1/visits").await;
    assert_eq!(visits[0]["ticket_id"], json!(id));
    assert_eq!(visits[0]["technician_id"], "t-niloufar");
    assert_eq!(visits[0]["booked_by"], "customer:link");
    assert!(d.text("#history").await.contains("customer:link"));

    // The day view shows the visit against the technician.
    let day = visits[0]["slot"]["start_ms"].as_i64().unwrap();
    let date = chrono::DateTime::from_timestamp_millis(day)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    d.go(&format!("{base}/board/day?date={date}")).await;
    assert!(d.text("table.day").await.contains(&id));
    shoot(&d, &out, "day").await;
    axe(&d, &axe_src, "day").await;
    for (name, path) in [
        ("device", "/board/devices/pump-fa".to_string()),
        ("customer", "/board/customers/pars".to_string()),
    ] {
        d.go(&format!("{base}{path}")).await;
        shoot(&d, &out, name).await;
        axe(&d, &axe_src, name).await;
    }
    assert!(d.text("h1").await.contains(PERSIAN));
    d.go(&format!("{base}/board/devices/pump-fa")).await;
    assert_eq!(
        d.script("return document.querySelectorAll('svg.spark').length > 0")
            .await,
        json!(true)
    );

    // Resolved with an outcome: the training label.
    d.go(&format!("{base}/board/tickets/{id}")).await;
    d.click("#outcome-replaced_part").await;
    d.type_into("#resolve-note", "fan replaced").await;
    d.click("#resolve").await;
    d.wait_for(
        "resolved",
        "document.getElementById('status').dataset.status === 'resolved'",
        10,
    )
    .await;
    let t: Value = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(t["status"], "resolved");
    assert_eq!(t["outcome"], "confirmed_fault");
    let last = &t["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "board:Dana");
    assert_eq!(last["note"], "replaced part: fan replaced");

    // A form without this session's CSRF token changes nothing.
    let other = d
        .script(&format!(
            "return fetch('/board/tickets/{id}/dismiss', {{method: 'POST', credentials: 'same-origin', \
             headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, body: 'csrf=forged'}}).then(function (r) {{ return r.status; }})"
        ))
        .await;
    assert_eq!(other, json!(403));
    drop(d);
    stop(h, tok).await;
}
