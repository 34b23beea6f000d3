//! The Vault/OpenBao token, read from a file an agent keeps current.
//!
//! A Vault or OpenBao agent (or any sidecar) renews or replaces the token
//! by rewriting its sink file, so the file is looked at again on every
//! call: a cheap `stat`, and a re-read only when its identity changed
//! (inode and device: an atomic rename; size, mtime and ctime: a rewrite in
//! place). The token never appears in an error or in `Debug` output.

use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use zeroize::Zeroizing;

use crate::KmsError;

/// Tokens are a few hundred bytes at most (batch tokens are the longest);
/// a larger file is not a token file.
const MAX_TOKEN_FILE_LEN: usize = 16 * 1024;

/// What tells one version of the file from another without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

struct Cached {
    stamp: Stamp,
    token: Zeroizing<String>,
}

pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).field("token", &"<redacted>").finish()
    }
}

impl TokenFile {
    /// Nothing is read yet: the file may appear later (an agent that has
    /// not logged in yet), and each call reports its state then.
    pub fn new(path: PathBuf) -> TokenFile {
        TokenFile { path, cached: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Option<Cached>> {
        // A panic while holding the lock leaves either the old or the new
        // cache entry, both consistent: carry on.
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token to send now: the cached one while the file is unchanged,
    /// else the file's new content.
    pub fn current(&self) -> Result<Zeroizing<String>, KmsError> {
        let meta = fs::metadata(&self.path).map_err(|e| self.error(&format!("cannot read it: {e}")))?;
        let stamp = Stamp::of(&meta);
        let mut cached = self.lock();
        if let Some(c) = cached.as_ref().filter(|c| c.stamp == stamp) {
            return Ok(c.token.clone());
        }
        let fresh = self.read()?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Reads the file whatever its stamp (after a 403: the agent may have
    /// rewritten it within the stamp's granularity). Returns the new token
    /// if it differs from the one held before, else None.
    pub fn reload(&self) -> Result<Option<Zeroizing<String>>, KmsError> {
        let fresh = self.read()?;
        let mut cached = self.lock();
        let changed = cached.as_ref().is_none_or(|c| c.token != fresh.token);
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(changed.then_some(token))
    }

    fn read(&self) -> Result<Cached, KmsError> {
        let cannot = |e: std::io::Error| self.error(&format!("cannot read it: {e}"));
        let mut f = File::open(&self.path).map_err(cannot)?;
        // The stamp of the very file read (fstat), so a rename between a
        // stat and the open cannot pair old content with a new stamp.
        let meta = f.metadata().map_err(cannot)?;
        if !meta.is_file() {
            return Err(self.error("it is not a regular file"));
        }
        // Room for the whole cap up front: growing the buffer mid-read
        // would free an unwiped partial copy.
        let mut raw = Zeroizing::new(Vec::with_capacity(MAX_TOKEN_FILE_LEN + 1));
        f.by_ref().take(MAX_TOKEN_FILE_LEN as u64 + 1).read_to_end(&mut raw).map_err(cannot)?;
        if raw.len() > MAX_TOKEN_FILE_LEN {
            return Err(self.error(&format!("it is larger than {MAX_TOKEN_FILE_LEN} bytes")));
        }
        let text = raw.trim_ascii();
        if text.is_empty() {
            return Err(self.error("it is empty"));
        }
        // The token goes into an HTTP header: only visible ASCII may. The
        // message says which rule failed, never what the bytes were.
        if !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err(self.error("it holds characters a token cannot have (one token, visible ASCII)"));
        }
        let mut token = Zeroizing::new(String::with_capacity(text.len()));
        token.push_str(std::str::from_utf8(text).expect("visible ASCII is UTF-8"));
        Ok(Cached { stamp: Stamp::of(&meta), token })
    }

    /// Makes the cached token look current for the file as it is now, as
    /// if the file had been rewritten within one tick of its timestamps.
    #[cfg(test)]
    pub fn pretend_unchanged(&self) {
        let stamp = Stamp::of(&fs::metadata(&self.path).unwrap());
        self.lock().as_mut().expect("a token was read").stamp = stamp;
    }

    fn error(&self, why: &str) -> KmsError {
        KmsError::Config(format!("transit token file \"{}\": {why}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, content: &str) {
        fs::write(path, content).unwrap();
    }

    #[test]
    fn the_token_is_trimmed_and_cached_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write(&p, "  s.first\n");
        let t = TokenFile::new(p.clone());
        assert_eq!(t.current().unwrap().as_str(), "s.first");
        assert_eq!(t.current().unwrap().as_str(), "s.first");
    }

    #[test]
    fn a_rewrite_in_place_or_a_rename_is_picked_up_on_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write(&p, "s.first");
        let t = TokenFile::new(p.clone());
        assert_eq!(t.current().unwrap().as_str(), "s.first");

        // In place, same length: size and inode stay, mtime/ctime move. The
        // kernel stamps times at timer-tick granularity, so a rewrite within
        // the same tick would go unseen (the 403 path's reload covers that).
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mut f = fs::OpenOptions::new().write(true).truncate(true).open(&p).unwrap();
        f.write_all(b"s.secnd").unwrap();
        drop(f);
        assert_eq!(t.current().unwrap().as_str(), "s.secnd");

        // As an agent does: a new file renamed over the old one.
        let tmp = dir.path().join("token.tmp");
        write(&tmp, "s.third-token\n");
        fs::rename(&tmp, &p).unwrap();
        assert_eq!(t.current().unwrap().as_str(), "s.third-token");
    }

    #[test]
    fn reload_reads_even_an_unchanged_stamp_and_says_whether_the_token_changed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write(&p, "s.same");
        let t = TokenFile::new(p.clone());
        assert_eq!(t.reload().unwrap().as_deref().map(String::as_str), Some("s.same"), "first read is a change");
        assert!(t.reload().unwrap().is_none());
        write(&p, "s.next");
        assert_eq!(t.reload().unwrap().as_deref().map(String::as_str), Some("s.next"));
    }

    #[test]
    fn missing_empty_or_odd_files_are_config_errors_naming_the_path_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        let t = TokenFile::new(p.clone());
        let msg = |r: Result<Zeroizing<String>, KmsError>| match r {
            Err(KmsError::Config(m)) => m,
            other => panic!("{:?}", other.map(|_| ())),
        };
        let m = msg(t.current());
        assert!(m.contains(&p.display().to_string()) && m.contains("No such file"), "{m}");
        write(&p, " \n\t");
        assert!(msg(t.current()).contains("is empty"));
        write(&p, "s.half one\n");
        let m = msg(t.current());
        assert!(m.contains("characters") && !m.contains("s.half"), "{m}");
        write(&p, &"x".repeat(MAX_TOKEN_FILE_LEN + 1));
        assert!(msg(t.current()).contains("larger"));
        assert!(msg(TokenFile::new(dir.path().to_path_buf()).current()).contains("not a regular file"));
    }

    #[test]
    fn debug_shows_the_path_and_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write(&p, "s.sensitive-token-value");
        let t = TokenFile::new(p);
        t.current().unwrap();
        let d = format!("{t:?}");
        assert!(d.contains("token") && d.contains("redacted") && !d.contains("sensitive"), "{d}");
    }
}
