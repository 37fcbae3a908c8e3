//! Thin: parse the command line, run the command, map its failure to an exit code.

use clap::Parser;

/// See Cargo.toml: per-message allocations on the ingest path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own setter: the `mimalloc` crate exposes no options, the linked C library has it.
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc 2's and 3's `mi_option_e` (libmimalloc-sys 0.1.49).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long mimalloc keeps freed memory before giving it back to the kernel. Its default (10 ms)
/// gives back what the processing thread frees between groups and takes again in the next one,
/// and the kernel zeroes every page again at the next touch: ~12 % of the daemon's CPU in the
/// keep-up benchmark. A second keeps that memory while the stream flows and still returns it
/// when the daemon goes quiet. `MIMALLOC_PURGE_DELAY` in the environment wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator linked in through `GLOBAL` (any value
        // is valid; -1 never purges), first thing in `main`, before forewarn starts a thread.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
}

fn main() {
    tune_allocator();
    let cli = forewarn::cli::Cli::parse();
    if let Err(f) = forewarn::cli::run(cli) {
        eprintln!("forewarn: {}", f.message);
        std::process::exit(f.code);
    }
}
