//! `forewarn fleet import`: loads the contract's `devices.csv` (and a `customers.csv`) into a
//! running daemon's registry through its API, customers first so devices can name them.

use super::{CliResult, Failure};
use crate::fleet::{customers_from_csv, devices_from_csv};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum FleetCommand {
    /// Upsert devices (and customers) into a running daemon through its API.
    Import(ImportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// devices.csv: `device_id,<attribute>…`; a `customer_id` column names the owner.
    #[arg(long)]
    pub devices: PathBuf,
    /// customers.csv: `customer_id,name,locale,time_zone,email,sms,…,preferences,quiet_hours`.
    #[arg(long)]
    pub customers: Option<PathBuf>,
    /// The daemon's API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Bearer token with the `write` scope (a `Secret`: the args' Debug never shows it).
    #[arg(long, env = "FOREWARN_API_TOKEN", hide_env_values = true)]
    pub token: crate::secret::Secret,
}

pub fn run(args: Args) -> CliResult {
    match args.command {
        FleetCommand::Import(a) => import(a),
    }
}

fn import(a: ImportArgs) -> CliResult {
    let devices = devices_from_csv(&a.devices).map_err(Failure::usage)?;
    let customers = match &a.customers {
        Some(p) => customers_from_csv(p).map_err(Failure::usage)?,
        None => vec![],
    };
    crate::tls::install_crypto();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    let base = a.api.trim_end_matches('/').to_string();
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let put = |path: String, body: serde_json::Value| {
            let req = http
                .put(format!("{base}{path}"))
                .bearer_auth(a.token.expose())
                .json(&body);
            async move {
                let r = req
                    .send()
                    .await
                    .map_err(|e| Failure::runtime(format!("PUT {path}: {e}")))?;
                let status = r.status();
                if status.is_success() {
                    return Ok(status == reqwest::StatusCode::CREATED);
                }
                let text = r.text().await.unwrap_or_default();
                let text: String = text.chars().take(300).collect();
                Err(Failure::runtime(format!("PUT {path}: {status}: {text}")))
            }
        };
        let (mut created, mut updated) = (0usize, 0usize);
        for c in &customers {
            let body = serde_json::to_value(c).map_err(Failure::runtime)?;
            match put(format!("/api/v1/customers/{}", c.id), body).await? {
                true => created += 1,
                false => updated += 1,
            }
        }
        for d in &devices {
            let body = serde_json::to_value(d).map_err(Failure::runtime)?;
            match put(format!("/api/v1/devices/{}", d.id), body).await? {
                true => created += 1,
                false => updated += 1,
            }
        }
        println!(
            "{}",
            serde_json::json!({
                "customers": customers.len(),
                "devices": devices.len(),
                "created": created,
                "updated": updated,
            })
        );
        Ok(())
    })
}
