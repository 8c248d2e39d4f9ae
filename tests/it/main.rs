//! Integration tests: one binary, real redis-server, real binary, real nginx.

mod deploy;
