//! Timestamps as Switchyard writes them (audit lines, rollout events, backend health, the fleet's
//! registrations): RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T21:45:03.120Z`.

use std::time::SystemTime;

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_211_103_120);
        assert_eq!(rfc3339(t), "2026-11-20T21:45:03.120Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(now_rfc3339().len(), 24);
    }
}
