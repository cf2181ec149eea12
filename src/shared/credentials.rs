//! The ACL user and password of `REDIS_URL`, the one part of it that may change while courier
//! runs (`REDIS_URL_FILE`, read again by a reload: see [`crate::reload`]).
//!
//! Why only these: every connection courier holds, the Sentinel follower and the Cluster's
//! slot map were made for one address, database and TLS setting; changing those under them
//! is a migration, not a rotation, and needs a restart. A user and a password are only sent
//! when a connection is opened, so a new pair can take effect connection by connection.
//!
//! The pair lives in a [`CredentialCell`] shared by every clone of the
//! [`RedisEndpoint`](super::RedisEndpoint): each connection courier opens reads it then, and
//! the long-lived connections ([`super::rotating`]) notice a new version at their next call
//! and are replaced by ones opened with the new pair.

use std::fmt;
use std::sync::Arc;

use redis::{ConnectionInfo, IntoConnectionInfo};
use secrecy::{ExposeSecret, SecretString};

use crate::published::Published;

/// The user and password connections authenticate with. `Debug` shows neither the password
/// nor (in case it was pasted there) the user.
#[derive(Clone, Default)]
pub struct RedisCredentials {
    username: Option<String>,
    password: Option<SecretString>,
}

impl fmt::Debug for RedisCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCredentials")
            .field("username", &self.username.as_ref().map(|_| "[REDACTED]"))
            .field("password", &self.password.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// The credentials every new connection uses, replaced whole by a reload.
pub type CredentialCell = Arc<Published<RedisCredentials>>;

impl RedisCredentials {
    /// The user and password of a parsed URL.
    pub fn of(info: &ConnectionInfo) -> RedisCredentials {
        RedisCredentials {
            username: info.redis.username.clone(),
            password: info.redis.password.clone().map(SecretString::from),
        }
    }

    /// `info` with these credentials instead of its own.
    pub fn apply(&self, mut info: ConnectionInfo) -> ConnectionInfo {
        info.redis.username.clone_from(&self.username);
        info.redis.password = self.password.as_ref().map(|p| p.expose_secret().to_owned());
        info
    }

    /// A client like `client` (address, database, TLS), authenticating with these credentials.
    pub fn client_like(&self, client: &redis::Client) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.apply(client.get_connection_info().clone()))
    }

    /// The user, when there is one (for the Cluster builder).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, when there is one (for the Cluster builder).
    pub fn password(&self) -> Option<&str> {
        self.password.as_ref().map(|p| p.expose_secret())
    }

    fn same_as(&self, other: &RedisCredentials) -> bool {
        self.username == other.username && self.password() == other.password()
    }
}

/// Why a new URL cannot replace the one in use without a restart (no part of either URL).
pub const MOVED: &str = "changes the scheme, host, port, database or TLS of Redis, not only the user or \
                         password: moving Redis needs a restart (the URL in use is kept)";

/// What a new `REDIS_URL` changes: `Ok(None)` nothing, `Ok(Some(_))` the credentials only (the
/// new ones), `Err` anything else, or a URL that cannot be parsed. Neither URL is quoted.
pub fn rotation(current: &SecretString, next: &SecretString) -> Result<Option<RedisCredentials>, &'static str> {
    let parse = |url: &SecretString| url.expose_secret().into_connection_info();
    let current = parse(current).map_err(|_| "the Redis URL in use cannot be parsed")?;
    let next = parse(next).map_err(|_| "is not a valid Redis URL")?;
    let same_place =
        current.addr == next.addr && current.redis.db == next.redis.db && current.redis.protocol == next.redis.protocol;
    if !same_place {
        return Err(MOVED);
    }
    let (old, new) = (RedisCredentials::of(&current), RedisCredentials::of(&next));
    Ok((!new.same_as(&old)).then_some(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn a_new_password_or_user_is_a_rotation() {
        let current = url("rediss://courier:old-pw@cache.internal:6380/2");
        let next = rotation(&current, &url("rediss://courier:new-pw@cache.internal:6380/2")).unwrap().unwrap();
        assert_eq!((next.username(), next.password()), (Some("courier"), Some("new-pw")));
        let next = rotation(&current, &url("rediss://other:new-pw@cache.internal:6380/2")).unwrap().unwrap();
        assert_eq!(next.username(), Some("other"));
        assert!(rotation(&current, &current).unwrap().is_none(), "the same URL changes nothing");
    }

    #[test]
    fn anything_but_the_credentials_is_refused_without_quoting_a_url() {
        let current = url("rediss://courier:old-pw@cache.internal:6380/2");
        for moved in [
            "rediss://courier:new-pw@other.internal:6380/2",
            "rediss://courier:new-pw@cache.internal:6381/2",
            "rediss://courier:new-pw@cache.internal:6380/3",
            "redis://courier:new-pw@cache.internal:6380/2",
        ] {
            assert_eq!(rotation(&current, &url(moved)).unwrap_err(), MOVED, "{moved}");
        }
        let err = rotation(&current, &url("http://courier:new-pw@x/")).unwrap_err();
        assert!(!err.contains("new-pw"), "{err}");
    }

    #[test]
    fn applied_credentials_replace_the_urls_and_debug_hides_them() {
        let info = "redis://courier:old-pw@127.0.0.1:6379/1".into_connection_info().unwrap();
        let next = RedisCredentials::of(&"redis://ops:new-pw@127.0.0.1:6379/1".into_connection_info().unwrap());
        let applied = next.apply(info);
        assert_eq!(
            (applied.redis.username.as_deref(), applied.redis.password.as_deref()),
            (Some("ops"), Some("new-pw"))
        );
        assert_eq!(applied.redis.db, 1);
        let shown = format!("{next:?}");
        assert!(!shown.contains("new-pw") && !shown.contains("ops"), "{shown}");
    }
}
