//! The label values of the listeners' TLS metrics.

/// The `result` label values of `courier_tls_handshakes_total`.
pub const TLS_HANDSHAKE_RESULTS: [&str; 6] =
    ["ok", "no_client_certificate", "bad_client_certificate", "incompatible", "timeout", "failed"];

/// The `certificate` label of `courier_tls_certificate_expiry_timestamp_seconds`: which
/// listener's material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsCertificate {
    /// The gateway listener's certificate chain.
    Gateway,
    /// The CAs the gateway verifies client certificates against.
    GatewayClientCa,
    /// The admin listener's certificate chain.
    Admin,
}

impl TlsCertificate {
    /// Every value, for the series created at start.
    pub const ALL: [TlsCertificate; 3] =
        [TlsCertificate::Gateway, TlsCertificate::GatewayClientCa, TlsCertificate::Admin];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsCertificate::Gateway => "gateway",
            TlsCertificate::GatewayClientCa => "gateway_client_ca",
            TlsCertificate::Admin => "admin",
        }
    }

    /// The variable naming its file.
    pub fn var(self) -> &'static str {
        match self {
            TlsCertificate::Gateway => "COURIER_TLS_CERT_FILE",
            TlsCertificate::GatewayClientCa => "COURIER_TLS_CLIENT_CA_FILE",
            TlsCertificate::Admin => "COURIER_ADMIN_TLS_CERT_FILE",
        }
    }
}
