//! Brute-force lockout: failures counted per (role, client address) within
//! a window; at the threshold the pair is locked for a while. The table is
//! a fixed array (it lives in shared memory); when it is full, the entry
//! seen longest ago that is not locked gives way, so counting never fails
//! and a locked pair is never forgotten early.

/// A client address as a key: an IPv6 (or IPv4-mapped) address, or the
/// all-zero address for Unix-socket connections.
pub type AddrKey = [u8; 16];

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Entry {
    /// Role OID; 0 marks a free entry.
    pub role: u32,
    pub local: bool,
    pub addr: AddrKey,
    pub failures: u32,
    pub window_start: i64,
    pub last_at: i64,
    /// Locked until this time (µs); 0 when not locked.
    pub locked_until: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures within `window` that lock the pair; 0 disables lockout.
    pub threshold: u32,
    pub window: i64,
    pub duration: i64,
}

impl Entry {
    fn is(&self, role: u32, local: bool, addr: &AddrKey) -> bool {
        self.role == role && self.role != 0 && self.local == local && self.addr == *addr
    }
    pub fn locked(&self, now: i64) -> bool {
        self.role != 0 && self.locked_until > now
    }
}

/// When the pair is locked, the time its lock ends.
pub fn locked_until(entries: &[Entry], role: u32, local: bool, addr: &AddrKey, now: i64) -> Option<i64> {
    entries.iter().find(|e| e.is(role, local, addr) && e.locked(now)).map(|e| e.locked_until)
}

/// Counts one failure; returns the end of the lock when this failure
/// locked the pair.
pub fn record_failure(entries: &mut [Entry], role: u32, local: bool, addr: &AddrKey, now: i64, p: &Policy) -> Option<i64> {
    if p.threshold == 0 || entries.is_empty() {
        return None;
    }
    let i = match entries.iter().position(|e| e.is(role, local, addr)) {
        Some(i) => i,
        None => {
            let i = entries
                .iter()
                .position(|e| e.role == 0)
                .or_else(|| {
                    entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| !e.locked(now))
                        .min_by_key(|(_, e)| e.last_at)
                        .map(|(i, _)| i)
                })
                // Every entry is locked: the lock that ends first gives way.
                .unwrap_or_else(|| entries.iter().enumerate().min_by_key(|(_, e)| e.locked_until).map(|(i, _)| i).unwrap_or(0));
            entries[i] = Entry { role, local, addr: *addr, failures: 0, window_start: now, last_at: now, locked_until: 0 };
            i
        }
    };
    let e = &mut entries[i];
    if e.locked(now) {
        e.last_at = now;
        return None;
    }
    if now - e.window_start > p.window || e.locked_until != 0 {
        // A new window (or the first failure after a lock ended).
        e.failures = 0;
        e.window_start = now;
        e.locked_until = 0;
    }
    e.failures = e.failures.saturating_add(1);
    e.last_at = now;
    if e.failures >= p.threshold {
        e.locked_until = now.saturating_add(p.duration);
        return Some(e.locked_until);
    }
    None
}

/// Lifts the lock (and forgets the failures) of `role` from `addr`, or from
/// every address; returns how many pairs were cleared.
pub fn unlock(entries: &mut [Entry], role: u32, addr: Option<(bool, &AddrKey)>) -> usize {
    let mut n = 0;
    for e in entries.iter_mut() {
        if e.role == role && e.role != 0 && addr.is_none_or(|(local, a)| e.local == local && e.addr == *a) {
            *e = Entry::default();
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy { threshold: 3, window: 1000, duration: 5000 };
    const A: AddrKey = [1; 16];
    const B: AddrKey = [2; 16];

    #[test]
    fn the_threshold_within_the_window_locks_the_pair_only() {
        let mut t = vec![Entry::default(); 4];
        assert_eq!(record_failure(&mut t, 10, false, &A, 0, &P), None);
        assert_eq!(record_failure(&mut t, 10, false, &A, 10, &P), None);
        assert_eq!(record_failure(&mut t, 10, false, &A, 20, &P), Some(5020));
        assert_eq!(locked_until(&t, 10, false, &A, 30), Some(5020));
        assert_eq!(locked_until(&t, 10, false, &B, 30), None, "another address is not locked");
        assert_eq!(locked_until(&t, 11, false, &A, 30), None, "another role is not locked");
        assert_eq!(locked_until(&t, 10, true, &A, 30), None, "a local connection is another client");
        assert_eq!(locked_until(&t, 10, false, &A, 5021), None, "the lock ends");
    }

    #[test]
    fn failures_outside_the_window_start_over() {
        let mut t = vec![Entry::default(); 4];
        record_failure(&mut t, 10, false, &A, 0, &P);
        record_failure(&mut t, 10, false, &A, 10, &P);
        assert_eq!(record_failure(&mut t, 10, false, &A, 2000, &P), None);
        assert_eq!(record_failure(&mut t, 10, false, &A, 2010, &P), None);
        assert!(record_failure(&mut t, 10, false, &A, 2020, &P).is_some());
    }

    #[test]
    fn unlock_lifts_one_address_or_all() {
        let mut t = vec![Entry::default(); 4];
        for now in 0..3 {
            record_failure(&mut t, 10, false, &A, now, &P);
            record_failure(&mut t, 10, false, &B, now, &P);
        }
        assert_eq!(unlock(&mut t, 10, Some((false, &A))), 1);
        assert_eq!(locked_until(&t, 10, false, &A, 5), None);
        assert!(locked_until(&t, 10, false, &B, 5).is_some());
        assert_eq!(unlock(&mut t, 10, None), 1);
        assert_eq!(locked_until(&t, 10, false, &B, 5), None);
    }

    #[test]
    fn a_full_table_keeps_its_locks() {
        let mut t = vec![Entry::default(); 2];
        for now in 0..3 {
            record_failure(&mut t, 10, false, &A, now, &P);
        }
        // Many other pairs fail once each: they share the one unlocked entry.
        for role in 100..200 {
            record_failure(&mut t, role, false, &B, 10, &P);
        }
        assert!(locked_until(&t, 10, false, &A, 20).is_some());
    }

    #[test]
    fn threshold_zero_disables_lockout() {
        let mut t = vec![Entry::default(); 2];
        let off = Policy { threshold: 0, ..P };
        for now in 0..10 {
            assert_eq!(record_failure(&mut t, 10, false, &A, now, &off), None);
        }
        assert_eq!(locked_until(&t, 10, false, &A, 10), None);
    }
}
