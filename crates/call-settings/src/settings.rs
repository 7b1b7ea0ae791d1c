//! A function's settings from its environment, read one way for all three functions:
//! [`ConfigError`] names the variable, its value and what is wrong, and [`Settings`] gives
//! typed reads over a lookup function (so tests need no process environment). Empty values
//! count as unset: CloudFormation passes an empty string for a blank parameter.

use std::str::FromStr;
use std::time::Duration;

/// A setting that cannot be used: names the variable, its value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// Its value (empty when missing).
    pub value: String,
    /// What is wrong with it, and what it should be.
    pub problem: String,
}

impl ConfigError {
    /// `variable`'s `value` cannot be used: `problem`. The value is kept to its first
    /// [`lca_events::MAX_QUOTED_CHARS`] characters (a contact attribute may be long).
    pub fn new(variable: &'static str, value: &str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            value: lca_events::excerpt(value),
            problem: problem.into(),
        }
    }
}

/// Typed reads of settings through a lookup (a variable's value, or `None` when unset).
pub struct Settings<'a>(&'a dyn Fn(&str) -> Option<String>);

impl<'a> Settings<'a> {
    /// Reads through `lookup`.
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self(lookup)
    }

    /// The trimmed value, `None` when unset or blank.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The value of a variable that must be set; `what` says what it is for the error.
    pub fn required(&self, name: &'static str, what: &str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "", format!("required: {what}")))
    }

    /// `true` or `false` (any case); `default` when unset.
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ConfigError::new(name, &v, "expected `true` or `false`")),
        }
    }

    /// A whole number within `range`; `default` when unset.
    pub fn number<T>(
        &self,
        name: &'static str,
        default: T,
        range: impl std::ops::RangeBounds<T> + std::fmt::Debug,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                ConfigError::new(name, &v, format!("expected a whole number in {range:?}"))
            }),
        }
    }

    /// A duration in whole milliseconds, at least `min_ms`; `default_ms` when unset.
    pub fn millis(
        &self,
        name: &'static str,
        default_ms: u64,
        min_ms: u64,
    ) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(Duration::from_millis(default_ms)),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms >= min_ms)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    ConfigError::new(
                        name,
                        &v,
                        format!("expected a whole number of milliseconds, at least {min_ms}"),
                    )
                }),
        }
    }

    /// `METRICS_NAMESPACE` (default [`call_metrics::NAMESPACE`]): the namespace of the
    /// function's metrics lines, which every function of a stack shares.
    pub fn metrics_namespace(&self) -> Result<String, ConfigError> {
        let namespace = self
            .get("METRICS_NAMESPACE")
            .unwrap_or_else(|| call_metrics::NAMESPACE.to_string());
        call_metrics::check_namespace(&namespace)
            .map_err(|problem| ConfigError::new("METRICS_NAMESPACE", &namespace, problem))?;
        Ok(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T>(vars: &[(&str, &str)], f: impl Fn(&Settings) -> T) -> T {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        f(&Settings::new(&lookup))
    }

    #[test]
    fn blank_values_are_unset_and_defaults_apply() {
        read(&[("A", "  "), ("B", " x ")], |s| {
            assert_eq!(s.get("A"), None);
            assert_eq!(s.get("B").as_deref(), Some("x"));
            assert_eq!(s.flag("A", true), Ok(true));
            assert_eq!(s.number("A", 7u32, ..), Ok(7));
            assert_eq!(s.millis("A", 1500, 0), Ok(Duration::from_millis(1500)));
            assert_eq!(
                s.metrics_namespace().as_deref(),
                Ok(call_metrics::NAMESPACE)
            );
        });
    }

    #[test]
    fn each_bad_value_names_its_variable_value_and_rule() {
        read(
            &[
                ("F", "yes"),
                ("N", "3"),
                ("M", "999"),
                ("METRICS_NAMESPACE", "AWS/Lambda"),
            ],
            |s| {
                let error = s.flag("F", false).unwrap_err();
                assert_eq!((error.variable, error.value.as_str()), ("F", "yes"));
                let error = s.number("N", 0u32, ..=2).unwrap_err();
                assert_eq!(
                    error.to_string(),
                    "N=\"3\": expected a whole number in ..=2"
                );
                let error = s.millis("M", 0, 1000).unwrap_err();
                assert!(error.problem.contains("at least 1000"), "{error}");
                let error = s.metrics_namespace().unwrap_err();
                assert_eq!(error.variable, "METRICS_NAMESPACE");
                let error = s.required("R", "the table").unwrap_err();
                assert_eq!(error.to_string(), "R=\"\": required: the table");
            },
        );
    }
}
