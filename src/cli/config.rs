//! `forewarn config reference`: every configuration key, generated from the config structs, as
//! Markdown (`docs/config-reference.md` is its output).

use super::CliResult;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Print the reference of every key: section, key, type, default, environment variable,
    /// description, and which are secrets (Markdown).
    Reference,
}

pub fn run(args: Args) -> CliResult {
    match args.action {
        Action::Reference => print!("{}", crate::config_reference::markdown()),
    }
    Ok(())
}
