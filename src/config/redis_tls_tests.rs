//! The Redis TLS variables and the URL's secrets: files read and checked at start, every bad one
//! one line naming its variable, and neither the password nor the client key ever shown.

use std::path::PathBuf;

use secrecy::ExposeSecret;

use super::*;

fn minimal() -> MapEnv {
    MapEnv::new([
        ("EXTERNAL_API_BASE_URL", "http://127.0.0.1:1/v2/"),
        ("EXTERNAL_API_KEY", "key-123456"),
        ("EXTERNAL_OAUTH_CLIENT_ID", "client"),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", "secret-abcdef"),
    ])
}

const TLS_URL: &str = "rediss://courier:hunter2-pw@127.0.0.1:6380/0";

/// A directory of PEM files made for one test: a CA, a client certificate issued by it and
/// its key, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("courier-redis-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for name in ["client", "other"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert =
                rcgen::CertificateParams::new(vec!["courier".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
        Files(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn with(pairs: &[(&str, &str)]) -> MapEnv {
    let mut env = minimal();
    for (name, value) in pairs {
        env.set(*name, *value);
    }
    env
}

/// The error lines of a configuration with `pairs`.
fn errors(pairs: &[(&str, String)]) -> Vec<String> {
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let text = Config::from_sources(&with(&pairs), None).expect_err("a bad setting").to_string();
    assert!(!text.contains("hunter2"), "{text}");
    text.lines().map(str::to_owned).collect()
}

#[test]
fn a_private_ca_and_a_client_certificate_are_read_at_start_and_never_shown() {
    let files = Files::new("good");
    let env = with(&[
        ("REDIS_URL", TLS_URL),
        ("REDIS_CA_FILE", &files.path("ca.pem")),
        ("REDIS_CLIENT_CERT_FILE", &files.path("client.crt")),
        ("REDIS_CLIENT_KEY_FILE", &files.path("client.key")),
    ]);
    let config = Config::from_sources(&env, None).unwrap();
    assert_eq!(config.redis_tls.ca.len(), 1);
    let client = config.redis_tls.client.as_ref().expect("a client certificate");
    assert!(client.key_pem.expose_secret().contains("PRIVATE KEY"));
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2") && !shown.contains("PRIVATE KEY"), "{shown}");
    assert!(shown.contains("client.crt") && shown.contains("[REDACTED]"), "{shown}");
    assert!(!shown.contains("BEGIN"), "{shown}");
}

#[test]
fn without_tls_files_a_rediss_url_uses_the_system_roots() {
    let config = Config::from_sources(&with(&[("REDIS_URL", TLS_URL)]), None).unwrap();
    assert!(config.redis_tls.is_empty());
}

#[test]
fn the_url_may_come_from_a_file_and_is_never_shown() {
    let files = Files::new("url-file");
    let path = files.path("url");
    std::fs::write(&path, format!("{TLS_URL}\n")).unwrap();
    let config = Config::from_sources(&with(&[("REDIS_URL_FILE", &path)]), None).unwrap();
    assert_eq!(config.redis_url.as_ref().unwrap().expose_secret(), TLS_URL);
    assert!(!format!("{config:?}").contains("hunter2"));
    std::fs::write(&path, "rediss://:hunter2@/0\n").unwrap();
    let lines = errors(&[("REDIS_URL_FILE", path.clone())]);
    assert_eq!(lines, ["REDIS_URL: has no host (expected: redis://[user:password@]host[:port][/db], rediss://… (TLS) or unix:///path)"]);
}

/// Settings, the variable of the one error line they give, and a part of its problem.
type Case = (Vec<(&'static str, String)>, &'static str, String);

#[test]
fn each_bad_tls_file_is_one_line_naming_its_variable() {
    let files = Files::new("bad");
    let url = ("REDIS_URL", TLS_URL.to_string());
    let cases: Vec<Case> = vec![
        (
            vec![url.clone(), ("REDIS_CA_FILE", files.path("empty.pem"))],
            "REDIS_CA_FILE",
            "holds no PEM certificate".into(),
        ),
        (vec![url.clone(), ("REDIS_CA_FILE", files.path("missing.pem"))], "REDIS_CA_FILE", "cannot read".into()),
        (
            vec![url.clone(), ("REDIS_CLIENT_CERT_FILE", files.path("client.crt"))],
            "REDIS_CLIENT_CERT_FILE",
            "is set without REDIS_CLIENT_KEY_FILE".into(),
        ),
        (
            vec![url.clone(), ("REDIS_CLIENT_KEY_FILE", files.path("client.key"))],
            "REDIS_CLIENT_KEY_FILE",
            "is set without REDIS_CLIENT_CERT_FILE".into(),
        ),
        (
            vec![
                url.clone(),
                ("REDIS_CLIENT_CERT_FILE", files.path("empty.pem")),
                ("REDIS_CLIENT_KEY_FILE", files.path("client.key")),
            ],
            "REDIS_CLIENT_CERT_FILE",
            "holds no PEM certificate".into(),
        ),
        (
            vec![
                url.clone(),
                ("REDIS_CLIENT_CERT_FILE", files.path("client.crt")),
                ("REDIS_CLIENT_KEY_FILE", files.path("client.crt")),
            ],
            "REDIS_CLIENT_KEY_FILE",
            "holds no PEM private key".into(),
        ),
        (
            vec![
                url.clone(),
                ("REDIS_CLIENT_CERT_FILE", files.path("client.crt")),
                ("REDIS_CLIENT_KEY_FILE", files.path("other.key")),
            ],
            "REDIS_CLIENT_KEY_FILE",
            format!("{} cannot be used with {}", files.path("other.key"), files.path("client.crt")),
        ),
        (
            vec![("REDIS_URL", "redis://127.0.0.1:6379/0".into()), ("REDIS_CA_FILE", files.path("ca.pem"))],
            "REDIS_CA_FILE",
            "is set but REDIS_URL is not a rediss:// URL".into(),
        ),
        (vec![("REDIS_CA_FILE", files.path("ca.pem"))], "REDIS_CA_FILE", "is set without REDIS_URL".into()),
        (
            vec![("REDIS_URL", format!("{TLS_URL}#insecure"))],
            "REDIS_URL",
            "has a #fragment (courier always verifies Redis's certificate; #insecure is not supported)".into(),
        ),
    ];
    for (pairs, var, problem) in cases {
        let lines = errors(&pairs);
        assert_eq!(lines.len(), 1, "{pairs:?}: {lines:?}");
        assert!(lines[0].starts_with(&format!("{var}: ")) && lines[0].contains(&problem), "{pairs:?}: {lines:?}");
        assert!(!lines[0].contains("BEGIN"), "{lines:?}");
    }
}

#[test]
fn a_cluster_is_named_by_one_node_url_on_database_0() {
    let config = Config::from_sources(&with(&[("REDIS_URL", TLS_URL), ("REDIS_CLUSTER", "true")]), None).unwrap();
    assert!(config.redis_cluster);
    assert!(!Config::from_sources(&with(&[("REDIS_URL", TLS_URL)]), None).unwrap().redis_cluster);
    let cases = [
        (vec![("REDIS_CLUSTER", "true".to_string())], "is true without REDIS_URL"),
        (vec![("REDIS_URL", "unix:///run/redis.sock".into()), ("REDIS_CLUSTER", "true".into())], "no unix sockets"),
        (vec![("REDIS_URL", "redis://127.0.0.1:7000/3".into()), ("REDIS_CLUSTER", "true".into())], "database 0 only"),
        (vec![("REDIS_URL", TLS_URL.into()), ("REDIS_CLUSTER", "yes".into())], "\"yes\" is not valid"),
    ];
    for (pairs, problem) in cases {
        let lines = errors(&pairs);
        assert_eq!(lines.len(), 1, "{pairs:?}: {lines:?}");
        assert!(lines[0].starts_with("REDIS_CLUSTER: ") && lines[0].contains(problem), "{pairs:?}: {lines:?}");
    }
}
