//! Reading settings one by one while collecting every problem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use super::{ConfigError, ConfigErrors, SecretSource};

/// Where variables come from: the process environment, or a map in tests.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of variables, for tests and embedded use (`courier demo`).
#[derive(Clone, Debug, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// Builds the map from `(name, value)` pairs.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        MapEnv(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// Sets one variable.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Two sources, the first winning: `courier demo` lays its wiring over the process
/// environment.
pub struct Layered<'a>(pub &'a dyn Env, pub &'a dyn Env);

impl Env for Layered<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.0.var(name).or_else(|| self.1.var(name))
    }
}

/// Values from the optional TOML config file, keyed by variable name.
#[derive(Default)]
pub(super) struct FileValues(HashMap<String, String>);

impl FileValues {
    pub(super) fn read(path: &Path) -> Result<Self, ConfigError> {
        let problem = |problem: String| ConfigError {
            var: "--config".into(),
            problem,
            expected: "a TOML file of VARIABLE = value lines, e.g. EXTERNAL_API_TIMEOUT = 5",
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| problem(format!("not valid TOML: {}", e.message())))?;
        let mut values = HashMap::new();
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(problem(format!("{key} has a {} value", other.type_str()))),
            };
            values.insert(key.to_ascii_uppercase(), text);
        }
        Ok(FileValues(values))
    }
}

const SECONDS: &str = "a number of seconds > 0, e.g. 30 or 2.5";
const SECONDS_OR_ZERO: &str = "a number of seconds >= 0, e.g. 1 or 0.25";
const SECRET: &str = "a non-empty value, or a readable file named by the variable with _FILE appended";

/// Reads settings, recording every problem instead of stopping at the first.
pub(super) struct Reader<'a> {
    env: &'a dyn Env,
    file: &'a FileValues,
    errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(env: &'a dyn Env, file: &'a FileValues) -> Self {
        Reader { env, file, errors: Vec::new() }
    }

    /// Ok when no problem was recorded.
    pub(super) fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn problem(&mut self, var: &str, problem: impl Into<String>, expected: &'static str) {
        self.errors.push(ConfigError { var: var.to_owned(), problem: problem.into(), expected });
    }

    /// The raw value: environment first, then the file; empty counts as unset.
    pub(super) fn optional(&self, var: &str) -> Option<String> {
        self.env
            .var(var)
            .or_else(|| self.file.0.get(var).cloned())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn required(&mut self, var: &str, expected: &'static str) -> String {
        self.optional(var).unwrap_or_else(|| {
            self.problem(var, "is not set", expected);
            String::new()
        })
    }

    /// A value parsed by `parse`; the default when unset.
    pub(super) fn parsed<T>(
        &mut self,
        var: &str,
        default: T,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        match self.optional(var) {
            None => default,
            Some(raw) => parse(&raw).unwrap_or_else(|| {
                self.problem(var, format!("{raw:?} is not valid"), expected);
                default
            }),
        }
    }

    pub(super) fn seconds(&mut self, var: &str, default: f64) -> Duration {
        self.duration(var, default, false)
    }

    pub(super) fn seconds_or_zero(&mut self, var: &str, default: f64) -> Duration {
        self.duration(var, default, true)
    }

    fn duration(&mut self, var: &str, default: f64, zero_ok: bool) -> Duration {
        let expected = if zero_ok { SECONDS_OR_ZERO } else { SECONDS };
        let secs = self.parsed(var, default, expected, |s| {
            s.parse::<f64>().ok().filter(|v| v.is_finite() && (*v > 0.0 || (zero_ok && *v == 0.0)) && *v < 1e9)
        });
        Duration::from_secs_f64(secs)
    }

    /// A fraction in (0, 1] (or [0, 1] when `zero_ok`).
    pub(super) fn fraction(&mut self, var: &str, default: f64, zero_ok: bool) -> f64 {
        let expected =
            if zero_ok { "a fraction from 0 to 1, e.g. 0.2" } else { "a fraction above 0, at most 1, e.g. 0.5" };
        self.parsed(var, default, expected, |s| {
            s.parse::<f64>().ok().filter(|v| (*v > 0.0 || (zero_ok && *v == 0.0)) && *v <= 1.0)
        })
    }

    pub(super) fn count(&mut self, var: &str, default: u64, range: RangeInclusive<u64>) -> u64 {
        match self.optional(var) {
            None => default,
            Some(raw) => match raw.parse::<u64>() {
                Ok(v) if range.contains(&v) => v,
                Ok(_) => {
                    let msg = format!("{raw} is out of range {}..={}", range.start(), range.end());
                    self.problem(var, msg, "a whole number within the range");
                    default
                }
                Err(_) => {
                    self.problem(var, format!("{raw:?} is not a whole number"), "a whole number");
                    default
                }
            },
        }
    }

    pub(super) fn addr(&mut self, var: &str, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default.parse().expect("default address parses");
        self.parsed(var, fallback, "host:port with an IP address, e.g. 127.0.0.1:8080", |s| s.parse().ok())
    }

    /// An absolute http(s) URL without a trailing slash.
    pub(super) fn url(&mut self, var: &str, default: Option<String>) -> Option<String> {
        const URL: &str = "an absolute http(s) URL, e.g. https://api.example.com/v2";
        let Some(raw) = self.optional(var).or(default) else {
            self.problem(var, "is not set", URL);
            return None;
        };
        match url::Url::parse(&raw) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    self.problem(var, format!("{raw:?} has a query or fragment"), URL);
                    return None;
                }
                Some(raw.trim_end_matches('/').to_owned())
            }
            Ok(_) => {
                self.problem(var, format!("{raw:?} is not an http(s) URL with a host"), URL);
                None
            }
            Err(e) => {
                self.problem(var, format!("{raw:?} is not a URL: {e}"), URL);
                None
            }
        }
    }

    /// A secret from the variable or from the file named by `<var>_FILE`. Values are
    /// never quoted in problems.
    pub(super) fn secret(&mut self, var: &str) -> (SecretString, SecretSource) {
        match self.optional_secret(var) {
            Some(found) => found,
            None => {
                if !self.errors.iter().any(|e| e.var.starts_with(var)) {
                    self.problem(var, format!("is not set (nor is {var}_FILE)"), SECRET);
                }
                (SecretString::from(String::new()), SecretSource::Inline)
            }
        }
    }

    pub(super) fn optional_secret(&mut self, var: &str) -> Option<(SecretString, SecretSource)> {
        let file_var = format!("{var}_FILE");
        match (self.optional(var), self.optional(&file_var)) {
            (Some(_), Some(_)) => {
                self.problem(var, format!("is set together with {file_var}"), "only one of the two");
                None
            }
            (Some(value), None) => Some((SecretString::from(value), SecretSource::Inline)),
            (None, Some(path)) => match read_secret_file(Path::new(&path)) {
                Ok(value) => Some((value, SecretSource::File(path.into()))),
                Err(problem) => {
                    self.problem(&file_var, problem, SECRET);
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// An optional URL holding credentials (Redis); checked but never quoted.
    pub(super) fn optional_secret_url(&mut self, var: &str) -> Option<SecretString> {
        let (value, _) = self.optional_secret(var)?;
        let raw = secrecy::ExposeSecret::expose_secret(&value);
        let ok = url::Url::parse(raw)
            .map(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
            .unwrap_or(false);
        if !ok {
            self.problem(var, "is not a redis:// URL", "redis://[user:password@]host:port[/db]");
            return None;
        }
        Some(value)
    }
}

/// Reads a secret file, trimming one trailing newline; the value is never part of an error.
pub fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(value.to_owned()))
}
