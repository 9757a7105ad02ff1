//! Config is a tree parsed before anything binds: each binary builds its settings with an
//! [`Env`] reader, which records every problem instead of stopping at the first, then calls
//! [`Env::finish`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Exit code for bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Every problem found in the environment, in the order the settings were read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

/// Where an [`Env`] looks variables up.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Reads settings from a variable source (the process environment, or a map in tests).
pub struct Env<'a> {
    lookup: Lookup<'a>,
    problems: Vec<String>,
}

impl Env<'static> {
    /// Reads the real process environment.
    pub fn process() -> Self {
        Env::from_fn(|key| std::env::var(key).ok())
    }
}

impl<'a> Env<'a> {
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Env {
            lookup: Box::new(lookup),
            problems: Vec::new(),
        }
    }

    /// Reads from `pairs` only; for tests.
    pub fn from_pairs(pairs: &'a [(&'a str, &'a str)]) -> Self {
        Env::from_fn(move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    /// The raw value of `key`, if set and non-empty.
    pub fn raw(&self, key: &str) -> Option<String> {
        (self.lookup)(key).filter(|v| !v.is_empty())
    }

    /// Parses `key`, falling back to `default` when it is unset. A value that does not parse is
    /// recorded as a problem and `default` is returned so reading can go on.
    pub fn parse_or<T>(&mut self, key: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => default,
            Some(value) => match value.parse() {
                Ok(parsed) => parsed,
                Err(err) => {
                    self.problems.push(format!("{key}={value:?}: {err}"));
                    default
                }
            },
        }
    }

    /// A duration setting spelled in milliseconds (`…_MS`), above zero; `default` when unset.
    /// Every duration a Haberci process reads is spelled this way.
    pub fn millis_or(&mut self, key: &str, default: Duration) -> Duration {
        let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
        let millis = self.parse_or(key, default_ms);
        if millis == 0 {
            self.problems.push(format!("{key} must be above 0"));
            return default;
        }
        Duration::from_millis(millis)
    }

    /// A string setting with a default.
    pub fn string_or(&mut self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    /// A required string setting; records a problem when missing.
    pub fn required(&mut self, key: &str, what: &str) -> String {
        match self.raw(key) {
            Some(value) => value,
            None => {
                self.problems.push(format!("{key} is not set ({what})"));
                String::new()
            }
        }
    }

    /// Records a problem found by a cross-field check.
    pub fn problem(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    /// Ends reading: `Ok` when every setting was good.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn durations_are_milliseconds_above_zero() {
        let pairs = [
            ("HABERCI_A_MS", "250"),
            ("HABERCI_B_MS", "0"),
            ("HABERCI_C_MS", "1s"),
        ];
        let mut env = Env::from_pairs(&pairs);
        let default = Duration::from_secs(9);
        assert_eq!(
            env.millis_or("HABERCI_A_MS", default),
            Duration::from_millis(250)
        );
        assert_eq!(env.millis_or("HABERCI_B_MS", default), default);
        assert_eq!(env.millis_or("HABERCI_C_MS", default), default);
        assert_eq!(env.millis_or("HABERCI_D_MS", default), default);
        let err = env.finish().expect_err("two bad settings");
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].contains("HABERCI_B_MS must be above 0"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let pairs = [("HABERCI_A", "not-an-addr"), ("HABERCI_B", "x")];
        let mut env = Env::from_pairs(&pairs);
        let default: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let _ = env.parse_or::<SocketAddr>("HABERCI_A", default);
        let _ = env.parse_or::<u16>("HABERCI_B", 7);
        let _ = env.required("HABERCI_C", "the thing");
        let err = env.finish().expect_err("three problems");
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.problems[0].starts_with("HABERCI_A="));
        assert!(err.problems[2].contains("HABERCI_C is not set"));
    }

    #[test]
    fn defaults_apply_when_unset() {
        let mut env = Env::from_pairs(&[]);
        assert_eq!(env.parse_or::<u16>("HABERCI_PORT", 9), 9);
        assert_eq!(env.string_or("HABERCI_NAME", "n"), "n");
        assert!(env.finish().is_ok());
    }
}
