//! Integration tests: one binary, real redis-server, the real binary, real nginx.

mod support;

mod abuse;
mod accounts;
mod auth;
mod browser;
mod config;
mod container;
mod deploy;
mod events;
mod failover;
mod ha;
mod kubernetes;
mod limits;
mod logs;
mod mercure;
mod metrics;
mod monitoring;
mod nginx;
mod node_client;
mod openapi;
mod outage;
mod props;
mod resume;
mod shutdown;
mod slow_clients;
mod smoke;
mod stream_path;
mod tls;
mod web;
