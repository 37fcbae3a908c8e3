//! `forewarn demo`.

use super::{CliResult, Failure};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(Failure::runtime("forewarn demo is not built yet"))
}
