//! Time as Microsoft Graph writes it: UTC with seven fractional digits and a `Z`
//! (`2016-11-20T18:23:45.9356913Z`, as in the published subscription samples), and the
//! identity platform's `2016-01-09 02:02:12Z` for error timestamps.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The current time.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Seconds since the Unix epoch.
pub fn unix(at: OffsetDateTime) -> i64 {
    at.unix_timestamp()
}

/// `2016-11-20T18:23:45.9356913Z`.
pub fn graph(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 100
    )
}

/// `2020-08-18T12:51:51`, the `innerError.date` of Graph error bodies.
pub fn graph_inner(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// `2016-01-09 02:02:12Z`, the identity platform's error `timestamp`.
pub fn identity(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Parses an ISO 8601 / RFC 3339 date-time as Graph accepts it in request bodies
/// (`2020-03-20T11:00:00.0000000Z`, offsets allowed). A value without an offset is UTC, as
/// Graph treats `DateTimeOffset` values without one.
pub fn parse(value: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value, &Rfc3339)
        .ok()
        .or_else(|| OffsetDateTime::parse(&format!("{value}Z"), &Rfc3339).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_published_samples() {
        let at = parse("2016-11-20T18:23:45.9356913Z").expect("parses");
        assert_eq!(graph(at), "2016-11-20T18:23:45.9356913Z");
        assert_eq!(graph_inner(at), "2016-11-20T18:23:45");
        assert_eq!(identity(at), "2016-11-20 18:23:45Z");
    }

    #[test]
    fn parses_offsets_and_missing_zone() {
        let with_offset = parse("2021-02-02T10:30:34.9097561-08:00").expect("parses");
        assert_eq!(graph(with_offset), "2021-02-02T18:30:34.9097561Z");
        let bare = parse("2020-03-20T11:00:00").expect("parses");
        assert_eq!(graph(bare), "2020-03-20T11:00:00.0000000Z");
        assert!(parse("next tuesday").is_none());
    }
}
