//! Integration tests: one binary, real redis-server, the real binary, real nginx.

mod support;

mod accounts;
mod config;
mod deploy;
mod events;
mod outage;
mod smoke;
mod tls;
