//! The wall clock as the records store it. std only (`rootstock-monitor` includes it).

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_nanos() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}
