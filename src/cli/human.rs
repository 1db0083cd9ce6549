//! Sizes, rates and durations for people (`1.2 GiB`, `25.3 MiB/s`, `3m 12s`), as the operator
//! commands print them; `--json` output keeps the API's exact numbers.

const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// `bytes` in binary units, with one decimal past bytes: `512 B`, `1.5 KiB`, `1.2 GiB`.
pub fn size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let (mut value, mut unit) = (bytes as f64, 0);
    // 1023.96 KiB would print as "1024.0 KiB": such a value goes on to the next unit.
    while value >= 1023.95 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A rate of `bytes_per_s`: `25.3 MiB/s`.
pub fn rate(bytes_per_s: u64) -> String {
    format!("{}/s", size(bytes_per_s))
}

/// A duration of `secs` seconds in its two largest units: `45s`, `3m 12s`, `1h 05m`, `2d 03h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h:02}h"),
    }
}

/// How long the `remaining` bytes take at `bytes_per_s`, rounded up to a second; `None` at no
/// rate (nothing to go on).
pub fn eta(remaining: u64, bytes_per_s: u64) -> Option<String> {
    (bytes_per_s > 0).then(|| duration(remaining.div_ceil(bytes_per_s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn sizes_are_in_binary_units_with_one_decimal() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(KIB), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(GIB + GIB / 5), "1.2 GiB");
        assert_eq!(size(6 * GIB), "6.0 GiB");
        assert_eq!(size(400 * MIB), "400.0 MiB");
        assert_eq!(size(MIB - 1), "1.0 MiB", "not 1024.0 KiB");
        assert_eq!(size(3 * (1 << 40)), "3.0 TiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn rates_are_sizes_per_second() {
        assert_eq!(rate(0), "0 B/s");
        assert_eq!(rate(25 * MIB + 3 * MIB / 10), "25.3 MiB/s");
    }

    #[test]
    fn durations_show_their_two_largest_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(60), "1m 00s");
        assert_eq!(duration(192), "3m 12s");
        assert_eq!(duration(3600 + 5 * 60 + 59), "1h 05m");
        assert_eq!(duration(2 * 86_400 + 3 * 3600 + 7), "2d 03h");
    }

    #[test]
    fn the_time_left_is_rounded_up_and_needs_a_rate() {
        assert_eq!(eta(4800 * MIB, 25 * MIB).as_deref(), Some("3m 12s"));
        assert_eq!(eta(1, 25 * MIB).as_deref(), Some("1s"), "a byte left is not no time left");
        assert_eq!(eta(0, 25 * MIB).as_deref(), Some("0s"));
        assert_eq!(eta(GIB, 0), None);
    }
}
