//! Checkpoint tensors that live in a private file mapping instead of a copy of it.
//!
//! Reading a 4.1 GB checkpoint into fresh buffers costs two passes over it: the kernel zero-fills
//! every new page, then copies the page cache in (1.4–6.6 s warm on 2-vCPU VMs, most of it the
//! zero-fill). Mapped, a tensor's `Vec` points at the page cache itself; `MAP_PRIVATE` makes a
//! write copy the page and never reach the file. A `Vec` over a mapping is only sound when the
//! global allocator knows not to free it, so [`MappedFile::open`] maps only under
//! [`MappedAlloc`] (perceptio's binary installs it); elsewhere loaders keep reading.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

/// Marker for the plain value types a file's bytes may be viewed as: any bit pattern is valid.
///
/// # Safety
/// Implementors must have no padding and no invalid bit patterns.
pub unsafe trait Plain: Copy {}
// SAFETY: integers and IEEE floats of these widths accept every bit pattern.
unsafe impl Plain for u8 {}
unsafe impl Plain for f32 {}
unsafe impl Plain for half::f16 {}
unsafe impl Plain for half::bf16 {}

/// The system allocator, told apart from memory that belongs to a [`MappedFile`]: freeing a
/// vector that points into a mapping drops one reference to it (the last one unmaps the file),
/// and growing one copies it out. Install it with `#[global_allocator]`.
pub struct MappedAlloc;

/// Set by the first allocation through [`MappedAlloc`]: mapping is only allowed under it.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// One live mapping: its address range (0..0 when the slot is free) and its references (the
/// [`MappedFile`] itself and every vector handed out).
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    refs: AtomicUsize,
}

const SLOTS: usize = 64;
static REGIONS: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        refs: AtomicUsize::new(0),
    }
}; SLOTS];
/// One past the highest slot ever used, so a free scans only those.
static USED: AtomicUsize = AtomicUsize::new(0);
/// Serialises taking and clearing slots (never held while the allocator frees ordinary memory).
static SLOTS_LOCK: Mutex<()> = Mutex::new(());

/// The slot whose mapping holds `p`. A slot is filled start-first and cleared end-first, so a
/// half-written slot never matches, and it is cleared before its range is unmapped, so an address
/// the system reuses afterwards never matches a stale slot.
fn slot_of(p: usize) -> Option<usize> {
    let used = USED.load(SeqCst);
    (0..used).find(|&i| {
        let s = REGIONS[i].start.load(SeqCst);
        s != 0 && s <= p && p < REGIONS[i].end.load(SeqCst)
    })
}

/// Drop one reference to slot `i`; the last one clears the slot and unmaps its range.
fn release(i: usize) {
    if REGIONS[i].refs.fetch_sub(1, SeqCst) != 1 {
        return;
    }
    let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (s, e) = (REGIONS[i].start.load(SeqCst), REGIONS[i].end.load(SeqCst));
    REGIONS[i].end.store(0, SeqCst);
    REGIONS[i].start.store(0, SeqCst);
    #[cfg(target_os = "linux")]
    // SAFETY: [s, e) is the mapping this slot owned; nothing references it any more.
    unsafe {
        libc::munmap(s as *mut libc::c_void, e - s);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (s, e);
}

// SAFETY: every call is forwarded to `System` except frees and growths of memory inside a live
// mapping, which are never passed to it.
unsafe impl GlobalAlloc for MappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(std::sync::atomic::Ordering::Relaxed) {
            INSTALLED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match slot_of(ptr as usize) {
            Some(i) => release(i),
            // SAFETY: not a mapping's, so `System` allocated it.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(i) = slot_of(ptr as usize) else {
            // SAFETY: not a mapping's, so `System` allocated it.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        // SAFETY: new_size is non-zero and fits the alignment (the caller's guarantees).
        let new = unsafe { System.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !new.is_null() {
            // SAFETY: both ranges are valid for the smaller size and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            release(i);
        }
        new
    }
}

/// Live mappings (for tests and diagnostics).
pub fn live_mappings() -> usize {
    (0..USED.load(SeqCst))
        .filter(|&i| REGIONS[i].start.load(SeqCst) != 0)
        .count()
}

/// Whether `p` points into a live mapping.
pub fn is_mapped(p: *const u8) -> bool {
    slot_of(p as usize).is_some()
}

/// A whole file mapped copy-on-write; [`MappedFile::vec`] hands out vectors over its bytes.
/// The mapping outlives this handle until the last such vector is dropped. The file must not
/// be truncated meanwhile (reading a vanished page would raise SIGBUS); Hugging Face cache
/// blobs are never rewritten in place.
pub struct MappedFile {
    slot: usize,
    base: usize,
    len: usize,
}

impl MappedFile {
    /// Map `file`, or `None` where vectors over a mapping cannot be handed out: not Linux, the
    /// global allocator is not [`MappedAlloc`], an empty file, or every slot taken.
    pub fn open(file: &std::fs::File) -> std::io::Result<Option<Self>> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            if !INSTALLED.load(SeqCst) {
                return Ok(None);
            }
            let len = file.metadata()?.len() as usize;
            if len == 0 {
                return Ok(None);
            }
            let _g = SLOTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let Some(slot) =
                (0..SLOTS).find(|&i| REGIONS[i].start.load(SeqCst) == 0 && REGIONS[i].refs.load(SeqCst) == 0)
            else {
                return Ok(None);
            };
            // SAFETY: a fresh private mapping of an open file; nothing else refers to its range.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let base = p as usize;
            REGIONS[slot].refs.store(1, SeqCst);
            REGIONS[slot].start.store(base, SeqCst);
            REGIONS[slot].end.store(base + len, SeqCst);
            USED.fetch_max(slot + 1, SeqCst);
            Ok(Some(Self { slot, base, len }))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            Ok(None)
        }
    }

    /// The `n` values at byte `offset` of the file as a vector over the mapping, with their pages
    /// mapped in now (in parallel 32 MiB pieces, read-only until written), or `None` when they do
    /// not fit in the file or are not aligned for `T`.
    pub fn vec<T: Plain>(&self, offset: usize, n: usize) -> Option<Vec<T>> {
        let bytes = n.checked_mul(std::mem::size_of::<T>())?;
        if bytes == 0 || offset.checked_add(bytes)? > self.len {
            return None;
        }
        let at = self.base + offset;
        if !at.is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        #[cfg(target_os = "linux")]
        {
            use rayon::prelude::*;
            // MADV_POPULATE_READ (Linux 5.14) maps the pages without copying them; an older
            // kernel refuses it and they fault in on first use instead.
            const MADV_POPULATE_READ: libc::c_int = 22;
            const PIECE: usize = 32 << 20;
            let (a, e) = (
                at / 4096 * 4096,
                (at + bytes).next_multiple_of(4096).min(self.base + self.len),
            );
            (a..e).step_by(PIECE).collect::<Vec<_>>().into_par_iter().for_each(|s| {
                // SAFETY: [s, min(s + PIECE, e)) lies inside this live mapping.
                unsafe { libc::madvise(s as *mut libc::c_void, PIECE.min(e - s), MADV_POPULATE_READ) };
            });
        }
        REGIONS[self.slot].refs.fetch_add(1, SeqCst);
        // SAFETY: [at, at + bytes) lies inside the mapping, is aligned for T, and T accepts any bit
        // pattern. The vector's allocation is the mapping's: under MappedAlloc (required by open)
        // freeing it drops the reference taken above and growing it copies it out.
        Some(unsafe { Vec::from_raw_parts(at as *mut T, n, n) })
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        release(self.slot);
    }
}
