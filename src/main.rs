//! The `switchyard` binary: parses the command line and hands off to the library.

// Rooms of a readable size (thresholds in clippy.toml): tests may be longer.
#![deny(clippy::too_many_lines, clippy::cognitive_complexity)]

/// mimalloc: per-thread free lists suit a proxy's many short-lived, same-sized allocations better than
/// the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's collection on the calling thread: retired pages go back to its arenas, and free
/// arena memory back to the system at once. Run by an idle connection's worker thread
/// (`front::give_back_memory_with`).
#[allow(unsafe_code)]
fn collect_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called on any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> std::process::ExitCode {
    // TLS listeners sign each handshake with the certificate's key: aws-lc's RSA and ECDSA use the
    // CPU's wide-multiply instructions (AVX-512 IFMA where there are), ring's do not. Installed
    // before Pingora installs ring as the process default (perf/RESULTS-h2.md, handshakes).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    switchyard::front::give_back_memory_with(collect_memory);
    switchyard::cli::main()
}
