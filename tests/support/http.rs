//! Reading a daemon over plain HTTP when there is no in-process handle (a child process).

use std::time::Duration;

/// GET a URL; `None` when the daemon is not answering.
pub async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let s = r.status().as_u16();
    Some((s, r.text().await.ok()?))
}

/// The body of a GET that must answer (any status).
pub async fn get_text(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    text_of(http.get(url)).await
}

/// Sends `req`, which must be answered, and reads the body as text (any status).
pub async fn text_of(req: reqwest::RequestBuilder) -> String {
    req.send().await.unwrap().text().await.unwrap()
}

/// Sends `req`, which must be answered, and reads the body as JSON (any status).
pub async fn json_of<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> T {
    req.send().await.unwrap().json().await.unwrap()
}

/// `/readyz` of the daemon at `addr`: its status and its JSON body; `None` when it is not
/// answering.
pub async fn readyz(http: &reqwest::Client, addr: &str) -> Option<(u16, serde_json::Value)> {
    let (status, body) = get(http, &format!("http://{addr}/readyz")).await?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// One sample of a Prometheus text exposition (`name` includes any labels, e.g.
/// `forewarn_rejected_total{reason="invalid_json"}`).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    })
}

/// One sample of the /metrics of the daemon at `addr`; `None` when it is not answering or
/// has no such sample.
pub async fn metric(http: &reqwest::Client, addr: &str, name: &str) -> Option<f64> {
    let (_, text) = get(http, &format!("http://{addr}/metrics")).await?;
    sample(&text, name)
}
