//! One-time sequences, in knockd's `one_time_sequences` file format: one
//! sequence a line, the first unused line is the live one, and a used line
//! is marked by a `#` at its start (so are comments).
//!
//! A line holds steps separated by commas or spaces, in knockd's form
//! (`7000`, `7000:udp`, `7000:tcp`; TCP when unsaid) or xknock's (`udp:7000`,
//! `icmp:512`).

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use super::values::PortSpec;

/// The live sequence of a one-time sequences file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneTime {
    pub path: PathBuf,
    /// 1-based number of the line the live sequence is on.
    pub line: usize,
}

/// Parses one line's steps.
pub fn parse_line(line: &str) -> Result<Vec<PortSpec>, String> {
    line.split([',', ' ', '\t'])
        .filter(|token| !token.is_empty())
        .map(parse_step)
        .collect()
}

fn parse_step(token: &str) -> Result<PortSpec, String> {
    if let Some((port, proto)) = token.split_once(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        // knockd's PORT:PROTO.
        return format!("{proto}:{port}").parse();
    }
    if token.chars().all(|c| c.is_ascii_digit()) {
        return format!("tcp:{token}").parse();
    }
    token.parse()
}

/// Every unused line of the file, with its 1-based number.
pub fn unused_lines(path: &Path) -> io::Result<Vec<(usize, String)>> {
    Ok(unused_lines_in(&fs::read_to_string(path)?))
}

/// Every unused line of a file's text, with its 1-based number.
pub fn unused_lines_in(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim().to_owned()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// Marks line `line` (1-based) used, with a `#` at its start, replacing the
/// file in one rename so a crash leaves the old file or the new one.
pub fn mark_used(path: &Path, line: usize) -> io::Result<()> {
    let text = fs::read_to_string(path)?;
    let mut out = String::with_capacity(text.len() + 1);
    for (i, content) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line && !content.starts_with('#') {
            out.push('#');
        }
        out.push_str(content);
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{}.xknock-new", name.unwrap_or_default()));
    let mut file = fs::File::create(&temp)?;
    file.write_all(out.as_bytes())?;
    file.sync_all()?;
    if let Ok(meta) = fs::metadata(path) {
        fs::set_permissions(&temp, meta.permissions())?;
    }
    fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use knock_common::Knock;

    use super::*;

    #[test]
    fn lines_take_knockd_and_xknock_steps() {
        assert_eq!(
            parse_line("7000,7001:udp, 7002:tcp").expect("knockd form"),
            [
                PortSpec(Knock::tcp(7000)),
                PortSpec(Knock::udp(7001)),
                PortSpec(Knock::tcp(7002))
            ]
        );
        assert_eq!(
            parse_line("udp:7000 icmp:512 tcp:7002").expect("xknock form"),
            [
                PortSpec(Knock::udp(7000)),
                PortSpec(Knock::icmp(512)),
                PortSpec(Knock::tcp(7002))
            ]
        );
        assert!(parse_line("7000:sctp").is_err());
    }

    #[test]
    fn used_lines_are_marked_in_place_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ssh.otp");
        fs::write(&path, "# used before\n7000,7001,7002\n\n8000,8001,8002\n").expect("write");
        assert_eq!(
            unused_lines(&path).expect("read"),
            [
                (2, "7000,7001,7002".to_owned()),
                (4, "8000,8001,8002".to_owned())
            ]
        );
        mark_used(&path, 2).expect("mark");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "# used before\n#7000,7001,7002\n\n8000,8001,8002\n"
        );
        assert_eq!(unused_lines(&path).expect("read")[0].0, 4);
        mark_used(&path, 2).expect("marking twice changes nothing");
        assert!(fs::read_to_string(&path).expect("read").contains("\n#7000"));
    }
}
