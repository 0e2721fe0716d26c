//! m365-sim: a faithful fake Microsoft 365 tenant and a fake Devo.
//!
//! Layout:
//! - [`tenant`] — fake Entra ID token endpoints + Office 365 Management Activity API, with
//!   content generation, fault injection and ground truth ([`tenant::Simulator`]).
//! - [`certs`]  — per-run test PKI (CA, server and client certificates).
//! - [`devo`]   — fake Devo receiver.
//! - [`control`] — plain-HTTP runtime control of both (faults, token expiry, Devo stop/resume,
//!   truth) for other processes.

pub mod certs;
pub mod control;
pub mod devo;
pub mod tenant;

pub use tenant::{SimConfig, SimHandle, Simulator, TenantSpec};
