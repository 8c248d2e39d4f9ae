//! Read-only looks into a [`TestRedis`] for assertions about what the server
//! stored: the history stream and the `account:*` keys (SPEC §4 layout).

use super::TestRedis;

/// The history stream of the default channel (`user-events:history`).
pub const HISTORY_KEY: &str = "user-events:history";

/// `XLEN user-events:history`.
pub fn history_len(redis: &TestRedis) -> u64 {
    ::redis::cmd("XLEN")
        .arg(HISTORY_KEY)
        .query(&mut redis.conn())
        .unwrap()
}

/// Every entry id of `user-events:history`, oldest first (`XRANGE - +`).
pub fn history_ids(redis: &TestRedis) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = ::redis::cmd("XRANGE")
        .arg(HISTORY_KEY)
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

/// Every `account:*` key (`KEYS`, fine on a private test server).
pub fn account_keys(redis: &TestRedis) -> Vec<String> {
    ::redis::cmd("KEYS")
        .arg("account:*")
        .query(&mut redis.conn())
        .unwrap()
}
