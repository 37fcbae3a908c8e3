//! Thin: parse the command line, run the command, map its failure to an exit code.

use clap::Parser;

/// See Cargo.toml: per-message allocations on the ingest path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = forewarn::cli::Cli::parse();
    if let Err(f) = forewarn::cli::run(cli) {
        eprintln!("forewarn: {}", f.message);
        std::process::exit(f.code);
    }
}
