//! Reading settings one by one while collecting every problem.

use std::collections::{BTreeSet, HashMap};
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
pub(super) struct FileValues {
    values: HashMap<String, String>,
    /// Each key as written in the file, in the file's (sorted) order, with its variable name.
    keys: Vec<(String, String)>,
}

impl FileValues {
    pub(super) fn read(path: &Path) -> Result<Self, ConfigError> {
        let problem = |problem: String| ConfigError {
            var: "--config".into(),
            problem,
            expected: "a TOML file of VARIABLE = value lines, e.g. EXTERNAL_API_TIMEOUT = 5",
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| problem(toml_problem(&text, &e)))?;
        let mut file = FileValues::default();
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(problem(format!("{key} has a {} value", other.type_str()))),
            };
            let var = key.to_ascii_uppercase();
            file.values.insert(var.clone(), text);
            file.keys.push((key, var));
        }
        Ok(file)
    }

    /// A problem for every key in the file that names no setting `known` holds, with the
    /// closest known name when one is close: a misspelt key would otherwise be ignored and
    /// its setting silently left at the default.
    pub(super) fn unknown_keys(&self, known: &BTreeSet<String>) -> Vec<ConfigError> {
        self.keys
            .iter()
            .filter(|(_, var)| !known.contains(var))
            .map(|(key, var)| {
                let problem = match closest(var, known) {
                    Some(name) => format!("not a setting courier knows (did you mean {name}?)"),
                    None => "not a setting courier knows (the configuration table in README.md lists them)".into(),
                };
                ConfigError { var: key.clone(), problem, expected: "" }
            })
            .collect()
    }
}

/// The known name most like `name`, if one is like it at all (a typo or two, a swapped pair).
fn closest<'a>(name: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score >= SIMILAR)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.as_str())
}

/// How alike two names must be (Jaro-Winkler) for one to be suggested for the other.
const SIMILAR: f64 = 0.85;

/// The TOML parser's error on one line, with where it is: its message may span several lines
/// (the problem, then what was expected), and a config error is one line.
fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let message: Vec<&str> = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let message = message.join("; ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("not valid TOML at line {line}, column {column}: {message}")
        }
        None => format!("not valid TOML: {message}"),
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
    /// Every variable asked for: the settings courier knows.
    known: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(env: &'a dyn Env, file: &'a FileValues) -> Self {
        Reader { env, file, errors: Vec::new(), known: BTreeSet::new() }
    }

    /// Ok when no problem was recorded. Keys of the file that name no setting read are
    /// problems too, reported first (a misspelt key explains the problems it causes).
    pub(super) fn finish(mut self) -> Result<(), ConfigErrors> {
        let unknown = self.file.unknown_keys(&self.known);
        self.errors.splice(0..0, unknown);
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn problem(&mut self, var: &str, problem: impl Into<String>, expected: &'static str) {
        self.errors.push(ConfigError { var: var.to_owned(), problem: problem.into(), expected });
    }

    /// Whether a problem with `var` is already recorded (each variable gets one line).
    pub(super) fn reported(&self, var: &str) -> bool {
        self.errors.iter().any(|e| e.var == var)
    }

    /// The raw value, trimmed: environment first, then the file. Set but empty is a problem,
    /// not the default: `EXTERNAL_API_TIMEOUT=` is more likely a value lost on its way (an
    /// unset shell variable in a template) than a wish for the default, so it is refused.
    pub(super) fn optional(&mut self, var: &str) -> Option<String> {
        self.known.insert(var.to_owned());
        let value = self.env.var(var).or_else(|| self.file.values.get(var).cloned())?;
        let value = value.trim();
        if value.is_empty() {
            if !self.reported(var) {
                self.problem(var, "is set but empty", "a value, or the variable left unset for its default");
            }
            return None;
        }
        Some(value.to_owned())
    }

    pub(super) fn required(&mut self, var: &str, expected: &'static str) -> String {
        match self.optional(var) {
            Some(value) => value,
            None => {
                if !self.reported(var) {
                    self.problem(var, "is not set", expected);
                }
                String::new()
            }
        }
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
        self.whole(var, default, range, ("a whole number", "a whole number within the range"))
    }

    /// Whole milliseconds, the unit of the OpenTelemetry variables (courier's own are seconds).
    pub(super) fn millis(&mut self, var: &str, default_ms: u64, range: RangeInclusive<u64>) -> Duration {
        let expected = ("a whole number of milliseconds", "a whole number of milliseconds within the range");
        Duration::from_millis(self.whole(var, default_ms, range, expected))
    }

    /// A whole number in `range`; `expected` is said when it is not a number, or out of range.
    fn whole(
        &mut self,
        var: &str,
        default: u64,
        range: RangeInclusive<u64>,
        expected: (&'static str, &'static str),
    ) -> u64 {
        let Some(raw) = self.optional(var) else { return default };
        match raw.parse::<u64>() {
            Ok(v) if range.contains(&v) => v,
            Ok(_) => {
                let msg = format!("{raw} is out of range {}..={}", range.start(), range.end());
                self.problem(var, msg, expected.1);
                default
            }
            Err(_) => {
                self.problem(var, format!("{raw:?} is not a whole number"), expected.0);
                default
            }
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
            if !self.reported(var) {
                self.problem(var, "is not set", URL);
            }
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
    pub(super) fn optional_secret_url(&mut self, var: &str) -> Option<(SecretString, SecretSource)> {
        let (value, source) = self.optional_secret(var)?;
        if let Some(problem) = redis_url_problem(secrecy::ExposeSecret::expose_secret(&value)) {
            self.problem(var, problem, "redis://[user:password@]host[:port][/db], rediss://… (TLS) or unix:///path");
            return None;
        }
        Some((value, source))
    }
}

/// What is wrong with a Redis URL, if anything, in words that quote none of it but the scheme
/// and the database (the URL may hold a password).
pub fn redis_url_problem(raw: &str) -> Option<String> {
    let url = match url::Url::parse(raw) {
        Ok(url) => url,
        // The URL parser puts no part of the text in its errors.
        Err(url::ParseError::EmptyHost) => return Some("has no host".into()),
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Some("is not a URL (no scheme such as redis://)".into())
        }
        Err(e) => return Some(format!("is not a URL ({e})")),
    };
    match url.scheme() {
        "redis" | "rediss" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Some("has no host".into());
            }
            let db = url.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Some(format!("names database {db:?}, not a number"));
            }
            if url.fragment().is_some() {
                // The redis crate reads `rediss://…#insecure` as "skip certificate checks".
                return Some(
                    "has a #fragment (courier always verifies Redis's certificate; #insecure is not supported)".into(),
                );
            }
            None
        }
        "redis+unix" | "unix" if url.path().is_empty() || url.path() == "/" => Some("has no socket path".into()),
        "redis+unix" | "unix" => None,
        other => Some(format!("has scheme {other}:, not redis:, rediss:, redis+unix: or unix:")),
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
