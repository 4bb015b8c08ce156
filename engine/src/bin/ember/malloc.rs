//! The allocator configuration of the `ember` process: glibc's malloc, bounded.
//!
//! What holds a running pipeline's memory (heaptrack and `/proc/PID/smaps` on the word
//! count, BENCHMARKS.md "Memory at 2 M and 50 M lines"): the receiver's block buffers
//! (`receiver_queue_blocks_max + 2` of `block_size_max_bytes + socket_read_chunk_bytes`, one
//! more at times), the per-block hash maps of the map-side combine until they are folded into
//! their batch, the per-batch folds and the state; the executable's own pages (about 7 MB).
//! What glibc does with freed memory is not set by the configuration: by default
//! - an allocation of 128 KiB or more is served by `mmap` and returned at `free`, but the
//!   first such `free` raises the threshold to the freed size (up to 32 MiB), so from then on
//!   block buffers and large hash tables come from the heap and may stay there when freed;
//! - each thread that allocates gets an arena of its own (up to 8 per core), and memory
//!   freed into one arena is reused only by that arena.
//!
//! Fixing the thresholds keeps every large buffer and table on `mmap` (returned to the
//! kernel when freed), and two arenas keep the small allocations of the receiver, the
//! workers and the job thread in two heaps that reuse each other's frees. Measured through
//! the environment first (`MALLOC_MMAP_THRESHOLD_` etc.), this took the 20 M / 2 M peak RSS
//! ratio from about 1.5x to 1.1-1.25x with 1 MiB blocks. A `malloc_trim` every 200 ms was
//! tried as well and changed nothing measurable: what still varies between runs is live
//! data. Allocation is well under 1% of the pipeline's profile, so neither setting costs
//! measurable throughput. An operator's `MALLOC_*` environment variables are read by glibc
//! before `main`; this runs after them and overrides only what it sets.

/// Large allocations (block buffers, hash tables of thousands of keys) at or above this go
/// to `mmap` and back to the kernel when freed: glibc's default threshold, but fixed (an
/// explicit value turns off the dynamic raise).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 128 << 10;

/// Free memory at the top of a heap beyond this is returned to the kernel (glibc's default,
/// fixed for the same reason).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: libc::c_int = 128 << 10;

/// At most this many malloc arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS_MAX: libc::c_int = 2;

/// Configures glibc's malloc as the module docs say; call first thing in `main`, before any
/// thread starts. A no-op on other C libraries. A setting glibc refuses is left at its
/// default (the process works either way; only its memory profile differs).
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (libc::M_ARENA_MAX, ARENAS_MAX),
    ] {
        // SAFETY: mallopt only changes malloc's tunables; it is called before any other
        // thread exists, with parameters and values glibc documents (mallopt(3)).
        unsafe {
            libc::mallopt(param, value);
        }
    }
}
