//! The `ferry` binary: everything is in the library; see `ferry --help`.

/// mimalloc instead of glibc's malloc: a relayed request allocates and frees many small buffers
/// across threads, where glibc's arenas cost a node a tenth of its CPU (BENCHMARKS.md, issue 24).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
