use super::*;

fn minimal() -> MapEnv {
    test_env(&[])
}

#[test]
fn defaults_apply_to_a_minimal_environment() {
    let config = Config::from_sources(&minimal(), None).unwrap();
    assert_eq!(config.base_url, "http://127.0.0.1:1/v2");
    assert_eq!(config.token_url, "http://127.0.0.1:1/v2/oauth/token");
    assert_eq!(config.attempt_timeout, Duration::from_secs(30));
    assert_eq!(config.max_retries, 3);
    assert_eq!(config.retry_delay, Duration::from_secs(1));
    assert_eq!(config.cache_ttl, Duration::from_secs(300));
    assert_eq!(config.rate_limit_per_minute, 1000);
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(config.max_body_bytes, 1 << 20);
    assert!(config.clients.is_none());
}

#[test]
fn fractional_seconds_are_accepted() {
    let mut env = minimal();
    env.set("EXTERNAL_API_TIMEOUT", "2.5").set("EXTERNAL_API_RETRY_DELAY", "0.05");
    let config = Config::from_sources(&env, None).unwrap();
    assert_eq!(config.attempt_timeout, Duration::from_millis(2500));
    assert_eq!(config.retry_delay, Duration::from_millis(50));
}

#[test]
fn every_bad_variable_is_reported_once_with_its_expected_form() {
    let env = MapEnv::new([
        ("EXTERNAL_API_BASE_URL", "ftp://x"),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", "s3cr3t-value"),
        ("EXTERNAL_API_TIMEOUT", "soon"),
        ("EXTERNAL_API_MAX_RETRIES", "-1"),
        ("COURIER_LISTEN", "localhost"),
        ("COURIER_LOG_LEVEL", "loud"),
    ]);
    let errors = Config::from_sources(&env, None).unwrap_err();
    let vars: Vec<&str> = errors.0.iter().map(|e| e.var.as_str()).collect();
    assert_eq!(
        vars,
        [
            "EXTERNAL_API_BASE_URL",
            "EXTERNAL_API_KEY",
            "EXTERNAL_OAUTH_CLIENT_ID",
            "EXTERNAL_API_TIMEOUT",
            "EXTERNAL_API_MAX_RETRIES",
            "COURIER_LISTEN",
            "COURIER_LOG_LEVEL",
        ]
    );
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 7, "one line per variable:\n{text}");
    assert!(text.contains("EXTERNAL_API_TIMEOUT: \"soon\" is not valid (expected: a number of seconds > 0"));
    assert!(!text.contains("s3cr3t-value"));
}

#[test]
fn secrets_come_from_files_and_never_show_in_debug() {
    let dir = std::env::temp_dir().join(format!("courier-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, "from-file-secret\n").unwrap();
    let mut env = minimal();
    env.0.remove("EXTERNAL_OAUTH_CLIENT_SECRET");
    env.set("EXTERNAL_OAUTH_CLIENT_SECRET_FILE", path.to_str().unwrap());
    env.set("REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0");
    let config = Config::from_sources(&env, None).unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&config.client_secret), "from-file-secret");
    assert_eq!(config.client_secret_source, SecretSource::File(path.clone()));
    let shown = format!("{config:?}");
    for secret in ["from-file-secret", "key-123456", "hunter2"] {
        assert!(!shown.contains(secret), "{secret} leaked into {shown}");
    }

    env.set("EXTERNAL_OAUTH_CLIENT_SECRET", "inline");
    let errors = Config::from_sources(&env, None).unwrap_err().to_string();
    assert!(errors.contains("EXTERNAL_OAUTH_CLIENT_SECRET: is set together with"), "{errors}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_file_fills_in_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("courier-config-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("courier.toml");
    std::fs::write(&path, "EXTERNAL_API_TIMEOUT = 7\nexternal_api_max_retries = 5\n").unwrap();
    let mut env = minimal();
    env.set("EXTERNAL_API_MAX_RETRIES", "1");
    let config = Config::from_sources(&env, Some(&path)).unwrap();
    assert_eq!(config.attempt_timeout, Duration::from_secs(7));
    assert_eq!(config.max_retries, 1);
    std::fs::write(&path, "EXTERNAL_API_TIMEOUT = [1]\n").unwrap();
    let errors = Config::from_sources(&env, Some(&path)).unwrap_err().to_string();
    assert!(errors.starts_with("--config: EXTERNAL_API_TIMEOUT has a array value"), "{errors}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_ca_file_is_read_at_start_and_a_bad_one_is_one_line_naming_the_variable() {
    let dir = std::env::temp_dir().join(format!("courier-config-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let good = dir.join("ca.pem");
    std::fs::write(&good, ca.pem()).unwrap();
    let mut env = minimal();
    env.set("EXTERNAL_API_CA_FILE", good.to_str().unwrap());
    let config = Config::from_sources(&env, None).unwrap();
    assert_eq!((config.api_ca_file.as_deref(), config.api_ca.len()), (Some(good.as_path()), 1));
    assert_eq!(&config.api_ca[0], ca.der());
    assert!(Config::from_sources(&minimal(), None).unwrap().api_ca.is_empty());

    let key_only = dir.join("key.pem");
    std::fs::write(&key_only, key.serialize_pem()).unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
    let not_a_cert = dir.join("garbage.pem");
    std::fs::write(&not_a_cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let cases = [
        (dir.join("missing.pem"), "cannot read"),
        (key_only, "holds no PEM certificate"),
        (broken, "is not valid PEM"),
        (not_a_cert, "unusable CA certificate"),
    ];
    for (path, problem) in cases {
        env.set("EXTERNAL_API_CA_FILE", path.to_str().unwrap());
        let text = Config::from_sources(&env, None).unwrap_err().to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("EXTERNAL_API_CA_FILE: ") && text.contains(path.to_str().unwrap()), "{text}");
        assert!(
            text.contains(problem) && text.contains("(expected: a readable PEM file of CA certificates)"),
            "{text}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_secret_poll_interval_defaults_to_five_seconds_and_zero_turns_it_off() {
    assert_eq!(Config::from_sources(&minimal(), None).unwrap().secret_poll_interval, Duration::from_secs(5));
    let mut env = minimal();
    env.set("COURIER_SECRET_POLL_INTERVAL", "0");
    assert_eq!(Config::from_sources(&env, None).unwrap().secret_poll_interval, Duration::ZERO);
    env.set("COURIER_SECRET_POLL_INTERVAL", "-1");
    let errors = Config::from_sources(&env, None).unwrap_err();
    assert_eq!(errors.0[0].var, "COURIER_SECRET_POLL_INTERVAL");
}

#[test]
fn limits_have_defaults_and_are_range_checked() {
    let config = Config::from_sources(&minimal(), None).unwrap();
    assert_eq!(
        config.limits,
        LimitsConfig {
            max_header_bytes: 16 * 1024,
            max_connections_per_worker: 25_000,
            client_max_in_flight: 1024,
            client_header_timeout: Duration::from_secs(5),
            client_body_timeout: Duration::from_secs(10),
            client_disconnect_timeout: Duration::from_secs(1),
            max_json_depth: 64,
        }
    );
    let mut env = minimal();
    env.set("COURIER_MAX_HEADER_BYTES", "200000")
        .set("COURIER_CLIENT_MAX_IN_FLIGHT", "0")
        .set("COURIER_CLIENT_BODY_TIMEOUT", "0")
        .set("COURIER_MAX_CONNECTIONS_PER_WORKER", "many")
        .set("COURIER_MAX_JSON_DEPTH", "100000");
    let errors = Config::from_sources(&env, None).unwrap_err();
    let vars: Vec<&str> = errors.0.iter().map(|e| e.var.as_str()).collect();
    assert_eq!(
        vars,
        [
            "COURIER_MAX_HEADER_BYTES",
            "COURIER_MAX_CONNECTIONS_PER_WORKER",
            "COURIER_CLIENT_MAX_IN_FLIGHT",
            "COURIER_CLIENT_BODY_TIMEOUT",
            "COURIER_MAX_JSON_DEPTH"
        ]
    );
    assert!(errors.to_string().contains("COURIER_MAX_HEADER_BYTES: 200000 is out of range 1024..=131072"), "{errors}");
}

#[test]
fn deeply_nested_files_are_one_line_errors_not_a_crash() {
    // The config and clients files are TOML, read by the toml crate, whose parser bounds its
    // own recursion. Checked here on the stack of the threads that read them: 2 MiB, both
    // std's default for a spawned thread and tokio's for the blocking pool that reloads them
    // (an unoptimised build needs over 1 MiB at the toml crate's bound).
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let dir = std::env::temp_dir().join(format!("courier-deep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("config.toml");
    std::fs::write(&config_file, format!("EXTERNAL_API_TIMEOUT = {deep}\n")).unwrap();
    let clients = format!("[[client]]\nname = \"a\"\nkey_sha256 = \"{}\"\nweight = {deep}\n", "a".repeat(64));
    let (config_error, clients_error) = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let config = Config::from_sources(&minimal(), Some(&config_file)).map(|_| ()).unwrap_err().to_string();
            (config, Clients::parse(&clients).map(|_| ()).unwrap_err())
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(config_error.contains("not valid TOML") && !config_error.contains('\n'), "{config_error}");
    assert!(clients_error.contains("not a valid clients file") && !clients_error.contains('\n'), "{clients_error}");
}

#[test]
fn job_max_runs_defaults_to_two_and_is_range_checked() {
    let config = Config::from_sources(&minimal(), None).unwrap();
    assert_eq!(config.jobs.max_runs, 2);
    let mut env = minimal();
    env.set("COURIER_JOB_MAX_RUNS", "5");
    assert_eq!(Config::from_sources(&env, None).unwrap().jobs.max_runs, 5);
    for bad in ["0", "1001", "twice"] {
        env.set("COURIER_JOB_MAX_RUNS", bad);
        let errors = Config::from_sources(&env, None).unwrap_err();
        let vars: Vec<&str> = errors.0.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(vars, ["COURIER_JOB_MAX_RUNS"], "{bad}: {errors}");
    }
}

/// A config file in a fresh directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("courier-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("courier.toml");
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_naming_it_and_the_closest_setting() {
    let file = TempFile::new(
        "unknown",
        "EXTERNAL_API_TIMOUT = 5\ncourier_log_levle = \"debug\"\nFLUX_CAPACITOR = 1\nEXTERNAL_API_MAX_RETRIES = 2\n",
    );
    let errors = Config::from_sources(&minimal(), Some(&file.0)).unwrap_err();
    let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "EXTERNAL_API_TIMOUT: not a setting courier knows (did you mean EXTERNAL_API_TIMEOUT?)",
            "FLUX_CAPACITOR: not a setting courier knows (the configuration table in README.md lists them)",
            "courier_log_levle: not a setting courier knows (did you mean COURIER_LOG_LEVEL?)",
        ]
    );
    // Every name courier reads is known, secrets' `_FILE` forms included.
    let file = TempFile::new(
        "known",
        "EXTERNAL_API_TIMEOUT = 5\nEXTERNAL_OAUTH_TOKEN_URL = \"http://127.0.0.1:1/token\"\n\
         COURIER_CALLBACK_SECRET_FILE = \"/nonexistent\"\nCOURIER_MAX_JSON_DEPTH = 10\n",
    );
    let errors = Config::from_sources(&minimal(), Some(&file.0)).unwrap_err();
    let vars: Vec<&str> = errors.0.iter().map(|e| e.var.as_str()).collect();
    assert_eq!(vars, ["COURIER_CALLBACK_SECRET_FILE"], "only the unreadable file: {errors}");
}

#[test]
fn unknown_keys_come_first_among_every_other_problem() {
    let file =
        TempFile::new("unknown-first", "EXTERNAL_OAUTH_CLIENT_D = \"client\"\nEXTERNAL_API_TIMEOUT = \"soon\"\n");
    let mut env = minimal();
    env.0.remove("EXTERNAL_OAUTH_CLIENT_ID");
    let errors = Config::from_sources(&env, Some(&file.0)).unwrap_err();
    let vars: Vec<&str> = errors.0.iter().map(|e| e.var.as_str()).collect();
    assert_eq!(vars, ["EXTERNAL_OAUTH_CLIENT_D", "EXTERNAL_OAUTH_CLIENT_ID", "EXTERNAL_API_TIMEOUT"]);
    assert!(errors.0[0].problem.contains("did you mean EXTERNAL_OAUTH_CLIENT_ID?"), "{errors}");
}

#[test]
fn an_empty_variable_is_an_error_not_the_default() {
    let mut env = minimal();
    env.set("EXTERNAL_API_TIMEOUT", "").set("COURIER_CALLBACK_ALLOW", "  ").set("EXTERNAL_API_KEY", "");
    let errors = Config::from_sources(&env, None).unwrap_err();
    let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    let expected = "(expected: a value, or the variable left unset for its default)";
    assert_eq!(
        lines,
        [
            format!("EXTERNAL_API_KEY: is set but empty {expected}"),
            format!("EXTERNAL_API_TIMEOUT: is set but empty {expected}"),
            format!("COURIER_CALLBACK_ALLOW: is set but empty {expected}"),
        ]
    );
    // An empty required URL is reported once, as empty.
    let mut env = minimal();
    env.set("EXTERNAL_API_BASE_URL", "");
    let errors = Config::from_sources(&env, None).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].problem, "is set but empty");
    // So is an empty value in the file.
    let file = TempFile::new("empty", "EXTERNAL_API_MAX_RETRIES = \"\"\n");
    let errors = Config::from_sources(&minimal(), Some(&file.0)).unwrap_err();
    assert_eq!(errors.to_string(), format!("EXTERNAL_API_MAX_RETRIES: is set but empty {expected}"));
}

#[test]
fn an_invalid_toml_file_is_one_line_saying_where() {
    for (text, at) in [
        ("EXTERNAL_API_TIMEOUT = 5\n[broken\n", "line 2, column"),
        ("EXTERNAL_API_TIMEOUT = 5\nEXTERNAL_API_MAX_RETRIES 3\n", "line 2, column"),
        ("EXTERNAL_API_TIMEOUT = \"5\nX = 1\n", "line 1, column"),
        ("EXTERNAL_API_TIMEOUT = 5\nEXTERNAL_API_TIMEOUT = 6\n", "line 2, column"),
    ] {
        let file = TempFile::new("invalid", text);
        let errors = Config::from_sources(&minimal(), Some(&file.0)).unwrap_err().to_string();
        assert_eq!(errors.lines().count(), 1, "{text:?} gave {errors}");
        assert!(errors.starts_with(&format!("--config: not valid TOML at {at}")), "{text:?} gave {errors}");
        assert!(errors.ends_with("(expected: a TOML file of VARIABLE = value lines, e.g. EXTERNAL_API_TIMEOUT = 5)"));
    }
}

#[test]
fn a_bad_redis_url_says_what_is_wrong_and_never_shows_the_password() {
    let cases = [
        ("redis://:hunter2@", "has no host"),
        ("redis://user:hunter2@/0", "has no host"),
        ("http://:hunter2@127.0.0.1:6379", "has scheme http:, not redis:, rediss:, redis+unix: or unix:"),
        ("redis://:hunter2@127.0.0.1:6379/zero", "names database \"zero\", not a number"),
        ("redis://:hunter2@127.0.0.1:port", "is not a URL (invalid port number)"),
        ("hunter2", "is not a URL (no scheme such as redis://)"),
        ("unix://", "has no socket path"),
    ];
    for (url, problem) in cases {
        let mut env = minimal();
        env.set("REDIS_URL", url);
        let errors = Config::from_sources(&env, None).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{url}: {errors}");
        assert_eq!((errors.0[0].var.as_str(), errors.0[0].problem.as_str()), ("REDIS_URL", problem), "{url}");
        assert!(!errors.to_string().contains("hunter2"), "{errors}");
    }
    for url in ["redis://:hunter2@127.0.0.1:6379/0", "rediss://cache.internal", "redis://h", "unix:///run/redis.sock"] {
        let mut env = minimal();
        env.set("REDIS_URL", url);
        assert!(Config::from_sources(&env, None).is_ok(), "{url}");
    }
}
