//! Integration tests: one binary, real redis-server, the real binary, real nginx.

mod support;

mod container;
mod deploy;
mod logs;
mod metrics;
mod nginx;
mod shutdown;
mod smoke;
