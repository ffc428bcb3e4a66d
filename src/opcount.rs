//! The operators this process has dispatched, when benchmarks/opcount.cpp is preloaded
//! (benchmarks/ops.sh does it); without it there is nothing to count and the step log leaves
//! the figures out. Looked up at run time, so the trainer carries no profiler of its own.

use std::ffi::c_void;
use std::sync::OnceLock;

type Counter = extern "C" fn() -> u64;

/// Operators dispatched so far, on all threads; `None` without the counter.
pub fn count() -> Option<u64> {
    static COUNTER: OnceLock<Option<Counter>> = OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        // SAFETY: dlsym with the process-wide handle and a NUL-terminated name only reads.
        let symbol: *mut c_void =
            unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"tsimcne_op_count".as_ptr()) };
        // SAFETY: the symbol, where present, is opcount.cpp's `uint64_t tsimcne_op_count()`.
        (!symbol.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, Counter>(symbol) })
    });
    counter.map(|f| f())
}
