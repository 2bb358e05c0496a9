//! Size-rotated log files: `NAME.log` is written; when it would pass
//! `max_size` it becomes `NAME.log.1` (older ones shift up) and at most
//! `keep` files exist in all.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
}

impl RotatingFile {
    pub fn open(dir: &Path, name: &str, max_size: u64, keep: u32) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            size,
            max_size: max_size.max(1),
            keep: keep.max(1),
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        // keep = 1: only the current file, truncated.
        let oldest = self.keep - 1;
        if oldest == 0 {
            self.file = File::create(&self.path)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(self.rotated(oldest));
        for n in (1..oldest).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Writes one line (a newline is added).
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_keep_files_and_the_newest_lines() {
        let dir = std::env::temp_dir().join(format!("centinela-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = RotatingFile::open(&dir, "i0", 100, 3).unwrap();
        for i in 0..200 {
            f.write_line(format!("line {i:04} ........").as_bytes())
                .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["i0.log", "i0.log.1", "i0.log.2"]);
        for n in &names {
            assert!(std::fs::metadata(dir.join(n)).unwrap().len() <= 100);
        }
        let current = std::fs::read_to_string(dir.join("i0.log")).unwrap();
        assert!(
            current.trim_end().ends_with("line 0199 ........"),
            "{current}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
