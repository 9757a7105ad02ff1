//! The async runtime every Haberci process runs on, sized by `HABERCI_RUNTIME_THREADS`.
//!
//! Unset, tokio starts one worker thread per CPU (or `TOKIO_WORKER_THREADS`): right for a
//! process that has its machine to itself. A process that shares a few cores with others (the
//! whole stack on one small machine) does better with fewer: a second worker thread there buys
//! cross-thread wake-ups, not parallelism (docs/BENCHMARKS.md, "The gateway's runtime").

use crate::config::{ConfigError, Env};

pub const THREADS_KEY: &str = "HABERCI_RUNTIME_THREADS";
/// The most worker threads a setting may ask for.
pub const MAX_THREADS: usize = 1024;

/// Reads `HABERCI_RUNTIME_THREADS` (1 to [`MAX_THREADS`]); `None` when unset. A bad value is
/// recorded as a problem of `env`.
pub fn threads(env: &mut Env<'_>) -> Option<usize> {
    let value = env.raw(THREADS_KEY)?;
    match value.parse::<usize>() {
        Ok(threads) if (1..=MAX_THREADS).contains(&threads) => Some(threads),
        _ => {
            env.problem(format!(
                "{THREADS_KEY}={value:?}: must be a number from 1 to {MAX_THREADS}"
            ));
            None
        }
    }
}

/// A process's settings, read from its environment by `read`, with its runtime threads; every
/// bad setting of both in one error.
pub fn settings<C>(
    read: impl FnOnce(Env<'static>) -> Result<C, ConfigError>,
) -> Result<(C, Option<usize>), ConfigError> {
    let mut env = Env::process();
    let threads = threads(&mut env);
    match (read(Env::process()), env.finish()) {
        (Ok(config), Ok(())) => Ok((config, threads)),
        (config, runtime) => Err(ConfigError {
            problems: [config.err(), runtime.err()]
                .into_iter()
                .flatten()
                .flat_map(|err| err.problems)
                .collect(),
        }),
    }
}

/// A multi-thread runtime with `threads` workers (tokio's default when `None`), I/O and time
/// enabled.
pub fn build(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: Option<&str>) -> (Option<usize>, Result<(), crate::config::ConfigError>) {
        let pairs: Vec<(&str, &str)> = value.map(|v| (THREADS_KEY, v)).into_iter().collect();
        let mut env = Env::from_pairs(&pairs);
        let threads = threads(&mut env);
        (threads, env.finish())
    }

    #[test]
    fn unset_leaves_the_choice_to_tokio() {
        let (threads, result) = read(None);
        assert_eq!(threads, None);
        assert!(result.is_ok());
    }

    #[test]
    fn a_count_in_range_is_taken() {
        assert_eq!(read(Some("1")).0, Some(1));
        assert_eq!(read(Some("1024")).0, Some(1024));
    }

    #[test]
    fn zero_too_many_or_not_a_number_is_a_problem() {
        for bad in ["0", "1025", "two", "-1"] {
            let (threads, result) = read(Some(bad));
            assert_eq!(threads, None, "{bad}");
            let err = result.expect_err(bad).to_string();
            assert!(err.contains(THREADS_KEY), "{bad}: {err}");
        }
    }
}
