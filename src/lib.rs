//! courier: a resilient, actor-based gateway between many internal services and one
//! rate-limited upstream HTTP API. See README.md, and docs/design.md for how it works inside.

pub mod actors;
pub mod allocator;
pub mod cache;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod http;
pub mod jobs;
pub mod json;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod published;
pub mod reload;
pub mod request_id;
pub mod security;
pub mod shared;
pub mod simulator;
pub mod systemd;
pub mod trace;
pub mod upstream;

pub use gateway::{Gateway, Running, StartError};
pub use http::configure;
