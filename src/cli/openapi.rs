//! `forewarn openapi`: the OpenAPI 3.1 document of the HTTP API, as `openapi.json` holds it and
//! `GET /api/v1/openapi.json` serves it.

use super::CliResult;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    print!("{}", crate::openapi::json());
    Ok(())
}
