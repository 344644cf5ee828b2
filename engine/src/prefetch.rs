//! Asking the CPU to start loading an element into its caches before it is
//! read: for loops whose next reads are known ahead but land at random in
//! arrays larger than the caches (a member's value code in a breakdown, an
//! edge's ends in the union-find), so that the misses overlap the work in
//! between instead of stalling it one by one.

/// Starts loading `items[i]` into the caches; nothing for an `i` past the
/// end, and nothing at all off x86-64.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(items: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < items.len() {
        // SAFETY: SSE is in every x86-64 CPU, and a prefetch neither reads
        // into the program nor faults; the address is inside `items`.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(items.as_ptr().add(i).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, i);
}
