//! PEM files named by settings, read at start: what is wrong is said with the file's name,
//! never with its content.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Reads the CA certificates of a PEM file (`EXTERNAL_API_CA_FILE`) and checks that each can
/// serve as a trust anchor. The message names the file and what is wrong, never its content.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    let mut check = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
        check.add(cert.clone()).map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}
