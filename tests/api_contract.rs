//! The committed API contract (`openapi.json`) and configuration reference
//! (`docs/config-reference.md`) are what the code generates, and the daemon serves the former.
//!
//! Regenerate both after changing a handler, an API type or a config struct:
//! `FOREWARN_REGENERATE=1 cargo test --test api_contract` (or `cargo run -- openapi >
//! openapi.json` and `cargo run -- config reference > docs/config-reference.md`).
#![cfg(feature = "embedded-broker")]

mod support;

use std::path::Path;
use support::daemon::*;
use support::process::{forewarn, succeeds};

const REGENERATE: &str = "FOREWARN_REGENERATE";

/// Compares a committed file with what the code generates; rewrites it under
/// `FOREWARN_REGENERATE=1`.
fn committed_is_current(file: &str, generated: &str, command: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    if std::env::var(REGENERATE).is_ok_and(|v| v == "1") {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or(committed.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "{file} is not what the code generates (first difference at line {line}). \
             Regenerate it with `{command}` (or `{REGENERATE}=1 cargo test --test api_contract`) \
             and commit it."
        );
    }
}

#[test]
fn the_committed_openapi_json_is_current() {
    committed_is_current(
        "openapi.json",
        forewarn::openapi::json(),
        "cargo run -- openapi > openapi.json",
    );
}

#[test]
fn the_committed_config_reference_is_current() {
    committed_is_current(
        "docs/config-reference.md",
        &forewarn::config_reference::markdown(),
        "cargo run -- config reference > docs/config-reference.md",
    );
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, x) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The keys `serve --print-config` prints (with every optional table present) are the keys the
/// reference documents, with their environment variables.
#[test]
fn every_printed_key_is_in_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.toml");
    // Optional tables set, so their keys are printed too.
    std::fs::write(
        &file,
        "[notify.email]\nhost = \"smtp.example\"\nfrom = \"fw@example.com\"\n\
         [notify.sms]\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15550001111\"\n\
         [notify.voice]\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15550001111\"\n\
         [notify.push]\nurl = \"https://push.example\"\n\
         [notify.webhook]\nsecret = \"sixteen-characters-or-more\"\n\
         [notify.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
    )
    .unwrap();
    let out = succeeds(
        forewarn()
            .args(["serve", "--print-config", "--config"])
            .arg(&file),
    );
    let printed: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let mut keys = Vec::new();
    flatten("", &printed, &mut keys);
    assert!(keys.len() > 80, "only {} keys printed", keys.len());

    let out = succeeds(forewarn().args(["config", "reference"]));
    let md = String::from_utf8(out.stdout).unwrap();
    let documented: Vec<String> = forewarn::config_reference::tables()
        .into_iter()
        .flat_map(|t| t.keys)
        .map(|k| k.dotted())
        .collect();
    for key in &keys {
        // A key inside a value that is itself a table of free names (none today) counts as
        // documented through that value's key.
        let known = documented
            .iter()
            .any(|d| key == d || key.starts_with(&format!("{d}.")));
        assert!(
            known,
            "`{key}` is printed by serve --print-config but not documented"
        );
        let env = format!("FOREWARN__{}", key.to_uppercase().replace('.', "__"));
        let last = key.rsplit('.').next().unwrap_or(key);
        assert!(
            md.contains(&format!("| `{last}` |")) && md.contains(&format!("`{env}`")),
            "`{key}` ({env}) is not in `forewarn config reference`"
        );
    }
    // And every documented key that has a default is one the configuration prints (keys unset
    // by default are not printed).
    for k in forewarn::config_reference::tables()
        .into_iter()
        .flat_map(|t| t.keys)
        .filter(|k| k.default.is_some())
    {
        let d = k.dotted();
        assert!(
            keys.iter()
                .any(|p| *p == d || p.starts_with(&format!("{d}."))),
            "`{d}` is documented with a default but serve --print-config does not print it"
        );
    }
}

/// The daemon serves the same document, without a token, on its API listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_its_openapi_document_without_a_token() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-openapi")).await;
    let r = reqwest::get(format!("http://{}/api/v1/openapi.json", h.api_addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: serde_json::Value = r.json().await.unwrap();
    // What `forewarn openapi` prints (and the committed file holds, checked above).
    let generated: serde_json::Value = serde_json::from_str(forewarn::openapi::json()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
    // Every route the daemon answers is described, the notifier's included.
    let paths = served["paths"].as_object().unwrap();
    for p in [
        "/api/v1/tickets",
        "/api/v1/tickets/{id}/transitions",
        "/api/v1/customers/{id}/timeline",
        "/api/v1/tickets/{id}/links/revoke",
        "/notify/v1/twilio/sms",
        "/notify/v1/s/{token}",
        "/metrics",
        "/readyz",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} is not described");
    }
    stop(h, tok).await;
}
