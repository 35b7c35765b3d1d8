//! MX resolution (placeholder until the resolver lands).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// One MX host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

/// Why there is nowhere to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxError {
    NullMx,
    NoSuchDomain,
    NoAddresses,
    Temporary(String),
}

/// MX lookups.
pub trait MxLookup: Send + Sync + 'static {
    fn lookup(
        &self,
        domain: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Target>, MxError>> + Send>>;
}

/// No MX lookups (the resolver could not be set up): every lookup fails for now, with the
/// reason, so the mail waits in the queue instead of bouncing.
#[derive(Clone, Debug)]
pub struct Unavailable(pub String);

impl MxLookup for Unavailable {
    fn lookup(
        &self,
        domain: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Target>, MxError>> + Send>> {
        let why = format!("no MX lookups for {domain}: {}", self.0);
        Box::pin(async move { Err(MxError::Temporary(why)) })
    }
}
