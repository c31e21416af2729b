//! TLS for the S3 remote: rustls with the `ring` provider instead of `aws-lc-rs`, whose C
//! build (aws-lc-sys) took about two minutes of every fresh build.

/// Make `ring` the process's rustls crypto provider. reqwest is built with
/// `rustls-no-provider`, so an HTTPS client needs one installed first; calling this again
/// (or after another provider was installed) does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
