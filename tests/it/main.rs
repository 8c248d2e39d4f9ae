//! Integration tests: one binary, real redis-server, the real binary, real nginx.

mod support;

mod abuse;
mod deploy;
mod limits;
mod openapi;
mod props;
mod smoke;
