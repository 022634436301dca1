//! The `switchyard` binary: parses the command line and hands off to the library.

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
