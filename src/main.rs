//! The `switchyard` binary: parses the command line and hands off to the library.

// Rooms of a readable size (thresholds in clippy.toml): tests may be longer.
#![deny(clippy::too_many_lines, clippy::cognitive_complexity)]

/// mimalloc: per-thread free lists suit a proxy's many short-lived, same-sized allocations better than
/// the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
