//! The `ferry` binary: everything is in the library; see `ferry --help`.

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
