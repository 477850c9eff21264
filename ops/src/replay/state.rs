//! A replay's progress on disk: which run it belongs to, the last key all
//! of whose predecessors are done, and the keys that failed on the way, so
//! that a run resumed after a kill still reports them. Written after every
//! object, by rename, so a killed run leaves either the old or the new
//! state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What identifies a run: resuming with other arguments would skip objects
/// the new selection needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRun {
    pub bucket: String,
    pub prefix: String,
    pub table: String,
    pub from: String,
    pub to: String,
    pub event_type: Option<String>,
    pub user_id: Option<String>,
    pub dry_run: bool,
    /// The erasure index is written instead of the table.
    #[serde(default)]
    pub erasure_index: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    run: ReplayRun,
    resume_after: Option<String>,
    /// Keys that failed before `resume_after`, with their failure
    /// (`class/retry`), in key order.
    #[serde(default)]
    failed: Vec<FailedKey>,
}

/// An object that failed, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedKey {
    pub key: String,
    /// `class/retry`, as the summary counts it.
    pub failure: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a replay state file: {source}")]
    Unreadable {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "{path} holds the progress of another replay ({theirs}); finish that one with its \
         arguments, or delete the file to start this one from the beginning"
    )]
    OtherRun { path: String, theirs: String },
}

pub struct StateFile {
    path: PathBuf,
    saved: Saved,
}

impl StateFile {
    /// The state at `path` for `run`: empty if there is none, the earlier
    /// progress if it was this run's.
    pub fn open(path: &Path, run: ReplayRun) -> Result<Self, StateError> {
        let shown = path.display().to_string();
        let saved = match std::fs::read(path) {
            Ok(bytes) => {
                let saved: Saved =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Unreadable {
                        path: shown.clone(),
                        source,
                    })?;
                if saved.run != run {
                    return Err(StateError::OtherRun {
                        path: shown,
                        theirs: serde_json::to_string(&saved.run).unwrap_or_default(),
                    });
                }
                saved
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved {
                run,
                resume_after: None,
                failed: Vec::new(),
            },
            Err(source) => {
                return Err(StateError::Io {
                    path: shown,
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            saved,
        })
    }

    pub fn resume_after(&self) -> Option<&str> {
        self.saved.resume_after.as_deref()
    }

    /// The keys earlier runs of this replay failed, not yet reported by a
    /// run that finished.
    pub fn earlier_failures(&self) -> &[FailedKey] {
        &self.saved.failed
    }

    /// Every object up to and including `key` is done; `key` itself failed
    /// with `failure` (`class/retry`) when given.
    pub fn completed_through(
        &mut self,
        key: &str,
        failure: Option<&str>,
    ) -> Result<(), StateError> {
        self.saved.resume_after = Some(key.to_owned());
        if let Some(failure) = failure {
            self.saved.failed.push(FailedKey {
                key: key.to_owned(),
                failure: failure.to_owned(),
            });
        }
        let io = |source| StateError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut next = self.path.clone().into_os_string();
        next.push(".next");
        let bytes = serde_json::to_vec(&self.saved)
            .map_err(std::io::Error::other)
            .map_err(io)?;
        std::fs::write(&next, bytes).map_err(io)?;
        std::fs::rename(&next, &self.path).map_err(io)
    }

    /// The run is complete and has reported every failure, its earlier
    /// runs' included: nothing to resume.
    pub fn finish(&mut self) -> Result<(), StateError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
                path: self.path.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(table: &str) -> ReplayRun {
        ReplayRun {
            bucket: "b".into(),
            prefix: "terra/".into(),
            table: table.into(),
            from: "2026-07-01".into(),
            to: "2026-07-31".into(),
            event_type: None,
            user_id: None,
            dry_run: false,
            erasure_index: false,
        }
    }

    #[test]
    fn progress_survives_a_restart_of_the_same_run_only() {
        let dir = std::env::temp_dir().join(format!("replay-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);

        let mut state = StateFile::open(&path, run("t")).expect("fresh");
        assert_eq!(state.resume_after(), None);
        state
            .completed_through("terra/dt=2026-07-01/a.json", Some("invalid/permanent"))
            .expect("saved");
        state
            .completed_through("terra/dt=2026-07-01/b.json", None)
            .expect("saved");

        let reopened = StateFile::open(&path, run("t")).expect("same run");
        assert_eq!(reopened.resume_after(), Some("terra/dt=2026-07-01/b.json"));
        assert_eq!(
            reopened.earlier_failures(),
            [FailedKey {
                key: "terra/dt=2026-07-01/a.json".into(),
                failure: "invalid/permanent".into()
            }]
        );
        let other = StateFile::open(&path, run("other"));
        assert!(
            matches!(other, Err(StateError::OtherRun { .. })),
            "{:?}",
            other.err()
        );

        let mut done = reopened;
        done.finish().expect("removed");
        assert!(!path.exists());
        assert_eq!(
            StateFile::open(&path, run("other"))
                .expect("fresh")
                .resume_after(),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
