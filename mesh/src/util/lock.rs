//! Locking a [`Mutex`] whatever a panicking holder left behind.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also when a thread panicked while holding it (the lock is poisoned): the data
/// guarded this way are plain maps and counters, still usable after such a panic, and one
/// panicked task must not take every later caller down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = Mutex::new(1);
        let poisoned = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = lock(&m);
                panic!("poison the lock");
            })
            .join()
        });
        assert!(poisoned.is_err() && m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
