//! Integration tests: one binary, real redis-server, the real binary, real nginx.

mod support;

mod abuse;
mod accounts;
mod browser;
mod config;
mod container;
mod deploy;
mod events;
mod failover;
mod limits;
mod logs;
mod metrics;
mod nginx;
mod openapi;
mod outage;
mod props;
mod resume;
mod shutdown;
mod slow_clients;
mod smoke;
mod stream_path;
mod tls;
