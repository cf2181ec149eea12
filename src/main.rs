//! The `courier` binary: parse the command line and run it (see `courier::cli`).

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    courier::allocator::small_pages();
    courier::allocator::keep_freed_memory();
    courier::cli::main()
}
