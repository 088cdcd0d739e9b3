//! Off-host copies on S3-compatible object storage: where (`url`), who we are to it
//! (`config`), the bucket itself (`store`), and the uploads and downloads of archives
//! (`transfer`).
pub mod config;
pub mod store;
pub mod transfer;
pub mod url;

pub use store::Store;
pub use url::RemoteUrl;

/// Opens the bucket of `url` with the credentials of this process's environment.
pub fn open(url: &RemoteUrl) -> anyhow::Result<Store> {
    Store::open(url, &config::from_environment())
}
