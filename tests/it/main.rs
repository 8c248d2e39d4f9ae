//! Integration tests: one binary, real redis-server, the real binary, real nginx.

mod support;

mod accounts;
mod browser;
mod config;
mod container;
mod deploy;
mod events;
mod logs;
mod metrics;
mod nginx;
mod outage;
mod shutdown;
mod smoke;
mod tls;
