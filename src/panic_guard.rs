//! A panic must never unwind into nginx: that is undefined behaviour, and an
//! abort would kill the worker with every request it serves.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into `Err` with the panic's message.
pub fn run_guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // The closure's captures are abandoned after a panic, never observed half-done.
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_values_through() {
        assert_eq!(run_guarded(|| 7), Ok(7));
    }

    #[test]
    fn catches_str_and_string_panics() {
        assert_eq!(run_guarded(|| -> u8 { panic!("boom") }), Err("boom".into()));
        assert_eq!(
            run_guarded(|| -> u8 { panic!("n={}", 3) }),
            Err("n=3".into())
        );
        let v: Vec<u8> = Vec::new();
        let err = run_guarded(|| v[1]).unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
    }

    #[test]
    fn catches_other_payloads() {
        let err = run_guarded(|| -> u8 { std::panic::panic_any(42u32) }).unwrap_err();
        assert_eq!(err, "panic with a non-string payload");
    }
}
