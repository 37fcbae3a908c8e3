//! `forewarn evaluate`.

use super::{CliResult, Failure};

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err(Failure::runtime("forewarn evaluate is not built yet"))
}
