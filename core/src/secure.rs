//! Memory for long-lived secrets (a backend's master key, its cached AES key
//! schedule): pages of their own, mapped anonymously so that they can be
//! excluded from core dumps (MADV_DONTDUMP) and locked out of swap (mlock)
//! without affecting any other allocation, and wiped before they are
//! returned to the kernel.
//!
//! Locking is best effort: RLIMIT_MEMLOCK (`ulimit -l`) may be small or
//! zero for the server, and a secret that could be swapped is still better
//! than a backend that refuses to work. Exclusion from dumps is not: it is
//! the point of these pages, so a mapping that cannot get it is an error.
//!
//! Limits: a value is moved into its pages from the caller's stack, and that
//! stack copy is not wiped (Rust moves leave the source behind); build byte
//! keys in place with [`SecureBox::zeroed`] where it matters.

use std::fmt;
use std::mem::{self, MaybeUninit};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use zeroize::Zeroize;

/// The pages for a secret could not be mapped or excluded from dumps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot allocate protected memory for key material: {0}")]
pub struct SecureAllocError(String);

/// One `T` alone on its own anonymous pages: not dumped, locked where
/// allowed, wiped on drop.
pub struct SecureBox<T> {
    ptr: NonNull<T>,
    map_len: usize,
    locked: bool,
}

// SAFETY: a SecureBox owns its `T` exclusively, like `Box<T>`; the mapping
// is private to the process and not tied to a thread.
unsafe impl<T: Send> Send for SecureBox<T> {}
// SAFETY: shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for SecureBox<T> {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// Maps `len` bytes (a multiple of the page size) of zeroed, protected
/// memory; returns the mapping and whether it is locked.
fn map(len: usize) -> Result<(NonNull<u8>, bool), SecureAllocError> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(SecureAllocError(std::io::Error::last_os_error().to_string()));
    }
    let Some(ptr) = NonNull::new(p as *mut u8) else {
        return Err(SecureAllocError("mmap returned a null mapping".into()));
    };
    // SAFETY: `p` is the mapping of `len` bytes made above.
    if unsafe { libc::madvise(p, len, libc::MADV_DONTDUMP) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: unmapping our own, still unused mapping.
        unsafe { libc::munmap(p, len) };
        return Err(SecureAllocError(format!("madvise(MADV_DONTDUMP): {e}")));
    }
    // EPERM/ENOMEM here mean RLIMIT_MEMLOCK is exhausted: tolerated (see
    // the module comment). munmap unlocks, so no munlock is ever needed.
    // SAFETY: as above.
    let locked = unsafe { libc::mlock(p, len) } == 0;
    Ok((ptr, locked))
}

impl<T> SecureBox<T> {
    fn alloc() -> Result<(NonNull<T>, usize, bool), SecureAllocError> {
        let page = page_size();
        if mem::align_of::<T>() > page {
            return Err(SecureAllocError("alignment larger than a page".into()));
        }
        let map_len = mem::size_of::<T>().max(1).div_ceil(page) * page;
        let (ptr, locked) = map(map_len)?;
        Ok((ptr.cast(), map_len, locked))
    }

    /// Moves `value` onto protected pages. The caller's copy of `value` is
    /// not wiped by this move; see the module comment.
    pub fn new(value: T) -> Result<Self, SecureAllocError> {
        let (ptr, map_len, locked) = Self::alloc()?;
        // SAFETY: page-aligned (so aligned for T, checked above), large
        // enough, writable, and not yet holding a value.
        unsafe { ptr.as_ptr().write(value) };
        Ok(SecureBox { ptr, map_len, locked })
    }

    /// Whether the pages are locked in memory (false when RLIMIT_MEMLOCK
    /// refused it: they may then be swapped, though never dumped).
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Start of the mapping, for tests and diagnostics.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
}

impl<const N: usize> SecureBox<[u8; N]> {
    /// A zeroed byte array on protected pages, to be filled in place so the
    /// bytes never pass through the stack or the heap.
    pub fn zeroed() -> Result<Self, SecureAllocError> {
        // Anonymous mappings come zero-filled, which is a valid [u8; N].
        let (ptr, map_len, locked) = Self::alloc()?;
        Ok(SecureBox { ptr, map_len, locked })
    }
}

impl<T> Deref for SecureBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the pointer holds an initialised T for the box's lifetime.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for SecureBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes the access unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for SecureBox<T> {
    fn drop(&mut self) {
        // SAFETY: the value is initialised and dropped exactly once here;
        // afterwards the whole mapping, padding included, is wiped through
        // `MaybeUninit` (valid for any contents) with zeroize's volatile
        // writes, so the compiler cannot elide them, and then unmapped.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            let bytes = std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut MaybeUninit<u8>, self.map_len);
            bytes.zeroize();
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.map_len);
        }
    }
}

impl<T> fmt::Debug for SecureBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecureBox(<{} bytes redacted>)", mem::size_of::<T>())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn page_size_for_tests() -> usize {
        page_size()
    }

    /// The VmFlags of the mapping that contains `addr`, from smaps (the
    /// kernel may have merged ours with a neighbour of identical flags).
    pub(crate) fn vm_flags(addr: usize) -> Option<Vec<String>> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut in_mapping = false;
        for line in smaps.lines() {
            let range = line.split(' ').next().and_then(|r| r.split_once('-'));
            if let Some((Ok(start), Ok(end))) =
                range.map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)))
            {
                in_mapping = (start..end).contains(&addr);
                continue;
            }
            if let (true, Some(flags)) = (in_mapping, line.strip_prefix("VmFlags:")) {
                return Some(flags.split_whitespace().map(String::from).collect());
            }
        }
        None
    }

    #[test]
    fn value_round_trips_and_can_be_changed_in_place() {
        let mut b = SecureBox::new((7u64, [1u8; 32])).unwrap();
        assert_eq!(*b, (7, [1u8; 32]));
        b.1[0] = 9;
        assert_eq!(b.1[0], 9);
        let mut z = SecureBox::<[u8; 32]>::zeroed().unwrap();
        assert_eq!(*z, [0u8; 32]);
        z.copy_from_slice(&[3u8; 32]);
        assert_eq!(*z, [3u8; 32]);
    }

    #[test]
    fn mapping_is_page_aligned_and_values_larger_than_a_page_fit() {
        let page = page_size();
        let b = SecureBox::new([0xA5u8; 32]).unwrap();
        assert_eq!(b.addr() % page, 0);
        let big = SecureBox::new([1u8; 10_000]).unwrap();
        assert_eq!(big.addr() % page, 0);
        assert!(big.map_len >= 10_000 && big.map_len % page == 0);
        assert!(big.iter().all(|&x| x == 1));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn mapping_is_excluded_from_core_dumps_and_locked_when_allowed() {
        let b = SecureBox::new([0x5Au8; 32]).unwrap();
        let flags = vm_flags(b.addr()).expect("mapping listed in /proc/self/smaps");
        assert!(flags.iter().any(|f| f == "dd"), "VmFlags {flags:?} lack dd (MADV_DONTDUMP)");
        // `lo` (VM_LOCKED) exactly when mlock succeeded under this RLIMIT_MEMLOCK.
        assert_eq!(flags.iter().any(|f| f == "lo"), b.is_locked(), "{flags:?}");
    }

    #[test]
    fn drop_runs_the_values_own_destructor() {
        use std::rc::Rc;
        let witness = Rc::new(());
        let b = SecureBox::new(witness.clone()).unwrap();
        assert_eq!(Rc::strong_count(&witness), 2);
        drop(b);
        assert_eq!(Rc::strong_count(&witness), 1);
    }

    #[test]
    fn debug_output_is_redacted() {
        let b = SecureBox::new([0xABu8; 32]).unwrap();
        assert_eq!(format!("{b:?}"), "SecureBox(<32 bytes redacted>)");
    }
}
