//! Tables and JSON written to stdout (data); human messages go to stderr through `note`.
use std::io::Write;

use anyhow::Result;
use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

/// Writes `value` as pretty JSON and a newline.
pub fn write_json<W: Write + ?Sized, T: Serialize + ?Sized>(out: &mut W, value: &T) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints a command's result in the format asked for: the value as JSON, or the human form
/// `render` writes. Every command that prints data goes through here.
pub fn print<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    format: crate::cli::Format,
    value: &T,
    render: impl FnOnce(&T, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    match format {
        crate::cli::Format::Json => write_json(out, value),
        crate::cli::Format::Table => render(value, out),
    }
}

/// A plain table: a header row and rows of cells, no borders (easy to read and to grep).
pub fn table<I, R, S>(headers: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(headers.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    let text = t.to_string();
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// One line on stderr. A stderr that is gone (a closed pipe, a dropped terminal) loses the
/// line and nothing else: the run goes on to its end (`eprintln!` would panic mid-backup).
pub fn stderr_line(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A message for the person at the terminal, on stderr.
pub fn note(msg: impl AsRef<str>) {
    stderr_line(msg.as_ref());
}

/// A warning for the person at the terminal, on stderr.
pub fn warn(msg: impl AsRef<str>) {
    stderr_line(format_args!("warning: {}", msg.as_ref()));
}

/// Bytes for people: 1.5 GiB.
/// How long ago `utc` (RFC 3339) was: seconds, and `40 s`, `12 min`, `5 h`, `3 d ago`.
pub fn age(utc: &str) -> Option<(u64, String)> {
    let t = chrono::DateTime::parse_from_rfc3339(utc).ok()?;
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0) as u64;
    let text = match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    };
    Some((secs, text))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_space() {
        let t = table(
            &["NAME", "KIND"],
            vec![vec!["db", "persistent"], vec!["migrate", "one-shot"]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(" NAME") || lines[0].starts_with("NAME"));
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        assert_eq!(lines[1].find("persistent"), lines[2].find("one-shot"));
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
