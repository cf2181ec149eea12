//! What the fuzz targets share: running a check where courier runs it.

/// The stack of an actix-web worker thread: std's default for a spawned thread (actix-server
/// sets none). libFuzzer calls a target on the process's main thread, whose stack is four
/// times larger: a recursion that fits there can still overflow a worker, so the checks of
/// what a worker parses run on a thread of this size.
pub const WORKER_STACK: usize = 2 * 1024 * 1024;

/// Runs `check` on a thread with a worker's stack; a panic there is a panic here (a stack
/// overflow aborts the process, which libFuzzer reports as a crash).
pub fn on_worker_stack(check: impl FnOnce() + Send + 'static) {
    let worker = std::thread::Builder::new().stack_size(WORKER_STACK).spawn(check).expect("a thread");
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}
