//! `forewarn train`.

use super::{CliResult, Failure};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(Failure::runtime("forewarn train is not built yet"))
}
